# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's alignment metrics, which the authors did not release (REPA issues #24, #54, #32, #55).

* [`cknna`]: the mutual k-nearest-neighbour kernel alignment of Huh et al. 2024 ("The Platonic Representation
  Hypothesis", `minyoungg/platonic-rep`, `AlignmentMetrics.cknna`), between two sets of per-image features.
* [`sit_hidden_states`]: a SiT's hidden states after chosen blocks, as REPA measures them: the **null class label**
  (no label injected), the noisy input x_t at a chosen flow time t, **mean-pooled over patches** (per image).
* [`encoder_features`]: an [`AlignmentEncoder`]'s patch features mean-pooled the same way.
* [`LinearProbe`] / [`linear_probe_accuracy`]: MAE-style linear probing, BatchNorm1d (no affine) + Linear on the
  mean-pooled hidden states.
* [`alignment_cknna`]: hidden states of one layer against given encoder features in one call, cheap enough to log
  during training.

The per-layer table and plot for a trained model come from the CLI `python -m diffusers_repa.evaluate_alignment`.

Example:

```py
>>> import torch
>>> from diffusers_repa import SiTTransformer2DModel
>>> from diffusers_repa.alignment import cknna, sit_hidden_states

>>> transformer = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, num_classes=10, alignment_depth=4)
>>> latents = torch.randn(64, 4, 16, 16)
>>> hidden = sit_hidden_states(transformer, latents, timestep=0.5, layers=[2, 4], generator=torch.manual_seed(0))
>>> hidden[4].shape
torch.Size([64, 384])
>>> score = cknna(hidden[2], hidden[4], topk=10)  # a float, 1.0 for identical neighbourhoods
```
"""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from tqdm.auto import tqdm

from ..flow_paths import check_path_type, path_coefficients

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# CKNNA
# ----------------------------------------------------------------------------------------------------------------------


def _as_float64(features: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A (N, D) float64 tensor from a numpy array or a torch tensor, checked to be 2-D and finite."""
    if isinstance(features, np.ndarray):
        tensor = torch.from_numpy(np.asarray(features, dtype=np.float64))
    elif torch.is_tensor(features):
        tensor = features.detach().to(torch.float64)
    else:
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(features).__name__}.")
    if tensor.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (num_samples, dim), got {tuple(tensor.shape)}: mean-pool token features over "
            "the tokens first (`features.mean(dim=1)`)."
        )
    if device is not None:
        tensor = tensor.to(device)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; CKNNA needs finite features.")
    return tensor


def _hsic_unbiased(kernel_k: torch.Tensor, kernel_l: torch.Tensor) -> torch.Tensor:
    """
    Song et al.'s unbiased HSIC estimator (JMLR 2012, Eq. 5) of two (N, N) kernels; their diagonals are ignored.

    `[tr(K~ L~) + 1ᵀK~1 1ᵀL~1 / ((n-1)(n-2)) - 2 1ᵀK~L~1 / (n-2)] / (n (n-3))`, with K~, L~ the kernels with zero
    diagonals, computed in O(N²) (`1ᵀK~L~1` is the dot product of K~'s column sums and L~'s row sums).
    """
    n = kernel_k.shape[0]
    kernel_k = kernel_k.clone().fill_diagonal_(0)
    kernel_l = kernel_l.clone().fill_diagonal_(0)
    trace_term = (kernel_k * kernel_l.T).sum()
    sum_term = kernel_k.sum() * kernel_l.sum() / ((n - 1) * (n - 2))
    cross_term = 2 * torch.dot(kernel_k.sum(dim=0), kernel_l.sum(dim=1)) / (n - 2)
    return (trace_term + sum_term - cross_term) / (n * (n - 3))


