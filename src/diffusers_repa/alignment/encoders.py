# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Frozen self-supervised image encoders whose patch features are REPA's alignment targets.

Every encoder is loaded through `transformers` and wrapped in [`AlignmentEncoder`], which owns the exact
preprocessing of the official REPA code (`train.py preprocess_raw_image`, `utils.load_encoders`).
Per family (`model_type`): transformers class; input side at 256 px; tokens returned; normalisation:

* DINOv2 S/B/L/G (`dinov2`): `Dinov2Model`; 224; patch tokens after the final LayerNorm
  (`last_hidden_state[:, 1:]`); ImageNet, before resize.
* DINOv2 + registers (`dinov2_with_registers`): `Dinov2WithRegistersModel`; 224; the same, CLS and registers dropped
  (`[:, 1 + R:]`); ImageNet, before resize.
* CLIP vision tower (`clip`, `clip_vision_model`): `CLIPVisionModel`; 224 (/14), 256 (/16); last-layer patch tokens
  before `post_layernorm` (`[:, 1:]`, as the official); CLIP, after resize.
* SigLIP vision tower (`siglip`, `siglip_vision_model`): `SiglipVisionModel`; 256 (/16), 224 (/14); all tokens (no
  CLS) after `post_layernorm`; 0.5 / 0.5, after resize.
* ViT-MAE (`vit_mae`): `ViTMAEModel`, mask ratio 0; 256 (/16); patch tokens after the final LayerNorm (`[:, 1:]`),
  raster order; ImageNet.
* I-JEPA (`ijepa`): `IJepaModel`; 224 (/14); all tokens (no CLS) after the final LayerNorm; ImageNet, before resize.
* ViT, e.g. DINOv1 (`vit`): `ViTModel`; 256 (/16); patch tokens after the final LayerNorm (`[:, 1:]`); ImageNet.
* timm (`timm_wrapper`): `TimmWrapperModel`; 16 x stride; `forward_features`: ViTs drop their prefix tokens, CNNs
  give the H x W map; the checkpoint's `pretrained_cfg`.

Common rules:

* Pixel values: `x / 255`, normalised with the model's `preprocessor_config.json` mean/std when there is one (the
  constants above otherwise), and resized with bicubic interpolation (`align_corners=False`, no antialias, no
  clamp) so that the token grid is `resolution / 16` per side: 16 x 16 at 256 px, 32 x 32 at 512 px, the grid of a
  SiT/2 on 8x-downsampling VAE latents. DINOv2 and I-JEPA normalise before resizing, as the official code does
  (the /16 ViTs are not resized at all).
* Position embeddings are resampled once at load time to that grid, the timm way (`resample_abs_pos_embed`:
  bicubic, antialias, prefix positions kept), and the config's `image_size` is updated, so that no interpolation
  runs at training time (timm ViTs: `set_input_size`, which does the same). For DINOv2 this reproduces the official
  hub models' targets; HF's own runtime interpolation (no antialias) does not.
