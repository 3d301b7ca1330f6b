# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's projector: one MLP head per target encoder, mapping SiT tokens onto the encoder's feature space."""

import numbers

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .strict_loading import StrictLoadingMixin


class REPAProjector(StrictLoadingMixin, ModelMixin, ConfigMixin):
    r"""
    The official REPA projector (`build_mlp`): for each target encoder, Linear(D, P) -> SiLU -> Linear(P, P) -> SiLU
    -> Linear(P, z_dim), applied token-wise. It is a training-only module: it is saved beside the transformer
    (`projector/`), never inside it.

    Args:
        hidden_size (`int`, defaults to 1152): Width D of the SiT tokens (SiT-XL: 1152).
        projector_dim (`int`, defaults to 2048): Width P of the hidden layers.
        z_dims (`list[int]`, defaults to `[768]`): Feature width of each target encoder (DINOv2-B: 768).

    `from_pretrained` is strict, as for [`SiTTransformer2DModel`]: weights that do not fit the config raise.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import REPAProjector

    >>> projector = REPAProjector(hidden_size=384, projector_dim=64, z_dims=[768, 1024])
    >>> [z.shape for z in projector(torch.randn(2, 256, 384))]
    [torch.Size([2, 256, 768]), torch.Size([2, 256, 1024])]
    ```
    """

    @register_to_config
    def __init__(self, hidden_size: int = 1152, projector_dim: int = 2048, z_dims: list[int] = (768,)):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("projector_dim", projector_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if isinstance(z_dims, (str, bytes)) or not hasattr(z_dims, "__len__") or len(z_dims) == 0:
            raise ValueError(f"`z_dims` needs one feature width per target encoder, got {z_dims!r}.")
        if not all(isinstance(z, numbers.Integral) and not isinstance(z, bool) and z >= 1 for z in z_dims):
            raise ValueError(f"`z_dims` must hold integers >= 1 (one per target encoder), got {list(z_dims)!r}.")
        self.projectors = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(hidden_size, projector_dim),
                    nn.SiLU(),
                    nn.Linear(projector_dim, projector_dim),
                    nn.SiLU(),
                    nn.Linear(projector_dim, z_dim),
                )
                for z_dim in z_dims
            ]
        )
        # The official init: xavier-uniform weights, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, alignment_states: torch.Tensor) -> list[torch.Tensor]:
        """
        Project SiT tokens onto each target encoder's feature space.

        Args:
            alignment_states (`torch.Tensor` of shape `(batch_size, num_tokens, hidden_size)`):
                The transformer's `alignment_states`.

        Returns:
            `list[torch.Tensor]`: one `(batch_size, num_tokens, z_dim)` tensor per target encoder.
        """
        if alignment_states.ndim != 3 or alignment_states.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"`alignment_states` must have shape (batch, tokens, {self.config.hidden_size}), "
                f"got {tuple(alignment_states.shape)}."
            )
        batch, tokens, width = alignment_states.shape
        flat = alignment_states.reshape(-1, width)  # token-wise, as the official reshape(-1, D)
        return [projector(flat).reshape(batch, tokens, -1) for projector in self.projectors]