def _hsic_biased(kernel_k: torch.Tensor, kernel_l: torch.Tensor) -> torch.Tensor:
    """The biased HSIC `tr(K H L H)`, H the centering matrix, computed in O(N²)."""
    centered_k = kernel_k - kernel_k.mean(dim=1, keepdim=True)  # K H
    centered_l = kernel_l - kernel_l.mean(dim=1, keepdim=True)  # L H
    return (centered_k * centered_l.T).sum()


def _neighbour_mask(kernel: torch.Tensor, topk: int, exclude_self: bool) -> torch.Tensor:
    """Boolean (N, N) mask: row i is True at the `topk` columns with the largest kernel values of row i."""
    if exclude_self:
        kernel = kernel.clone().fill_diagonal_(float("-inf"))
    indices = kernel.topk(topk, dim=1).indices
    return torch.zeros(kernel.shape, dtype=torch.bool, device=kernel.device).scatter_(1, indices, True)


def cknna(
    features_a: ArrayLike,
    features_b: ArrayLike,
    topk: int = 10,
    unbiased: bool = True,
    normalize: bool = True,
    eps: float = 1e-6,
) -> float:
    r"""
    Centered kernel nearest-neighbour alignment (CKNNA, Huh et al. 2024) between two representations of the same
    N samples.

    With linear kernels K = A Aᵀ and L = B Bᵀ (rows L2-normalised first when `normalize`), each row keeps only its
    `topk` nearest neighbours, the same neighbours in both kernels (the mutual k-NN mask M, M_ij = 1 when j is among
    i's top-k in K *and* in L; a sample is not its own neighbour when `unbiased`). Then

        CKNNA = HSIC(M∘K, M∘L) / (sqrt(HSIC(M_K∘K, M_K∘K) · HSIC(M_L∘L, M_L∘L)) + eps),

    with M_K, M_L each kernel's own top-k mask and HSIC Song et al.'s unbiased estimator (`unbiased=True`) or the
    biased `tr(KHLH)`. This is `AlignmentMetrics.cknna` of `minyoungg/platonic-rep`, `eps` included (so identical
    features give 1 - O(eps / HSIC), and results compare with theirs); it is invariant to rotations and to per-sample
    scaling of either side, and near 0 for unrelated features. REPA reports it with `topk=10` between mean-pooled SiT
    hidden states and DINOv2 features. (platonic-rep's own pipeline also clips activations at their 0.95 quantile
    before normalising; do that beforehand if you want their exact preprocessing.)

    Computed in float64 on the device of `features_a` (numpy inputs: the CPU), with dense N x N matrices: memory is
    about 40 N² bytes (4 GB at N = 10,000).

    Args:
        features_a (`np.ndarray` or `torch.Tensor` of shape `(N, D_a)`): One representation, one row per sample.
        features_b (`np.ndarray` or `torch.Tensor` of shape `(N, D_b)`): The other, same samples in the same order.
        topk (`int`, defaults to 10): Neighbours per sample; 2 <= topk < N.
        unbiased (`bool`, defaults to `True`): Unbiased HSIC with self-neighbours excluded (platonic-rep's default).
        normalize (`bool`, defaults to `True`): L2-normalise each row first (cosine-similarity kernels).
        eps (`float`, defaults to 1e-6): Added to the denominator, as in platonic-rep.

    Returns:
        `float`: The alignment, at most about 1 (1 = the same neighbourhood structure).

    Raises:
        `ValueError`: for non-2-D or non-finite features, different sample counts, too few samples for `topk`, or
        degenerate features whose self-HSIC is not positive (CKNNA undefined).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import cknna

    >>> features = torch.randn(256, 32)
    >>> rotation = torch.linalg.qr(torch.randn(32, 32)).Q
    >>> round(cknna(features, 3.0 * features @ rotation), 3)
    1.0
    >>> cknna(features, torch.randn(256, 64)) < 0.1
    True
    ```
    """
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 2:
        raise ValueError(f"`topk` must be an integer >= 2 (REPA uses 10), got {topk!r}.")
    topk = int(topk)
    tensor_a = _as_float64(features_a, "features_a")
    tensor_b = _as_float64(features_b, "features_b", device=tensor_a.device)
    num_samples = tensor_a.shape[0]
    if tensor_b.shape[0] != num_samples:
        raise ValueError(
            f"`features_a` and `features_b` must describe the same samples, got {num_samples} and {tensor_b.shape[0]} "
            "rows."
        )
    minimum = max(topk + 1, 4 if unbiased else 2)
    if num_samples < minimum:
        raise ValueError(
            f"CKNNA with topk={topk} needs at least {minimum} samples, got {num_samples}: use more samples or a "
            "smaller `topk`."
        )
    if normalize:
        tensor_a = F.normalize(tensor_a, dim=1)
        tensor_b = F.normalize(tensor_b, dim=1)
    for name, tensor in (("features_a", tensor_a), ("features_b", tensor_b)):
        if bool((tensor == tensor[0]).all()):
            raise ValueError(
                f"`{name}` is the same for every sample{' after L2 normalisation' if normalize else ''}: it has no "
                "neighbourhood structure, so CKNNA is undefined (degenerate features)."
            )

    hsic = _hsic_unbiased if unbiased else _hsic_biased
    kernel_k = tensor_a @ tensor_a.T
    kernel_l = tensor_b @ tensor_b.T
    mask_k = _neighbour_mask(kernel_k, topk, exclude_self=unbiased)
    mask_l = _neighbour_mask(kernel_l, topk, exclude_self=unbiased)
    hsic_kk = hsic(kernel_k * mask_k, kernel_k * mask_k)
    hsic_ll = hsic(kernel_l * mask_l, kernel_l * mask_l)
    mutual = mask_k & mask_l
    hsic_kl = hsic(kernel_k * mutual, kernel_l * mutual)
    product = (hsic_kk * hsic_ll).item()
    if not (math.isfinite(product) and product > 0):
        raise ValueError(
            f"CKNNA is undefined for these features: the self-alignment HSIC terms are {hsic_kk.item():.3g} and "
            f"{hsic_ll.item():.3g} (they must be positive). The features are degenerate (constant or repeated rows, "
            "or too few samples): use more, distinct samples."
        )
    return hsic_kl.item() / (math.sqrt(product) + eps)