* Other token counts (`from_pretrained(..., num_tokens=N)`, N the SiT's token count): a finer grid runs the encoder
  on a larger input (DINOv2 at 448 px for 32 x 32 tokens); a coarser one keeps the default input and area-pools the
  features ([`match_tokens`]). Feature grids are never upsampled by more than 2x per side, and non-square grids are
  refused, with a `ValueError` at load time, before training starts.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import cached_file, is_timm_available
from transformers.utils.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

# The official rule: the encoder's token grid side is the image side / 16 (224 px DINOv2 input at 256 px).
PIXELS_PER_TOKEN = 16
# `match_tokens` interpolates a feature grid up by at most this factor per side; more would invent detail.
MAX_UPSAMPLE_FACTOR = 2
# from_pretrained keyword arguments that also apply to `AutoConfig.from_pretrained` / `cached_file`.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "subfolder", "token")


@dataclass(frozen=True)
class _Family:
    """How one transformers vision transformer is fed and read."""

    model_class: str
    mean: Sequence[float]
    std: Sequence[float]
    has_cls_token: bool
    normalize_before_resize: bool


_FAMILIES: dict[str, _Family] = {
    "dinov2": _Family("Dinov2Model", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, True, True),
    "dinov2_with_registers": _Family(
        "Dinov2WithRegistersModel", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, True, True
    ),
    "clip": _Family("CLIPVisionModel", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False),
    "clip_vision_model": _Family("CLIPVisionModel", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True, False),
    "siglip": _Family("SiglipVisionModel", IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, False, False),
    "siglip_vision_model": _Family("SiglipVisionModel", IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, False, False),
    "vit_mae": _Family("ViTMAEModel", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, True, True),
    "ijepa": _Family("IJepaModel", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, False, True),
    "vit": _Family("ViTModel", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, True, True),
}
SUPPORTED_MODEL_TYPES = (*_FAMILIES, "timm_wrapper")


def resample_position_embeddings(
    position_embeddings: torch.Tensor, grid_size: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    r"""
    Resample a square absolute position-embedding table to another grid, as timm's `resample_abs_pos_embed` does
    (bicubic, `antialias=True`, computed in float32, prefix positions such as CLS kept unchanged).

    Args:
        position_embeddings (`torch.Tensor` of shape `(1, num_prefix_tokens + n * n, dim)`): The table.
        grid_size (`int`): The new grid side m.
        num_prefix_tokens (`int`, defaults to 1): Leading positions that are not on the grid (CLS).

    Returns:
        `torch.Tensor` of shape `(1, num_prefix_tokens + m * m, dim)` in the input's dtype (the input itself when
        the grid already has side m).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment.encoders import resample_position_embeddings

    >>> resample_position_embeddings(torch.randn(1, 1 + 37 * 37, 8), grid_size=16).shape
    torch.Size([1, 257, 8])

    ```
    """
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    old_size = _square_side(grid.shape[1], "the position-embedding grid")
    if old_size == grid_size:
        return position_embeddings
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_size, old_size, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim).to(position_embeddings.dtype)
    return torch.cat([prefix, grid], dim=1)


def match_tokens(features: torch.Tensor, num_tokens: int) -> torch.Tensor:
    r"""
    Resize a square grid of token features to `num_tokens` tokens.

    Coarser grids are area-pooled (`adaptive_avg_pool2d`); finer grids are interpolated bicubically, by at most
    `MAX_UPSAMPLE_FACTOR` (2) per side. Tokens are in raster order on both sides.

    Args:
        features (`torch.Tensor` of shape `(batch_size, n * n, dim)`): Encoder features on an n x n grid.
        num_tokens (`int`): The wanted count m * m (the SiT's token count).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_tokens, dim)`, in the input's dtype.

    Raises:
        `ValueError`: when either count is not a square, or the grid would be upsampled more than 2x per side.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import match_tokens

    >>> match_tokens(torch.randn(2, 256, 768), num_tokens=64).shape  # 16 x 16 -> 8 x 8 (SiT/4 at 256 px)
    torch.Size([2, 64, 768])

    ```
    """
    if features.ndim != 3:
        raise ValueError(f"`features` must have shape (batch, tokens, dim), got {tuple(features.shape)}.")
    batch_size, tokens, dim = features.shape
    if tokens == num_tokens:
        return features
    source = _square_side(tokens, "the encoder's token count")
    target = _check_token_resize(source, num_tokens)
    grid = features.transpose(1, 2).reshape(batch_size, dim, source, source).float()
    if target < source:
        grid = F.adaptive_avg_pool2d(grid, target)
    else:
        grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(features.dtype)


def _square_side(count: int, what: str) -> int:
    side = math.isqrt(count) if count >= 1 else 0
    if side < 1 or side * side != count:
        raise ValueError(f"{what} ({count}) is not a square grid; only square token grids can be matched.")
    return side


def _check_token_resize(source_side: int, num_tokens: int) -> int:
    """The target grid side, after checking that `source_side` may be resized to it."""
    target = _square_side(num_tokens, "`num_tokens`")
    if target > MAX_UPSAMPLE_FACTOR * source_side:
        raise ValueError(
            f"Matching a {source_side}x{source_side} encoder grid to {target}x{target} tokens would upsample the "
            f"features more than {MAX_UPSAMPLE_FACTOR}x per side. Run the encoder on a larger input instead "
            f"(`AlignmentEncoder.from_pretrained(..., num_tokens={num_tokens})` without `input_size`)."
        )
    return target


class AlignmentEncoder(nn.Module):
    r"""
    A frozen image encoder that turns raw training images into REPA's target features.

    It is always in eval mode with gradients off (`train()` keeps it in eval mode), and `forward` runs under
    `torch.no_grad()`. Build it with [`~AlignmentEncoder.from_pretrained`] (a checkpoint name or folder) or
    [`~AlignmentEncoder.from_model`] (a transformers model already in memory); the constructor takes an already
    loaded and resized transformers model. Its preprocessing buffers live on the model's device and follow it through
    `.to()`. In training, move it with `.to(accelerator.device)` and keep it out of
    `accelerator.prepare` (it has nothing to train or synchronise); several encoders are simply a list, whose outputs
    form the loss's `target_features`.

    Attributes:
        name (`str`): The checkpoint it was loaded from.
        embed_dim (`int`): Width of the returned features (a projector's `z_dim`).
        num_tokens (`int`): Number of tokens returned per image.
        resolution (`int`): Side of the square images `forward` takes.
        input_size (`int`): Side of the images fed to the network after resizing.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.alignment import AlignmentEncoder

    >>> encoder = AlignmentEncoder.from_pretrained("facebook/dinov2-base", resolution=256)
    >>> encoder.embed_dim, encoder.num_tokens, encoder.input_size
    (768, 256, 224)
    >>> images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    >>> encoder(images).shape
    torch.Size([2, 256, 768])

    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        name: str,
        resolution: int,
        input_size: int,
        grid_size: int,
        embed_dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_prefix_tokens: int = 0,
        normalize_before_resize: bool = False,
        num_tokens: int | None = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.train(False)
        self.name = name
        self.resolution = resolution
        self.input_size = input_size
        self.grid_size = grid_size
        self.embed_dim = embed_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.normalize_before_resize = normalize_before_resize
        self.num_tokens = grid_size * grid_size if num_tokens is None else num_tokens
        if self.num_tokens != grid_size * grid_size:
            _check_token_resize(grid_size, self.num_tokens)
        device = next(model.parameters()).device
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1), persistent=False
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        resolution: int = 256,
        num_tokens: int | None = None,
        input_size: int | None = None,
        **hf_kwargs,
    ) -> "AlignmentEncoder":
        r"""
        Load an encoder with transformers (`AutoConfig` picks the family, see the module docstring's list).

        Args:
            name_or_path (`str`): A Hub id such as `"facebook/dinov2-base"` or a local folder.
            resolution (`int`, defaults to 256): Side of the training images, a multiple of 16.
            num_tokens (`int`, *optional*): The token count to return, normally the SiT's
                `(sample_size // patch_size) ** 2`. A grid finer than `resolution / 16` runs the encoder on a
                correspondingly larger input; a coarser one area-pools the `resolution / 16` grid. Defaults to
                `(resolution / 16) ** 2`, the official setting.
            input_size (`int`, *optional*): Force the network's input side (a multiple of its patch size/stride);
                the features are then matched to `num_tokens` with [`match_tokens`].
            hf_kwargs: Passed to `from_pretrained` of the transformers model, e.g. `dtype=torch.float16`,
                `cache_dir`, `revision`, `local_files_only`.

        Returns:
            [`AlignmentEncoder`], frozen, on the CPU.
        """
        _check_resolution(resolution)
        _check_num_tokens(num_tokens)
        hub_kwargs = {key: value for key, value in hf_kwargs.items() if key in _HUB_KWARGS}
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        model_type = config.model_type
        if model_type == "timm_wrapper":
            if not is_timm_available():
                raise ImportError(f"{name_or_path} is a timm model: install timm (`pip install timm`) to use it.")
            model = transformers.TimmWrapperModel.from_pretrained(name_or_path, **hf_kwargs)
            mean = std = None  # the checkpoint's pretrained_cfg
        elif model_type in _FAMILIES:
            family = _FAMILIES[model_type]
            # ViT-MAE masks 75% of the tokens by default; REPA uses the unmasked encoder.
            config_overrides = {"mask_ratio": 0.0} if model_type == "vit_mae" else {}
            model = getattr(transformers, family.model_class).from_pretrained(
                name_or_path, **config_overrides, **hf_kwargs
            )
            mean, std = _preprocessor_mean_std(name_or_path, hub_kwargs, family)
        else:
            raise ValueError(_unsupported_message(str(name_or_path), model_type))
        return cls._wrap(model, str(name_or_path), resolution, num_tokens, input_size, mean, std)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        resolution: int = 256,
        num_tokens: int | None = None,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str | None = None,
    ) -> "AlignmentEncoder":
        r"""
        Wrap a transformers model that is already in memory (on any device): the family is read from
        `model.config.model_type`, exactly as [`~AlignmentEncoder.from_pretrained`] reads it from the checkpoint,
        and the result is the same encoder as `from_pretrained` of the same weights.

        The model is wrapped, not copied: it is frozen (eval mode, no gradients) and its position table is
        resampled to the token grid in place (ViT-MAE: masking turned off). Pass `copy.deepcopy(model)` to keep the
        original as it was. A full CLIP or SigLIP model is reduced to its vision tower, a task model such as
        `Dinov2ForImageClassification` to its backbone.

        Args:
            model (`PreTrainedModel`): e.g. a `Dinov2Model`, `CLIPVisionModel`, `TimmWrapperModel`, ...
            resolution, num_tokens, input_size: As in [`~AlignmentEncoder.from_pretrained`].
            mean, std (`Sequence[float]`, *optional*): The normalisation. Defaults to the `preprocessor_config.json`
                of `model.name_or_path` when that is a folder or cached checkpoint holding one, else the family's
                constants (timm: the model's `pretrained_cfg`).
            name (`str`, *optional*): Shown in messages; defaults to `model.name_or_path` or the class name.

        Returns:
            [`AlignmentEncoder`], frozen, on the model's device.

        Example:

        ```py
        >>> import transformers
        >>> from diffusers_repa.alignment import AlignmentEncoder

        >>> dinov2 = transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=4))
        >>> encoder = AlignmentEncoder.from_model(dinov2, resolution=64)
        >>> encoder.embed_dim, encoder.num_tokens, encoder.input_size
        (32, 16, 16)

        ```
        """
        if not isinstance(model, PreTrainedModel):
            raise ValueError(
                f"`AlignmentEncoder.from_model` takes a transformers `PreTrainedModel`, got {type(model).__name__}; "
                "for a checkpoint name or folder use `AlignmentEncoder.from_pretrained`."
            )
        _check_resolution(resolution)
        _check_num_tokens(num_tokens)
        model_type = model.config.model_type
        name = name or getattr(model, "name_or_path", "") or type(model).__name__
        if model_type in _FAMILIES:
            family = _FAMILIES[model_type]
            model = _encoder_model(model, family)
            if model_type == "vit_mae":
                model.config.mask_ratio = 0.0  # REPA uses the unmasked encoder; read at every forward
            if mean is None or std is None:
                source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
                try:  # the model's checkpoint folder or cached Hub files, when it came from one
                    found = _preprocessor_mean_std(source, {}, family) if source else (family.mean, family.std)
                except (OSError, ValueError):
                    found = family.mean, family.std
                mean, std = mean or found[0], std or found[1]
        elif model_type != "timm_wrapper":
            raise ValueError(_unsupported_message(name, model_type))
        return cls._wrap(model, name, resolution, num_tokens, input_size, mean, std)

    @classmethod
    def _wrap(
        cls,
        model: PreTrainedModel,
        name: str,
        resolution: int,
        num_tokens: int | None,
        input_size: int | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> "AlignmentEncoder":
        """Resize the model's position table for `resolution` / `num_tokens` / `input_size` and wrap it."""
        model_type = model.config.model_type
        if model_type == "timm_wrapper":
            timm_model = model.timm_model
            stride = int(timm_model.feature_info[-1]["reduction"])
            # The checkpoint's own pretrained_cfg (config.json), else timm's default for the architecture.
            pretrained_cfg = getattr(model.config, "pretrained_cfg", None) or timm_model.pretrained_cfg or {}
            mean = mean or pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)
            std = std or pretrained_cfg.get("std", IMAGENET_DEFAULT_STD)
            settings = {
                "embed_dim": int(timm_model.num_features),
                "num_prefix_tokens": int(getattr(timm_model, "num_prefix_tokens", 0)),
                "normalize_before_resize": False,
            }
        else:
            family = _FAMILIES[model_type]
            stride = _square(model.config.patch_size, "patch_size")
            registers = getattr(model.config, "num_register_tokens", 0) if model_type.startswith("dinov2") else 0
            settings = {
                "embed_dim": int(model.config.hidden_size),
                "num_prefix_tokens": int(family.has_cls_token) + registers,
                "normalize_before_resize": family.normalize_before_resize,
            }

        default_grid = resolution // PIXELS_PER_TOKEN
        if num_tokens is None:  # the official grid, also when `input_size` is forced
            num_tokens = default_grid * default_grid
        if input_size is None:
            grid_size = max(_square_side(num_tokens, "`num_tokens`"), default_grid)
            input_size = stride * grid_size
        elif input_size <= 0 or input_size % stride:
            raise ValueError(
                f"`input_size` must be a positive multiple of the encoder's stride {stride}, got {input_size}."
            )
        else:
            grid_size = input_size // stride

        if model_type == "timm_wrapper":
            if hasattr(model.timm_model, "set_input_size"):  # ViTs: resamples pos-embeds the same timm way
                model.timm_model.set_input_size(img_size=(input_size, input_size))
        else:
            _resize_position_embeddings(model, grid_size, input_size, family.has_cls_token)
        return cls(
            model,
            name=name,
            resolution=resolution,
            input_size=input_size,
            grid_size=grid_size,
            mean=mean,
            std=std,
            num_tokens=num_tokens,
            **settings,
        )

    def train(self, mode: bool = True) -> "AlignmentEncoder":
        """A frozen target encoder stays in eval mode (no dropout, no drop-path) whatever `mode` says."""
        return super().train(False)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, resolution={self.resolution}, input_size={self.input_size}, "
            f"grid={self.grid_size}x{self.grid_size}, num_tokens={self.num_tokens}, embed_dim={self.embed_dim}"
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Turn raw images into the network's float32 pixel values (official `preprocess_raw_image`).

        Args:
            images (`torch.Tensor` of shape `(batch_size, 3, resolution, resolution)`): uint8, or float in [0, 255]
                (float CPU images in [0, 1] or [-1, 1] are refused with a `ValueError`).

        Returns:
            `torch.Tensor` of shape `(batch_size, 3, input_size, input_size)`, float32.
        """
        if images.ndim != 4 or images.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(
                f"{self.name} was set up for (batch, 3, {self.resolution}, {self.resolution}) images in [0, 255], got "
                f"{tuple(images.shape)}: pass the center-cropped training images, not latents."
            )
        self._check_pixel_range(images)
        pixels = images.float() / 255.0
        if self.normalize_before_resize:
            return self._resize((pixels - self.mean) / self.std)
        return (self._resize(pixels) - self.mean) / self.std

    @staticmethod
    def _check_pixel_range(images: torch.Tensor) -> None:
        # Float images in [0, 1] or [-1, 1] (the usual tensor conventions) would be divided by 255 into near-black
        # inputs: silently wrong features. The values are checked where that costs no host sync (CPU tensors, eager
        # mode); the trainer feeds uint8, which needs no check. A float batch whose pixels all lie in [0, 1] but are
        # not all 0 is taken for the [0, 1] convention: no real batch of [0, 255] images is that dark.
        if not images.is_floating_point() or images.device.type != "cpu" or torch.compiler.is_compiling():
            return
        if not images.numel():
            return
        low, high = (float(value) for value in torch.aminmax(images.detach()))
        if not (low >= 0 and high <= 255) or 0 < high <= 1:  # NaN fails the first test
            raise ValueError(
                f"Images must be uint8, or float in [0, 255] as the official `preprocess_raw_image` takes them; got "
                f"float values in [{low:g}, {high:g}]. Map [0, 1] images with `images * 255` and [-1, 1] ones with "
                "`(images + 1) * 127.5`."
            )

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.input_size == self.resolution:
            return pixels
        return F.interpolate(pixels, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Encode raw images into patch features.

        Args:
            images (`torch.Tensor` of shape `(batch_size, 3, resolution, resolution)`): uint8, or float in [0, 255].

        Returns:
            `torch.Tensor` of shape `(batch_size, num_tokens, embed_dim)`, without gradient, in the dtype of the
            network's last operation: the model's dtype, or under autocast the dtype autocast gives that operation
            (float32 for the final LayerNorm of the ViT families).
        """
        pixel_values = self.preprocess(images).to(self.model.dtype)
        model_type = self.model.config.model_type
        if model_type == "timm_wrapper":
            hidden = self.model(pixel_values=pixel_values, do_pooling=False).last_hidden_state
            if hidden.ndim == 4:  # a CNN's feature map -> raster-order tokens
                channels_last = str(getattr(self.model.timm_model, "output_fmt", "NCHW")).endswith("NHWC")
                hidden = hidden.flatten(1, 2) if channels_last else hidden.flatten(2).transpose(1, 2)
        elif model_type == "vit_mae":
            # An increasing `noise` makes MAE's token shuffle the identity: raster order, and no global RNG is used.
            noise = torch.arange(self.grid_size**2, device=pixel_values.device, dtype=torch.float32)
            hidden = self.model(pixel_values=pixel_values, noise=noise.expand(len(pixel_values), -1)).last_hidden_state
        else:
            hidden = self.model(pixel_values=pixel_values).last_hidden_state
        tokens = hidden[:, self.num_prefix_tokens :]
        if tokens.shape[1] != self.grid_size**2:
            raise RuntimeError(
                f"{self.name} returned {tokens.shape[1]} tokens for a {self.input_size}px input, expected a "
                f"{self.grid_size}x{self.grid_size} grid: pass an `input_size` that this architecture supports."
            )
        return match_tokens(tokens, self.num_tokens)


def check_compatibility(
    encoders: AlignmentEncoder | Sequence[AlignmentEncoder],
    transformer: nn.Module,
    projector: nn.Module | None = None,
) -> None:
    r"""
    Check before training that the encoders' targets fit the transformer (and the projector's heads).

    Args:
        encoders ([`AlignmentEncoder`] or a list of them): The target encoders, in projector-head order.
        transformer (`SiTTransformer2DModel`): The (unwrapped) model to train.
        projector (`REPAProjector`, *optional*): Checked to read the transformer's width and to have one head per
            encoder with `z_dim == embed_dim`.

    Raises:
        `ValueError`: naming the encoder and the setting to change.

    Example:

    ```py
    >>> from diffusers_repa import SiTTransformer2DModel
    >>> from diffusers_repa.alignment import AlignmentEncoder, check_compatibility

    >>> transformer = SiTTransformer2DModel.from_preset("SiT-XL/2", sample_size=32)
    >>> encoder = AlignmentEncoder.from_pretrained("facebook/dinov2-base", resolution=256)
    >>> check_compatibility(encoder, transformer)  # 256 tokens on both sides

    ```
    """
    encoders = [encoders] if isinstance(encoders, AlignmentEncoder) else list(encoders)
    config = transformer.config
    side = config.sample_size // config.patch_size
    for index, encoder in enumerate(encoders):
        if encoder.num_tokens != side * side:
            raise ValueError(
                f"Alignment encoder {index} ({encoder.name}) gives {encoder.num_tokens} tokens per image, but the "
                f"transformer has {side * side} ({side}x{side}: sample_size {config.sample_size} / patch_size "
                f"{config.patch_size}). Load it with `AlignmentEncoder.from_pretrained({encoder.name!r}, "
                f"resolution=<image side>, num_tokens={side * side})`, and check that the image resolution matches "
                "the latents' sample_size."
            )
    if projector is None:
        return
    width = config.num_attention_heads * config.attention_head_dim
    if projector.config.hidden_size != width:
        raise ValueError(
            f"The projector reads hidden states of width {projector.config.hidden_size}, but the transformer's are "
            f"{width} wide: build it as REPAProjector(hidden_size={width}, ...)."
        )
    z_dims = list(projector.config.z_dims)
    embed_dims = [encoder.embed_dim for encoder in encoders]
    if z_dims != embed_dims:
        raise ValueError(
            f"The projector's z_dims {z_dims} must equal the encoders' embed_dims {embed_dims}, in the same order: "
            f"build it as REPAProjector(hidden_size, projector_dim, z_dims={embed_dims})."
        )


def _check_resolution(resolution: int) -> None:
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or resolution <= 0
        or resolution % PIXELS_PER_TOKEN
    ):
        raise ValueError(f"`resolution` must be a positive multiple of {PIXELS_PER_TOKEN}, got {resolution!r}.")


def _check_num_tokens(num_tokens: int | None) -> None:
    if num_tokens is None:
        return
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(
            f"`num_tokens` must be a positive integer, the SiT's token count (sample_size // patch_size) ** 2, got "
            f"{num_tokens!r}."
        )
    _square_side(num_tokens, "`num_tokens`")


def _unsupported_message(name: str, model_type: str) -> str:
    return (
        f"{name} is a {model_type!r} model, which AlignmentEncoder does not support. Supported transformers model "
        f"types: {', '.join(SUPPORTED_MODEL_TYPES)}."
    )


def _encoder_model(model: PreTrainedModel, family: _Family) -> PreTrainedModel:
    """The model of the family's class inside `model`: itself, the vision tower of a CLIP/SigLIP model, or the
    backbone of a task model (`Dinov2ForImageClassification.dinov2`)."""
    model_class = getattr(transformers, family.model_class)
    for candidate in (model, getattr(model, "vision_model", None), getattr(model, "base_model", None)):
        if isinstance(candidate, model_class):
            return candidate
    raise ValueError(
        f"A {model.config.model_type!r} encoder must be a `{family.model_class}` (or contain one), got "
        f"{type(model).__name__}."
    )


def _square(size: int | Sequence[int], what: str) -> int:
    """The side of a square size given as an int or an (h, w) pair."""
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"Only square {what}s are supported, got {tuple(size)}.")
    return int(size[0])


