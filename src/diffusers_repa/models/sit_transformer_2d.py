# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""SiT: the class-conditional flow-matching transformer that REPA trains (Ma et al. 2024, Yu et al. 2024).

Built from diffusers' own blocks (`PatchEmbed`, `Timesteps`, `TimestepEmbedding`, `LabelEmbedding`,
`AdaLayerNormZero`, `FeedForward`) and an attention on diffusers' attention dispatcher (`AttentionModuleMixin` +
`dispatch_attention_fn`, so `set_attention_backend` picks the kernel), configured so that the fp32 output equals
the official `sihyun-yu/REPA` `models/sit.py` number for number (see `tests/test_sit_transformer_2d.py`).
"""

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import LabelEmbedding, PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormZero
from diffusers.utils import BaseOutput, apply_lora_scale
from torch import nn

from .strict_loading import StrictLoadingMixin

# name -> (num_layers, hidden size, num_attention_heads, patch_size); the official `SiT_models` table.
SIT_PRESETS: dict[str, tuple[int, int, int, int]] = {
    f"SiT-{size}/{patch}": (layers, width, heads, patch)
    for size, (layers, width, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items()
    for patch in (2, 4, 8)
}


@dataclass
class SiTTransformer2DModelOutput(BaseOutput):
    """
    Output of [`SiTTransformer2DModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, height, width)`):
            The predicted velocity `d x_t / d t` of the flow (for the linear path, `noise - x_0`).
        alignment_states (`torch.Tensor` of shape `(batch_size, num_tokens, hidden_size)`, *optional*):
            The hidden states after block `alignment_depth`, which REPA's projector aligns with the encoder features.
            Only returned when `output_alignment_states=True`.
    """

    sample: torch.Tensor
    alignment_states: torch.Tensor | None = None


class SiTAttnProcessor:
    r"""
    Self-attention of [`SiTAttention`] through diffusers' attention dispatcher.

    The projections give `(batch, tokens, heads, head_dim)` queries, keys and values, which go to
    `dispatch_attention_fn`: the backend is the one chosen with `model.set_attention_backend(name)` ("native" is
    `torch.nn.functional.scaled_dot_product_attention`; "flash", "_native_cudnn", "sage", ... where installed), or
    diffusers' active backend when none was set. With the default backend the output equals the official timm
    attention (fused `qkv`, scale `head_dim ** -0.5`, no mask) in fp32.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: "SiTAttention", hidden_states: torch.Tensor) -> torch.Tensor:
        if attn.fused_projections:  # after `fuse_qkv_projections()`: one matmul instead of three
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        hidden_states = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](hidden_states))