# ----------------------------------------------------------------------------------------------------------------------
# Hidden states of a SiT and features of an encoder
# ----------------------------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook after the deepest requested block, so the rest of the network is not run."""


def _unwrap_sit(transformer: nn.Module) -> nn.Module:
    """The SiT inside DDP (`.module`) or `torch.compile` (`._orig_mod`) wrappers."""
    model = transformer
    for _ in range(4):
        if hasattr(model, "transformer_blocks"):
            return model
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            break
    raise TypeError(
        f"{type(transformer).__name__} has no `transformer_blocks`: pass a SiTTransformer2DModel (unwrapped with "
        "`accelerator.unwrap_model` if needed)."
    )


def _check_layers(layers: int | Iterable[int], num_layers: int) -> list[int]:
    """Sorted unique 1-based block indices, each in [1, num_layers]."""
    layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not layers:
        raise ValueError(f"`layers` is empty: pass 1-based block indices in [1, {num_layers}].")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= num_layers:
            raise ValueError(
                f"`layers` must be 1-based block indices in [1, {num_layers}] (layer i = the output of block i, as "
                f"`alignment_depth`), got {layer!r}."
            )
    return sorted({int(layer) for layer in layers})


def _check_timestep(timestep: float | torch.Tensor) -> float:
    if torch.is_tensor(timestep):
        if timestep.numel() != 1:
            raise ValueError(
                f"`timestep` must be one flow time (a float), got a tensor of shape {tuple(timestep.shape)}."
            )
        timestep = timestep.item()
    timestep = float(timestep)
    if not 0.0 <= timestep <= 1.0:
        raise ValueError(
            f"`timestep` is a flow time and must lie in [0, 1] (0 = data, 1 = pure noise), got {timestep}."
        )
    return timestep