def _preprocessor_mean_std(
    name_or_path: str, hub_kwargs: dict, family: _Family
) -> tuple[Sequence[float], Sequence[float]]:
    """The checkpoint's `preprocessor_config.json` image mean/std, else the family's known constants."""
    path = cached_file(
        name_or_path,
        "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if path is None:
        return family.mean, family.std
    with open(path, encoding="utf-8") as handle:
        processor_config = json.load(handle)
    return processor_config.get("image_mean", family.mean), processor_config.get("image_std", family.std)


def _resize_position_embeddings(model: PreTrainedModel, grid_size: int, input_size: int, has_cls_token: bool) -> None:
    """Resample the absolute position table to `grid_size` once, and record the new input size everywhere."""
    embeddings = getattr(model, "embeddings", None)
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no `embeddings` module with a position table to resample.")
    num_prefix_tokens = int(has_cls_token)
    num_positions = num_prefix_tokens + grid_size * grid_size
    if isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding):  # CLIP, SigLIP
        table = embeddings.position_embedding.weight.detach().unsqueeze(0)
        table = resample_position_embeddings(table, grid_size, num_prefix_tokens)
        embeddings.position_embedding = nn.Embedding.from_pretrained(table[0], freeze=True)
        embeddings.position_ids = torch.arange(num_positions, device=table.device).expand(1, -1)
    else:  # DINOv2, ViT, ViT-MAE, I-JEPA: an nn.Parameter
        table = resample_position_embeddings(embeddings.position_embeddings.detach(), grid_size, num_prefix_tokens)
        embeddings.position_embeddings = nn.Parameter(table, requires_grad=False)
    # The size checks of the patch embeddings and the config read these.
    for module in embeddings.modules():
        if hasattr(module, "image_size"):
            module.image_size = input_size if isinstance(module.image_size, int) else (input_size, input_size)
        if hasattr(module, "num_patches"):
            module.num_patches = grid_size * grid_size
        if hasattr(module, "num_positions"):
            module.num_positions = num_positions
    model.config.image_size = input_size