class SiTAttention(nn.Module, AttentionModuleMixin):
    r"""
    Multi-head self-attention of a SiT block (timm's `Attention(qkv_bias=True)`), on diffusers' attention dispatcher.

    The parameters keep the names of diffusers' `Attention` (`to_q`, `to_k`, `to_v`, `to_out.0`, and `norm_q`,
    `norm_k` with qk-norm), so checkpoints and LoRA targets are unchanged; the computation is in
    [`SiTAttnProcessor`]. `fuse_qkv_projections()` on the model merges the three projections into one `to_qkv`
    (faster inference, same function).

    Args:
        dim (`int`): Width of the tokens.
        heads (`int`): Number of heads.
        dim_head (`int`): Width of one head (`heads * dim_head` is the inner width).
        qk_norm (`bool`, defaults to `False`): LayerNorm (eps 1e-5, affine) on each head's queries and keys.
        processor (`SiTAttnProcessor`, *optional*): The processor; a new [`SiTAttnProcessor`] by default.
    """

    _default_processor_cls = SiTAttnProcessor
    _available_processors = [SiTAttnProcessor]

    def __init__(
        self, dim: int, heads: int, dim_head: int, qk_norm: bool = False, processor: SiTAttnProcessor | None = None
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.head_dim = dim_head
        self.inner_dim = inner_dim
        self.use_bias = True  # read by `fuse_projections`
        self.is_cross_attention = False
        self.to_q = nn.Linear(dim, inner_dim, bias=True)
        self.to_k = nn.Linear(dim, inner_dim, bias=True)
        self.to_v = nn.Linear(dim, inner_dim, bias=True)
        self.norm_q = nn.LayerNorm(dim_head, eps=1e-5) if qk_norm else None
        self.norm_k = nn.LayerNorm(dim_head, eps=1e-5) if qk_norm else None
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim, bias=True), nn.Dropout(0.0)])
        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, tokens, dim)` -> `(batch, tokens, dim)`."""
        return self.processor(self, hidden_states)


class SiTBlock(nn.Module):
    """One adaLN-Zero transformer block: modulated self-attention then a modulated MLP, both gated."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim, num_embeddings=None)
        self.attn = SiTAttention(dim, num_attention_heads, attention_head_dim, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=conditioning)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * self.attn(norm_hidden_states)
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return hidden_states + gate_mlp.unsqueeze(1) * self.ff(norm_hidden_states)


class SiTTransformer2DModel(StrictLoadingMixin, ModelMixin, ConfigMixin, AttentionMixin, PeftAdapterMixin):
    r"""
    The SiT transformer: predicts the velocity of a class-conditional flow, with the hidden states of an early block
    exposed for REPA's representation alignment.

    Time follows REPA: `t` in [0, 1], `t = 0` is data and `t = 1` is pure noise; it is embedded as is (not scaled
    by 1000). The unconditional ("null") class is `num_classes`; labels are replaced by it with probability
    `class_dropout_prob` in train mode only, so sample in eval mode (`model.eval()`; [`REPAPipeline`] does it).

    `from_pretrained` is strict: weights the config has no place for, or config entries the weights do not fill
    (e.g. a `num_layers` that disagrees with the saved blocks), raise a `ValueError` instead of a warning.

    Args:
        sample_size (`int`, defaults to 32): Height and width of the (latent) input; 32 for 256 px images.
        patch_size (`int`, defaults to 2): Side of the square patches.
        in_channels (`int`, defaults to 4): Channels of the input (4 for SD-VAE latents, 3 for pixels).
        out_channels (`int`, *optional*): Channels of the predicted velocity; defaults to `in_channels`.
        num_layers (`int`, defaults to 28): Number of transformer blocks.
        num_attention_heads (`int`, defaults to 16): Attention heads per block.
        attention_head_dim (`int`, defaults to 72): Width of one head; the hidden size is heads x head dim.
        mlp_ratio (`float`, defaults to 4.0): MLP width relative to the hidden size.
        num_classes (`int`, defaults to 1000): Number of real classes; `num_classes` itself is the null class.
        class_dropout_prob (`float`, defaults to 0.1): Label dropout in train mode (0 removes the null class).
        qk_norm (`bool`, defaults to `False`): LayerNorm on queries and keys (off in the official models).
        alignment_depth (`int`, defaults to 8): 1-based block after which hidden states are returned as
            `alignment_states` (the official `encoder_depth`).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import SiTTransformer2DModel

    >>> model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, alignment_depth=4).eval()
    >>> latents = torch.randn(2, 4, 16, 16)
    >>> out = model(latents, timestep=torch.tensor([1.0, 0.5]), class_labels=torch.tensor([207, 1000]),
    ...             output_alignment_states=True)
    >>> out.sample.shape, out.alignment_states.shape
    (torch.Size([2, 4, 16, 16]), torch.Size([2, 4, 384]))
    ```
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SiTBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]
    _repeated_blocks = ["SiTBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        qk_norm: bool = False,
        alignment_depth: int = 8,
    ):
        super().__init__()
        positive = {
            "sample_size": sample_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "num_layers": num_layers,
            "num_attention_heads": num_attention_heads,
            "attention_head_dim": attention_head_dim,
            "num_classes": num_classes,
            "alignment_depth": alignment_depth,
        }
        if out_channels is not None:
            positive["out_channels"] = out_channels
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, numbers.Real) or not mlp_ratio > 0:
            raise ValueError(f"`mlp_ratio` must be a number > 0, got {mlp_ratio!r}.")
        if isinstance(class_dropout_prob, bool) or not isinstance(class_dropout_prob, numbers.Real):
            raise ValueError(f"`class_dropout_prob` must be a number in [0, 1), got {class_dropout_prob!r}.")
        if not 0 <= class_dropout_prob < 1:
            raise ValueError(f"`class_dropout_prob` must be in [0, 1), got {class_dropout_prob!r}.")
        if sample_size % patch_size != 0:
            raise ValueError(f"`sample_size` ({sample_size}) must be a multiple of `patch_size` ({patch_size}).")
        if not 1 <= alignment_depth <= num_layers:
            raise ValueError(
                f"`alignment_depth` must be a block index in [1, num_layers={num_layers}], got {alignment_depth}."
            )
        self.out_channels = out_channels if out_channels is not None else in_channels
        hidden_size = num_attention_heads * attention_head_dim

        # `base_size` equals the grid, so positions are the integers 0..g-1 as in the official MAE sin-cos table.
        self.pos_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=hidden_size,
            interpolation_scale=1,
        )
        # downscale_freq_shift=0 (not diffusers' DiT value 1) and flip_sin_to_cos give SiT's [cos, sin] features.
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(256, hidden_size)
        self.class_embedder = LabelEmbedding(num_classes, hidden_size, class_dropout_prob)
        self.transformer_blocks = nn.ModuleList(
            [
                SiTBlock(hidden_size, num_attention_heads, attention_head_dim, mlp_ratio, qk_norm)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(hidden_size, 2 * hidden_size)  # -> shift, scale
        self.proj_out_2 = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self.gradient_checkpointing = False
        self.gradient_checkpointing_blocks: int | None = None  # None: all blocks (see `enable_gradient_checkpointing`)
        self._initialize_weights()

    def enable_gradient_checkpointing(
        self, gradient_checkpointing_func: Callable | None = None, num_blocks: int | None = None
    ) -> None:
        """
        diffusers' gradient checkpointing (activations recomputed in the backward pass), of every block or of the first
        `num_blocks` only: memory falls and time rises about in proportion to the checkpointed blocks, so a training
        batch that almost fits costs only part of full checkpointing's slow-down. Gradients are the same either way.

        Args:
            gradient_checkpointing_func (`Callable`, *optional*): As in diffusers (`torch.utils.checkpoint` by default).
            num_blocks (`int`, *optional*): How many of the first blocks to checkpoint, in `[1, num_layers]`; all when
                not given.

        Example:

        ```py
        >>> from diffusers_repa import SiTTransformer2DModel
        >>> model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=8, num_classes=2, alignment_depth=1)
        >>> model.enable_gradient_checkpointing(num_blocks=4)  # 4 of SiT-S's 12 blocks
        >>> model.gradient_checkpointing, model.gradient_checkpointing_blocks
        (True, 4)

        ```
        """
        num_layers = len(self.transformer_blocks)
        if num_blocks is not None and (type(num_blocks) is not int or not 1 <= num_blocks <= num_layers):
            raise ValueError(
                f"`num_blocks` must be an int in [1, {num_layers}] (the model's blocks), got {num_blocks!r}; leave it "
                "out to checkpoint every block."
            )
        super().enable_gradient_checkpointing(gradient_checkpointing_func)
        self.gradient_checkpointing_blocks = num_blocks

    @classmethod
    def from_preset(cls, name: str, **config_overrides: Any) -> "SiTTransformer2DModel":
        """
        Build a randomly initialised model from an official name such as `"SiT-XL/2"`.

        Args:
            name (`str`): One of `SiT-{S,B,L,XL}/{2,4,8}`.
            config_overrides: Any other config value, e.g. `alignment_depth=8`, `sample_size=64`, `num_classes=10`.

        Example:

        ```py
        >>> from diffusers_repa import SiTTransformer2DModel
        >>> with torch.device("meta"):
        ...     model = SiTTransformer2DModel.from_preset("SiT-XL/2", alignment_depth=8)
        >>> sum(p.numel() for p in model.parameters())
        674816272
        ```
        """
        return cls(**cls.preset_config(name, **config_overrides))

    @staticmethod
    def preset_config(name: str, **config_overrides: Any) -> dict[str, Any]:
        """The config dict of an official preset name, with `config_overrides` applied."""
        if name not in SIT_PRESETS:
            raise ValueError(f"Unknown SiT preset {name!r}. Choose one of: {', '.join(SIT_PRESETS)}.")
        num_layers, hidden_size, heads, patch_size = SIT_PRESETS[name]
        config = {
            "num_layers": num_layers,
            "num_attention_heads": heads,
            "attention_head_dim": hidden_size // heads,
            "patch_size": patch_size,
        }
        config.update(config_overrides)
        return config

    @property
    def hidden_size(self) -> int:
        """Width of the token features (heads x head dim)."""
        return self.config.num_attention_heads * self.config.attention_head_dim

    def _initialize_weights(self) -> None:
        # The official `initialize_weights`: xavier linears, zero-initialised adaLN and output (so a fresh model
        # predicts exactly 0). A no-op under `from_pretrained`, which skips initialisation.
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        proj = self.pos_embed.proj
        nn.init.xavier_uniform_(proj.weight.data.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_2.weight, std=0.02)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for layer in (self.proj_out_1, self.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> None:
        size, channels = self.config.sample_size, self.config.in_channels
        if hidden_states.ndim != 4 or hidden_states.shape[1:] != (channels, size, size):
            raise ValueError(
                f"`hidden_states` must have shape (batch, {channels}, {size}, {size}) for this model "
                f"(sample_size={size}, in_channels={channels}), got {tuple(hidden_states.shape)}."
            )
        batch = hidden_states.shape[0]
        if timestep.ndim != 1 or timestep.shape[0] != batch:
            raise ValueError(
                f"`timestep` must be a scalar or have shape ({batch},), got {tuple(timestep.shape)}: pass flow time "
                "t in [0, 1] with t=1 pure noise."
            )
        if class_labels.ndim != 1 or class_labels.shape[0] != batch:
            raise ValueError(f"`class_labels` must have shape ({batch},), got {tuple(class_labels.shape)}.")
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(f"`class_labels` must be an integer tensor of class ids, got dtype {class_labels.dtype}.")
        # Value checks need the values on the host; they are only done where that is free (CPU tensors, eager mode),
        # so that a CUDA or compiled forward never synchronises.
        if torch.compiler.is_compiling():
            return
        # One `aminmax` per tensor: these checks run at every call, and tiny models on CPU feel each extra op.
        if class_labels.device.type == "cpu" and class_labels.numel():
            max_label = self.class_embedder.embedding_table.num_embeddings - 1
            low, high = (int(value) for value in torch.aminmax(class_labels))
            if low < 0 or high > max_label:
                null = (
                    f"{self.config.num_classes} is the null class"
                    if max_label == self.config.num_classes
                    else "no null class: trained with class_dropout_prob=0"
                )
                raise ValueError(f"`class_labels` must be in [0, {max_label}] ({null}), got values in [{low}, {high}].")
        if timestep.device.type == "cpu" and timestep.numel():
            times = timestep if timestep.is_floating_point() else timestep.double()
            low, high = (float(value) for value in torch.aminmax(times))
            if not (low >= 0 and high <= 1):  # NaN fails both comparisons; aminmax propagates it
                raise ValueError(
                    f"`timestep` must be flow time t in [0, 1] (t = 1 pure noise), got values in "
                    f"[{low}, {high}]: do not scale it by 1000 as diffusers' FlowMatch "
                    "schedulers do (the SiT schedulers' `timesteps` can be passed as they are)."
                )

    @staticmethod
    def _labels_to_tensor(class_labels: Any, batch: int, device: torch.device) -> torch.Tensor:
        """Class ids given as an int (one for the whole batch), a list/tuple of ints or a NumPy array -> LongTensor."""
        if isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool):
            return torch.full((batch,), int(class_labels), dtype=torch.long, device=device)
        values = class_labels.tolist() if hasattr(class_labels, "tolist") else class_labels
        if (
            not isinstance(values, Sequence)
            or isinstance(values, str)
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
        ):
            raise ValueError(
                "`class_labels` must be a 1-D integer tensor, a list or NumPy array of integer class ids, or one int "
                f"for the whole batch; got {class_labels!r}."
            )
        return torch.tensor([int(v) for v in values], dtype=torch.long, device=device)

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        class_labels: torch.LongTensor | Sequence[int] | int,
        return_dict: bool = True,
        output_alignment_states: bool = False,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> SiTTransformer2DModelOutput | tuple[torch.Tensor, ...]:
        """
        Predict the velocity of the flow at `(hidden_states, timestep)` for `class_labels`.

        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, in_channels, sample_size, sample_size)`):
                The noisy input x_t (scaled latents, or pixels in [-1, 1] for a pixel-space model).
            timestep (`torch.Tensor` of shape `(batch_size,)` or a float):
                Flow time t in [0, 1], t = 1 pure noise; passed to the embedding as is (not x1000: values outside
                [0, 1] raise a `ValueError` for CPU tensors in eager mode).
            class_labels (`torch.LongTensor` of shape `(batch_size,)`, a list or NumPy array of ints, or an int):
                Class ids in [0, num_classes]; `num_classes` is the unconditional class. A list or array is turned
                into a LongTensor on the input's device, an int is used for the whole batch; floats and bools raise
                a `ValueError`. Out-of-range ids raise for CPU tensors in eager mode.
            return_dict (`bool`, defaults to `True`): Return a [`SiTTransformer2DModelOutput`] instead of a tuple.
            output_alignment_states (`bool`, defaults to `False`):
                Also return the hidden states after block `alignment_depth` (shape `(batch, tokens, hidden)`).
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales the LoRA layers (PEFT) for this call, as in
                diffusers' transformers; no other key is supported.

        Returns:
            [`SiTTransformer2DModelOutput`], or the tuple `(sample,)` / `(sample, alignment_states)`.
        """
        if attention_kwargs:  # `scale` was taken out by `apply_lora_scale`
            raise ValueError(
                f"`attention_kwargs` supports only `scale` (the LoRA scale), got {sorted(attention_kwargs)}."
            )
        if not torch.is_tensor(timestep) or timestep.ndim == 0:
            timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(1)
            timestep = timestep.expand(hidden_states.shape[0])
        if not torch.is_tensor(class_labels):
            class_labels = self._labels_to_tensor(class_labels, hidden_states.shape[0], hidden_states.device)
        self._check_inputs(hidden_states, timestep, class_labels)

        height, width = hidden_states.shape[-2:]
        patch_size = self.config.patch_size
        hidden_states = self.pos_embed(hidden_states)

        timestep_features = self.time_proj(timestep).to(dtype=hidden_states.dtype)
        conditioning = self.timestep_embedder(timestep_features) + self.class_embedder(class_labels)

        alignment_states = None
        checkpointed = self.gradient_checkpointing_blocks or len(self.transformer_blocks)  # the first blocks
        for index, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing and index < checkpointed:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, conditioning)
            else:
                hidden_states = block(hidden_states, conditioning)
            if index + 1 == self.config.alignment_depth:
                alignment_states = hidden_states

        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = self.norm_out(hidden_states) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        hidden_states = self.proj_out_2(hidden_states)

        # Unpatchify: (B, T, p*p*C) with features ordered (p_row, p_col, C) -> (B, C, H, W).
        grid_h, grid_w = height // patch_size, width // patch_size
        hidden_states = hidden_states.reshape(-1, grid_h, grid_w, patch_size, patch_size, self.out_channels)
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        sample = hidden_states.reshape(-1, self.out_channels, grid_h * patch_size, grid_w * patch_size)

        if not output_alignment_states:
            alignment_states = None
        if not return_dict:
            return (sample,) if alignment_states is None else (sample, alignment_states)
        return SiTTransformer2DModelOutput(sample=sample, alignment_states=alignment_states)