def _null_class(model: nn.Module) -> int:
    """The index of the unconditional class, checked to exist in the label table."""
    null_class = model.config.num_classes
    if model.class_embedder.embedding_table.num_embeddings <= null_class:
        raise ValueError(
            "This SiT has no null class (it was built with class_dropout_prob=0), so hidden states cannot be taken "
            "without injecting a label: REPA's metrics need a model trained with label dropout."
        )
    return null_class


@torch.no_grad()
def sit_hidden_states(
    transformer: nn.Module,
    sample: torch.Tensor,
    timestep: float | torch.Tensor,
    layers: int | Sequence[int],
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    path_type: str = "linear",
    batch_size: int | None = None,
    show_progress: bool = False,
) -> dict[int, torch.Tensor]:
    r"""
    A SiT's hidden states after the given blocks, mean-pooled over patches, as REPA measures alignment.

    The clean `sample` x_0 is noised on the flow path, x_t = alpha_t x_0 + sigma_t noise
    ([`~diffusers_repa.flow_paths.path_coefficients`]), and the model runs on it in eval mode without gradients, with
    the **null class label** (`num_classes`) for every image, so no label is injected. Forward hooks on
    `transformer_blocks` read the token features after each requested block (the model's own code is not changed;
    blocks after the deepest requested one are not run), and they are averaged over the tokens. The model's
    train/eval mode is restored afterwards.

    Args:
        transformer (`SiTTransformer2DModel`, or a DDP / `torch.compile` wrapper of one): The model.
        sample (`torch.Tensor` of shape `(N, in_channels, sample_size, sample_size)`): Clean inputs x_0: scaled VAE
            latents, or pixels in [-1, 1] for a pixel-space model, as in training.
        timestep (`float`): Flow time t in [0, 1] (0 = data, 1 = pure noise).
        layers (`int` or a list of `int`): 1-based block indices: layer i is the output of block i, as the model's
            `alignment_depth` (so `layers=transformer.config.alignment_depth` is the aligned layer).
        noise (`torch.Tensor` shaped like `sample`, *optional*): The noise; drawn with `generator` if not given.
        generator (`torch.Generator` or a list of N of them, *optional*): For drawing the noise (all of it at once,
            so results do not depend on `batch_size`).
        path_type (`str`, defaults to `"linear"`): The path the model was trained on (`"linear"` or `"cosine"`; a
            pipeline's scheduler config holds it).
        batch_size (`int`, *optional*): Images per forward pass; all at once if `None`.
        show_progress (`bool`, defaults to `False`): A tqdm bar over the batches.

    Returns:
        `dict[int, torch.Tensor]`: For each layer (ascending), a float32 tensor of shape `(N, hidden_size)` on
        `sample`'s device.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import SiTTransformer2DModel
    >>> from diffusers_repa.alignment import sit_hidden_states

    >>> transformer = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, num_classes=10, alignment_depth=4)
    >>> hidden = sit_hidden_states(transformer, torch.randn(8, 4, 16, 16), 0.5, layers=[1, 4], batch_size=4)
    >>> {layer: tuple(states.shape) for layer, states in hidden.items()}
    {1: (8, 384), 4: (8, 384)}
    ```
    """
    model = _unwrap_sit(transformer)
    config = model.config
    layers = _check_layers(layers, config.num_layers)
    timestep = _check_timestep(timestep)
    check_path_type(path_type)
    null_class = _null_class(model)
    expected = (config.in_channels, config.sample_size, config.sample_size)
    if not torch.is_tensor(sample) or sample.ndim != 4 or tuple(sample.shape[1:]) != expected:
        shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
        raise ValueError(
            f"`sample` must be a tensor of clean inputs with shape (N, {', '.join(map(str, expected))}) for this "
            f"model, got {shape}."
        )
    num_samples = sample.shape[0]
    if num_samples == 0:
        raise ValueError("`sample` is empty.")
    if not torch.isfinite(sample).all():
        raise ValueError("`sample` contains NaN or infinite values.")
    if batch_size is None:
        batch_size = num_samples
    elif batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if noise is None:
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    elif noise.shape != sample.shape:
        raise ValueError(f"`noise` must have the shape of `sample` {tuple(sample.shape)}, got {tuple(noise.shape)}.")

    time_tensor = torch.tensor(timestep, dtype=sample.dtype, device=sample.device)
    alpha_t, sigma_t, _, _ = path_coefficients(path_type, time_tensor)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    collected: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    deepest = layers[-1]

    def make_hook(layer: int):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            collected[layer].append(output.float().mean(dim=1))
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [model.transformer_blocks[layer - 1].register_forward_hook(make_hook(layer)) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        starts = range(0, num_samples, batch_size)
        for start in tqdm(starts, desc="SiT hidden states", disable=not show_progress or len(starts) < 2):
            stop = min(start + batch_size, num_samples)
            noisy = alpha_t * sample[start:stop] + sigma_t * noise[start:stop].to(sample.device)
            labels = torch.full((stop - start,), null_class, dtype=torch.long, device=device)
            times = torch.full((stop - start,), timestep, dtype=dtype, device=device)
            try:
                model(noisy.to(device=device, dtype=dtype), times, labels)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: torch.cat(chunks).to(sample.device) for layer, chunks in collected.items()}


