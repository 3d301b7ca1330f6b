# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's training loss: v-prediction flow matching plus representation alignment (official `loss.py` `SILoss`)."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..flow_paths import check_path_type, path_coefficients, time_from_noise_ratio

WEIGHTINGS = ("uniform", "lognormal")


@dataclass
class REPALossOutput(BaseOutput):
    """
    Output of [`REPALoss`].

    Args:
        loss (`torch.Tensor`, scalar): `denoising_loss + proj_coeff * projection_loss`, the value to back-propagate.
        denoising_loss (`torch.Tensor`, scalar): Mean squared error of the predicted velocity, averaged over
            channels, pixels and the batch (float32).
        projection_loss (`torch.Tensor`, scalar): Minus the cosine similarity between projected SiT tokens and
            encoder features, averaged over encoders, batch and tokens, in [-1, 1] (-1 = perfectly aligned; float32).
            Exactly 0 when the projection term was skipped (`proj_coeff=0`).
        timesteps (`torch.Tensor` of shape `(batch_size,)`): The flow times t in [0, 1] (1 = noise) of this step.
    """

    loss: torch.Tensor
    denoising_loss: torch.Tensor
    projection_loss: torch.Tensor
    timesteps: torch.Tensor


def projection_loss(target_features: Sequence[torch.Tensor], projected_states: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""
    REPA's alignment loss: -mean over encoders, samples and tokens of cos(target, projected).

    Both sides are L2-normalised over the feature dimension in float32 (`F.normalize`, eps 1e-12); half precision
    overflows here (REPA issue #46). The targets are constants, as the official ones (computed under `no_grad`): they
    are detached, so no gradient reaches the encoder that produced them.

    Args:
        target_features (`list[torch.Tensor]`): One `(batch_size, num_tokens, z_dim)` tensor per encoder.
        projected_states (`list[torch.Tensor]`): The projector's outputs, same shapes.

    Returns:
        `torch.Tensor`: float32 scalar in [-1, 1].

    Raises:
        `ValueError`: when the lists differ in length or a pair differs in shape (broadcasting would hide it).
    """
    if len(target_features) != len(projected_states) or not target_features:
        raise ValueError(
            f"`projection_loss` needs one projected tensor per target tensor, got {len(projected_states)} and "
            f"{len(target_features)}."
        )
    for index, (target, projected) in enumerate(zip(target_features, projected_states)):
        if target.shape != projected.shape:
            raise ValueError(
                f"Target features {index} have shape {tuple(target.shape)} but the projected states "
                f"{tuple(projected.shape)}: both must be (batch, tokens, dim) with the same sizes."
            )
    similarities = [
        (F.normalize(target.detach().float(), dim=-1) * F.normalize(projected.float(), dim=-1)).sum(dim=-1).mean()
        for target, projected in zip(target_features, projected_states)
    ]
    return -torch.stack(similarities).mean()


class REPALoss:
    r"""
    The REPA training objective for a [`SiTTransformer2DModel`] and its [`REPAProjector`].

    For clean latents x_0 it draws a time t and noise eps, builds x_t = alpha_t x_0 + sigma_t eps on the chosen path
    ([`~diffusers_repa.flow_paths.path_coefficients`]), and returns

        loss = mean_b mean_chw (v_pred - v)^2 + proj_coeff * projection_loss,

    with v = d_alpha_t x_0 + d_sigma_t eps and `projection_loss` the negative mean cosine similarity between the
    projected hidden states after block `alignment_depth` and the encoders' patch features of the clean image. This
    is the official `SILoss` with `prediction="v"` combined as in the official `train.py`.

    Randomness follows the official order: the time is drawn on the CPU (`torch.rand((B, 1, 1, 1))` for `"uniform"`,
    `torch.randn` for `"lognormal"`), then the noise with the latents' shape on their device, then (in train mode)
    the transformer's label dropout. With no `generator` the global generators are used, exactly like the official
    code; a `torch.Generator` (CPU or on the latents' device) makes the draws reproducible.

    Args:
        path_type (`str`, defaults to `"linear"`): `"linear"` (x_t = (1-t) x_0 + t eps) or `"cosine"`.
        weighting (`str`, defaults to `"uniform"`): How t is drawn: `"uniform"` on [0, 1], or `"lognormal"`
            (sigma_t / alpha_t = exp(n), n ~ N(0, 1); median t = 0.5).
        proj_coeff (`float`, defaults to 0.5): Weight of the alignment term (the official `--proj-coeff`).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import REPAProjector, SiTTransformer2DModel
    >>> from diffusers_repa.alignment import REPALoss

    >>> transformer = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, alignment_depth=4)
    >>> projector = REPAProjector(hidden_size=384, projector_dim=64, z_dims=[32])
    >>> loss_fn = REPALoss(path_type="linear", weighting="uniform", proj_coeff=0.5)
    >>> latents, labels = torch.randn(2, 4, 16, 16), torch.tensor([3, 7])
    >>> target_features = [torch.randn(2, 4, 32)]  # e.g. AlignmentEncoder(images), one tensor per encoder
    >>> output = loss_fn(transformer, projector, latents, labels, target_features, generator=torch.manual_seed(0))
    >>> output.loss.backward()

    ```
    """

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", proj_coeff: float = 0.5):
        check_path_type(path_type)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown `weighting` {weighting!r}: choose one of {', '.join(map(repr, WEIGHTINGS))}.")
        _check_proj_coeff(proj_coeff)
        self.path_type = path_type
        self.weighting = weighting
        self.proj_coeff = proj_coeff

    def __repr__(self) -> str:
        return f"REPALoss(path_type={self.path_type!r}, weighting={self.weighting!r}, proj_coeff={self.proj_coeff})"

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Draw flow times as the official code does: on the CPU (or on `generator`'s device), shape `(B, 1, 1, 1)`.

        Args:
            batch_size (`int`): Number of times to draw.
            generator (`torch.Generator`, *optional*): Source of randomness; the global CPU generator if `None`.

        Returns:
            `torch.Tensor` of shape `(batch_size, 1, 1, 1)`, float32, in [0, 1].
        """
        device = generator.device if generator is not None else torch.device("cpu")
        shape = (batch_size, 1, 1, 1)
        if self.weighting == "uniform":
            return torch.rand(shape, generator=generator, device=device)
        return time_from_noise_ratio(self.path_type, torch.randn(shape, generator=generator, device=device).exp())

    def __call__(
        self,
        transformer: torch.nn.Module,
        projector: torch.nn.Module | None,
        latents: torch.Tensor,
        class_labels: torch.Tensor,
        target_features: Sequence[torch.Tensor] | None,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        proj_coeff: float | None = None,
    ) -> REPALossOutput:
        r"""
        Compute the loss of one training step.

        Args:
            transformer (`SiTTransformer2DModel`, possibly wrapped by accelerate/DDP/`torch.compile`): Called as
                `transformer(x_t, t, class_labels, output_alignment_states=...)`; it must be in the mode you want
                (train mode applies label dropout).
            projector (`REPAProjector` or `None`): Maps `alignment_states` to one tensor per encoder. May be `None`
                only when the projection term is off (`proj_coeff=0`).
            latents (`torch.Tensor` of shape `(batch_size, channels, height, width)`): Clean, already scaled
                latents x_0 (see [`~diffusers_repa.data.sample_posterior`]).
            class_labels (`torch.LongTensor` of shape `(batch_size,)`): Class ids.
            target_features (`list[torch.Tensor]`): One `(batch_size, num_tokens, z_dim)` tensor per encoder, the
                encoder features of the clean images ([`AlignmentEncoder`] outputs); `num_tokens` must equal the
                SiT's token count. Ignored (may be `None`) when `proj_coeff=0`.
            timesteps (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, 1, 1, 1)`, *optional*): Flow times in
                [0, 1] to use instead of drawing them.
            noise (`torch.Tensor` shaped like `latents`, *optional*): The noise eps to use instead of drawing it
                (moved to the latents' device and dtype).
            generator (`torch.Generator`, *optional*): Generator for the time and noise draws.
            proj_coeff (`float`, *optional*): Overrides the constructor's coefficient for this call (a coefficient
                schedule, or stopping the alignment). With 0 the projector is not run at all, and no gradient
                reaches it: under DDP wrap it with `find_unused_parameters=True` or stop calling its optimizer.

        Returns:
            [`REPALossOutput`].
        """
        proj_coeff = self.proj_coeff if proj_coeff is None else proj_coeff
        _check_proj_coeff(proj_coeff)
        use_projection = proj_coeff != 0
        if latents.ndim != 4:
            raise ValueError(f"`latents` must have shape (batch, channels, height, width), got {tuple(latents.shape)}.")
        batch_size = latents.shape[0]
        if use_projection:
            target_features = _check_target_features(target_features, batch_size, projector)

        if timesteps is None:
            time_input = self.sample_timesteps(batch_size, generator)
        else:
            time_input = _check_timesteps(timesteps, batch_size)
        time_input = time_input.to(device=latents.device, dtype=latents.dtype)
        if noise is None:
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        elif noise.shape != latents.shape:
            raise ValueError(
                f"`noise` must have the shape of `latents` {tuple(latents.shape)}, got {tuple(noise.shape)}."
            )
        else:
            noise = noise.to(device=latents.device, dtype=latents.dtype)

        alpha_t, sigma_t, d_alpha_t, d_sigma_t = path_coefficients(self.path_type, time_input)
        model_input = alpha_t * latents + sigma_t * noise
        model_target = d_alpha_t * latents + d_sigma_t * noise

        output = transformer(
            model_input, time_input.flatten(), class_labels, return_dict=True, output_alignment_states=use_projection
        )
        denoising_loss = (output.sample.float() - model_target.float()).pow(2).mean(dim=(1, 2, 3)).mean()

        if use_projection:
            projected_states = projector(output.alignment_states)
            _check_projected_shapes(target_features, projected_states)
            alignment_loss = projection_loss(target_features, projected_states)
            loss = denoising_loss + proj_coeff * alignment_loss
        else:
            alignment_loss = torch.zeros((), device=denoising_loss.device)
            loss = denoising_loss
        return REPALossOutput(
            loss=loss, denoising_loss=denoising_loss, projection_loss=alignment_loss, timesteps=time_input.flatten()
        )


def _check_proj_coeff(proj_coeff: float) -> None:
    if not 0 <= proj_coeff < math.inf:  # NaN fails both comparisons
        raise ValueError(f"`proj_coeff` must be >= 0 and finite (0 turns the alignment term off), got {proj_coeff}.")


def _check_timesteps(timesteps: torch.Tensor, batch_size: int) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps)
    if timesteps.numel() != batch_size or timesteps.ndim not in (1, 4):
        raise ValueError(
            f"`timesteps` must have shape ({batch_size},) or ({batch_size}, 1, 1, 1), got {tuple(timesteps.shape)}."
        )
    if timesteps.device.type == "cpu" and timesteps.numel() and not (timesteps.min() >= 0 and timesteps.max() <= 1):
        raise ValueError("`timesteps` are flow times and must lie in [0, 1] (0 = data, 1 = pure noise).")
    return timesteps.reshape(batch_size, 1, 1, 1)


def _check_target_features(
    target_features: Sequence[torch.Tensor] | None, batch_size: int, projector: torch.nn.Module | None
) -> list[torch.Tensor]:
    if projector is None:
        raise ValueError("`projector` is None but `proj_coeff` > 0: pass the REPAProjector, or `proj_coeff=0`.")
    if torch.is_tensor(target_features):
        raise ValueError("`target_features` must be a list with one (batch, tokens, dim) tensor per encoder.")
    if not target_features:
        raise ValueError("`target_features` is empty but `proj_coeff` > 0: pass one tensor per encoder.")
    for index, features in enumerate(target_features):
        if features.ndim != 3 or features.shape[0] != batch_size:
            raise ValueError(
                f"`target_features[{index}]` must have shape ({batch_size}, tokens, dim), got {tuple(features.shape)}."
            )
    return list(target_features)


def _check_projected_shapes(target_features: list[torch.Tensor], projected_states: list[torch.Tensor]) -> None:
    if len(projected_states) != len(target_features):
        raise ValueError(
            f"The projector has {len(projected_states)} head(s) but {len(target_features)} target feature tensor(s) "
            "were passed: build the REPAProjector with one z_dim per alignment encoder, in the same order."
        )
    for index, (target, projected) in enumerate(zip(target_features, projected_states)):
        if target.shape[1] != projected.shape[1]:
            raise ValueError(
                f"Encoder {index} gives {target.shape[1]} tokens but the SiT has {projected.shape[1]}: build the "
                "AlignmentEncoder with the training resolution and `num_tokens` of the transformer (see "
                "`check_compatibility`), or resize the features with `match_tokens`."
            )
        if target.shape[2] != projected.shape[2]:
            raise ValueError(
                f"Encoder {index} gives {target.shape[2]}-dim features but projector head {index} outputs "
                f"{projected.shape[2]}: set the projector's z_dims to the encoders' `embed_dim`s, in the same order."
            )