@torch.no_grad()
def encoder_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int | None = None, show_progress: bool = False
) -> torch.Tensor:
    r"""
    An alignment encoder's patch features of `images`, mean-pooled over the tokens (for a CNN: global average
    pooling of its feature map), the encoder side of REPA's CKNNA.

    Args:
        encoder ([`AlignmentEncoder`], or any module mapping images to `(B, T, D)` or `(B, D)` features).
        images (`torch.Tensor` of shape `(N, 3, resolution, resolution)`): uint8, or float in [0, 255], on the
            encoder's device.
        batch_size (`int`, *optional*): Images per forward; all at once if `None`.
        show_progress (`bool`, defaults to `False`): A tqdm bar over the batches.

    Returns:
        `torch.Tensor` of shape `(N, D)`, float32.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import AlignmentEncoder, encoder_features

    >>> encoder = AlignmentEncoder.from_pretrained("facebook/dinov2-base", resolution=256)
    >>> images = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    >>> encoder_features(encoder, images, batch_size=2).shape
    torch.Size([4, 768])
    ```
    """
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"`images` must be a non-empty (N, 3, H, W) tensor of pixel values in [0, 255], got {shape}.")
    batch_size = images.shape[0] if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    starts = range(0, images.shape[0], batch_size)
    pooled = []
    for start in tqdm(starts, desc="Encoder features", disable=not show_progress or len(starts) < 2):
        pooled.append(pool_tokens(encoder(images[start : start + batch_size])))
    return torch.cat(pooled)


def pool_tokens(features: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens of `(B, T, D)` features, as float32 `(B, D)`; `(B, D)` features are only cast."""
    if features.ndim == 3:
        return features.float().mean(dim=1)
    if features.ndim == 2:
        return features.float()
    raise ValueError(f"Features must have shape (batch, tokens, dim) or (batch, dim), got {tuple(features.shape)}.")


def alignment_cknna(
    transformer: nn.Module,
    sample: torch.Tensor,
    target_features: torch.Tensor,
    layer: int | None = None,
    timestep: float = 0.5,
    topk: int = 10,
    path_type: str = "linear",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    batch_size: int | None = None,
) -> float:
    r"""
    CKNNA between a SiT's mean-pooled hidden states at one layer and given encoder features of the same images:
    one call for logging alignment during training.

    Args:
        transformer (`SiTTransformer2DModel`, possibly wrapped): The model; its train/eval mode is restored.
        sample (`torch.Tensor` of shape `(N, C, H, W)`): Clean model inputs x_0 (scaled latents or pixels in [-1, 1]).
        target_features (`torch.Tensor` of shape `(N, T, D)` or `(N, D)`): Encoder features of the same images (e.g.
            [`AlignmentEncoder`] outputs or stored features); token features are mean-pooled.
        layer (`int`, *optional*): 1-based block; defaults to the model's `alignment_depth`.
        timestep (`float`, defaults to 0.5): Flow time t in [0, 1].
        topk (`int`, defaults to 10): Neighbours for [`cknna`]; N must exceed it.
        path_type (`str`, defaults to `"linear"`): The training path.
        noise, generator: As in [`sit_hidden_states`]; fix them to compare values across steps.
        batch_size (`int`, *optional*): Images per forward pass.

    Returns:
        `float`: CKNNA, see [`cknna`].

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import SiTTransformer2DModel
    >>> from diffusers_repa.alignment import alignment_cknna

    >>> transformer = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, num_classes=10, alignment_depth=4)
    >>> latents, features = torch.randn(32, 4, 16, 16), torch.randn(32, 4, 768)
    >>> value = alignment_cknna(transformer, latents, features, generator=torch.manual_seed(0))
    ```
    """
    model = _unwrap_sit(transformer)
    layer = _check_layers(model.config.alignment_depth if layer is None else layer, model.config.num_layers)[0]
    if not torch.is_tensor(target_features):
        raise ValueError("`target_features` must be one (N, T, D) or (N, D) tensor (one encoder's features).")
    target = pool_tokens(target_features)
    if torch.is_tensor(sample) and target.shape[0] != sample.shape[0]:
        raise ValueError(
            f"`target_features` has {target.shape[0]} rows but `sample` has {sample.shape[0]} images: pass the "
            "features of the same images."
        )
    if sample.shape[0] <= topk:
        raise ValueError(f"CKNNA with topk={topk} needs more than {topk} images, got {sample.shape[0]}.")
    hidden = sit_hidden_states(
        model, sample, timestep, [layer], noise=noise, generator=generator, path_type=path_type, batch_size=batch_size
    )[layer]
    return cknna(hidden, target, topk=topk)


# ----------------------------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------------------------


class LinearProbe(nn.Module):
    r"""
    MAE's linear-probing head: BatchNorm1d without affine parameters (eps 1e-6), then a Linear classifier
    (weights from a normal with std 0.01 truncated at 2 std, bias 0), on frozen mean-pooled features.

    Args:
        in_features (`int`): Width D of the features.
        num_classes (`int`): Number of classes.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import LinearProbe

    >>> LinearProbe(384, 10)(torch.randn(8, 384)).shape
    torch.Size([8, 10])
    ```
    """

    def __init__(self, in_features: int, num_classes: int, generator: torch.Generator | None = None):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False, eps=1e-6)
        self.linear = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01, a=-0.02, b=0.02, generator=generator)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(B, in_features)` features -> `(B, num_classes)` logits."""
        return self.linear(self.norm(features))


def _as_features(features: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(features)) if isinstance(features, np.ndarray) else features
    if not torch.is_tensor(tensor):
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(features).__name__}.")
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape (num_samples, dim) with num_samples >= 1, got {tuple(tensor.shape)}."
        )
    tensor = tensor.detach().float()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return tensor


def _as_labels(labels: Any, name: str, num_samples: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(labels)) if not torch.is_tensor(labels) else labels.detach()
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"`{name}` must hold integer class ids, got dtype {tensor.dtype}.")
    if tensor.ndim != 1 or tensor.shape[0] != num_samples:
        raise ValueError(
            f"`{name}` must have shape ({num_samples},), one class id per feature row, got {tuple(tensor.shape)}."
        )
    return tensor.long()


def linear_probe_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int | None = None,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> float:
    r"""
    Train a [`LinearProbe`] on frozen features and return its top-1 accuracy on the test features (MAE-style
    linear probing, as REPA issues #32/#55 describe it: mean-pooled hidden states, no class label injected).

    Optimisation: SGD with momentum 0.9 (MAE uses LARS for its 16k batches), learning rate `lr` with a cosine decay
    to 0 over `epochs`, cross-entropy, mini-batches of `batch_size` reshuffled every epoch (a last batch of one
    sample is dropped: BatchNorm needs two). Everything random (initialisation, shuffling) comes from a generator
    seeded with `seed`, so the result is reproducible and does not touch the global RNG.

    Args:
        train_features (`np.ndarray` or `torch.Tensor` of shape `(N_train, D)`): Features to train on.
        train_labels (`(N_train,)` integer array or tensor): Their class ids in [0, num_classes).
        test_features (`(N_test, D)`), test_labels (`(N_test,)`): Held-out features and labels.
        num_classes (`int`, *optional*): Defaults to 1 + the largest label seen.
        epochs (`int`, defaults to 100), lr (`float`, defaults to 0.1), batch_size (`int`, defaults to 256),
        weight_decay (`float`, defaults to 0): Optimisation settings.
        seed (`int`, defaults to 0): Seed of the probe's initialisation and shuffling.
        device (`str` or `torch.device`, *optional*): Defaults to the train features' device (numpy: CPU).
        show_progress (`bool`, defaults to `False`): A tqdm bar over the epochs.

    Returns:
        `float`: Accuracy in [0, 1] on the test set.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import linear_probe_accuracy

    >>> features = torch.randn(1000, 16)
    >>> labels = (features @ torch.randn(16, 4)).argmax(dim=1)  # linearly separable classes
    >>> linear_probe_accuracy(features[:800], labels[:800], features[800:], labels[800:]) > 0.9
    True
    ```
    """
    train_x = _as_features(train_features, "train_features")
    test_x = _as_features(test_features, "test_features")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"`train_features` and `test_features` must have the same width, got {train_x.shape[1]} and "
            f"{test_x.shape[1]}."
        )
    if train_x.shape[0] < 2:
        raise ValueError(f"The probe needs at least 2 training samples, got {train_x.shape[0]}.")
    train_y = _as_labels(train_labels, "train_labels", train_x.shape[0])
    test_y = _as_labels(test_labels, "test_labels", test_x.shape[0])
    largest = int(max(train_y.max(), test_y.max()))
    smallest = int(min(train_y.min(), test_y.min()))
    num_classes = largest + 1 if num_classes is None else int(num_classes)
    if num_classes < 2:
        raise ValueError(f"A probe needs at least 2 classes, got num_classes={num_classes}.")
    if smallest < 0 or largest >= num_classes:
        raise ValueError(f"Labels must be class ids in [0, {num_classes}), got values in [{smallest}, {largest}].")
    for option, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"`{option}` must be >= 1, got {value}.")
    if not lr > 0 or not weight_decay >= 0:
        raise ValueError(f"`lr` must be > 0 and `weight_decay` >= 0, got lr={lr}, weight_decay={weight_decay}.")

    device = torch.device(device) if device is not None else train_x.device
    train_x, train_y, test_x, test_y = (tensor.to(device) for tensor in (train_x, train_y, test_x, test_y))
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(train_x.shape[1], num_classes, generator=generator).to(device)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(train_x.shape[0] / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    probe.train()
    with torch.enable_grad():
        for _ in tqdm(range(epochs), desc="Linear probe epochs", disable=not show_progress, leave=False):
            order = torch.randperm(train_x.shape[0], generator=generator).to(device)
            for start in range(0, train_x.shape[0], batch_size):
                indices = order[start : start + batch_size]
                if len(indices) >= 2:
                    loss = F.cross_entropy(probe(train_x[indices]), train_y[indices])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                scheduler.step()
    probe.eval()
    with torch.no_grad():
        predictions = probe(test_x).argmax(dim=1)
    return (predictions == test_y).float().mean().item()
