# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Training data for REPA: image datasets through `datasets`, the ADM center crop, and VAE-posterior sampling.

The official pipeline (`preprocessing/dataset_tools.py`, from EDM2) stores every image once as an ADM
center-cropped uint8 PNG and its SD-VAE posterior `(mean, std)`; each training step then re-samples the latent
([`sample_posterior`]) and feeds the same uint8 image to the alignment encoders. This module offers the same
operations on any `datasets` image dataset, and never stops on a bad image: images that cannot be used are
reported ([`SkippedImages`]) and left out.

Typical use with a `DataLoader`:

```py
>>> import os, tempfile
>>> from PIL import Image
>>> from torch.utils.data import DataLoader
>>> from diffusers_repa.data import ImageTransform, SkippedImages, load_image_dataset

>>> folder = tempfile.mkdtemp()  # one sub-folder per class
>>> for label, colour in (("cat", "orange"), ("dog", "gray")):
...     os.makedirs(os.path.join(folder, label))
...     Image.new("RGB", (320, 280), colour).save(os.path.join(folder, label, "0.png"))
>>> with open(os.path.join(folder, "dog", "1.png"), "wb") as file:  # a damaged file: skipped, not fatal
...     _ = file.write(b"not a png")
>>> dataset = load_image_dataset(train_data_dir=folder, cache_dir=tempfile.mkdtemp())
>>> transform = ImageTransform(resolution=256)
>>> loader = DataLoader(dataset.with_transform(transform), batch_size=64, collate_fn=transform.collate)
>>> skipped = SkippedImages()
>>> for batch in loader:
...     skipped.update(batch["skipped"])
>>> batch["pixel_values"].shape, batch["class_labels"].tolist(), skipped.total
(torch.Size([2, 3, 256, 256]), [0, 1], 1)

```

With `streaming=True`, apply the transform with `dataset.map(transform, batched=True)` instead of `with_transform`.
"""

import io
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

if TYPE_CHECKING:
    import datasets

# Stable Diffusion VAE latents are scaled by this before training (official `latents_scale`, all 4 channels).
SD_VAE_LATENT_SCALE = 0.18215
# Images whose short side is below `resolution / DEFAULT_MAX_UPSCALE` are skipped rather than blown up.
DEFAULT_MAX_UPSCALE = 8.0
# Pillow modes that hold 16-bit samples; Pillow's own conversion clips them to 255, so they are rescaled here.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageSkipped(Exception):
    """Raised inside the data pipeline for an image that cannot be used; `reason` is `"unreadable"` or `"too_small"`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SkippedImages:
    """
    Counts of the images left out of training, by reason, for logging.

    Reasons: `"unreadable"` (corrupt, truncated or undecodable files, unsupported modes) and `"too_small"` (short side
    below `resolution / max_upscale`). The first `max_examples` are kept with their file name and error.

    Example:

    ```py
    >>> from diffusers_repa.data import SkippedImages, preprocess_image

    >>> skipped = SkippedImages()
    >>> preprocess_image(b"not an image", resolution=256, skipped=skipped, identifier="bad.png") is None
    True
    >>> skipped.as_dict()
    {'skipped_images/unreadable': 1}

    ```
    """

    counts: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)
    max_examples: int = 20

    @property
    def total(self) -> int:
        """Number of skipped images."""
        return sum(self.counts.values())

    def record(self, reason: str, identifier: str | None = None, detail: str = "") -> None:
        """Count one skipped image."""
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((identifier or "<unnamed>", f"{reason}: {detail}" if detail else reason))

    def update(self, skipped: Iterable[tuple[str, str, str]]) -> None:
        """Add the `(reason, identifier, detail)` records of a collated batch (`batch["skipped"]`)."""
        for reason, identifier, detail in skipped:
            self.record(reason, identifier, detail)

    def as_dict(self) -> dict[str, int]:
        """`{"skipped_images/<reason>": count}`, ready for `accelerator.log`."""
        return {f"skipped_images/{reason}": count for reason, count in sorted(self.counts.items())}

    def __str__(self) -> str:
        if not self.total:
            return "no images skipped"
        by_reason = ", ".join(f"{count} {reason}" for reason, count in sorted(self.counts.items()))
        shown = "; ".join(f"{name} ({why})" for name, why in self.examples[:5])
        return f"{self.total} images skipped ({by_reason}), e.g. {shown}"


def adm_center_crop(pil_image: Image.Image, resolution: int) -> Image.Image:
    r"""
    The ADM / EDM2 `center-crop-dhariwal` crop used to build REPA's ImageNet data.

    While the short side is at least `2 * resolution`, halve the image with BOX filtering; then resize it with
    BICUBIC so that the short side is `resolution` (sizes rounded to nearest); then take the centered square.

    Args:
        pil_image (`PIL.Image.Image`): Any size; the mode is kept.
        resolution (`int`): Side of the output square.

    Returns:
        `PIL.Image.Image` of size `(resolution, resolution)`.

    Example:

    ```py
    >>> from PIL import Image
    >>> from diffusers_repa.data import adm_center_crop

    >>> adm_center_crop(Image.new("RGB", (1200, 800)), 256).size
    (256, 256)

    ```
    """
    _check_resolution(resolution)
    while min(*pil_image.size) >= 2 * resolution:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = resolution / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    left = (pil_image.size[0] - resolution) // 2
    top = (pil_image.size[1] - resolution) // 2
    return pil_image.crop((left, top, left + resolution, top + resolution))


def _check_resolution(resolution: int) -> None:
    # 0 or a negative side halved the image down to 0 px, and Pillow then failed on every image.
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 1:
        raise ValueError(f"`resolution` must be a positive integer (the output side), got {resolution!r}.")


def to_rgb(pil_image: Image.Image) -> Image.Image:
    """
    Convert any Pillow mode to 8-bit RGB: grayscale is replicated, CMYK/YCbCr/palette images are converted by
    Pillow, alpha is dropped (as `Image.convert("RGB")` does), and 16-bit images are rescaled to 8 bits (Pillow alone
    would clip them at 255).
    """
    if pil_image.mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(pil_image).astype(np.float64)
        pil_image = Image.fromarray(np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8))
    elif pil_image.mode == "P" and "transparency" in pil_image.info:
        pil_image = pil_image.convert("RGBA")
    return pil_image if pil_image.mode == "RGB" else pil_image.convert("RGB")


def load_rgb_image(image: Any) -> Image.Image:
    """
    Decode an image given as a `PIL.Image`, encoded bytes, a file path, or a `datasets` `{"bytes", "path"}` dict, fully
    (truncated files fail here, not later), and convert it to RGB with [`to_rgb`].

    Raises:
        [`ImageSkipped`] with reason `"unreadable"` for anything that cannot be decoded or converted.
    """
    try:
        if isinstance(image, Image.Image):
            image.load()
            return to_rgb(image)
        if isinstance(image, Mapping):
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (bytes, bytearray)):
            image = io.BytesIO(image)
        elif not isinstance(image, (str, os.PathLike)):
            raise TypeError(f"expected a PIL image, bytes or a path, got {type(image).__name__}")
        with Image.open(image) as opened:
            opened.load()
            return to_rgb(opened)
    # Pillow raises many types on damaged data (OSError, SyntaxError, struct.error, IndexError, ...): one bad file
    # must never stop a training run, so every decoding failure is reported as a skipped image.
    except Exception as error:  # noqa: BLE001
        raise ImageSkipped("unreadable", f"{type(error).__name__}: {error}") from error


def _preprocess(image: Any, resolution: int, max_upscale: float | None) -> torch.Tensor:
    pil_image = load_rgb_image(image)
    short_side = min(pil_image.size)
    if short_side == 0 or (max_upscale is not None and short_side * max_upscale < resolution):
        raise ImageSkipped(
            "too_small", f"{pil_image.size[0]}x{pil_image.size[1]} needs more than {max_upscale}x upscaling"
        )
    if pil_image.size != (resolution, resolution):  # a prepared crop is its own ADM crop: no resize and crop copies
        pil_image = adm_center_crop(pil_image, resolution)
    return torch.from_numpy(np.array(pil_image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def preprocess_image(
    image: Any,
    resolution: int,
    max_upscale: float | None = DEFAULT_MAX_UPSCALE,
    skipped: SkippedImages | None = None,
    identifier: str | None = None,
) -> torch.Tensor | None:
    r"""
    Turn one image into the uint8 training tensor: decode, convert to RGB, ADM center crop.

    Args:
        image: A `PIL.Image`, encoded bytes, a path, or a `datasets` `{"bytes", "path"}` dict.
        resolution (`int`): Side R of the output.
        max_upscale (`float`, *optional*, defaults to 8): Skip images whose short side is below
            `resolution / max_upscale` (32 px at 256, 64 px at 512); `None` upscales everything (the official
            ImageNet preprocessing has no limit).
        skipped ([`SkippedImages`], *optional*): Where a skipped image is counted.
        identifier (`str`, *optional*): Name recorded for a skipped image (e.g. its path).

    Returns:
        `torch.Tensor` of shape `(3, R, R)`, dtype uint8, or `None` when the image must be skipped.

    Example:

    ```py
    >>> from PIL import Image
    >>> from diffusers_repa.data import preprocess_image

    >>> preprocess_image(Image.new("CMYK", (300, 400)), resolution=64).shape
    torch.Size([3, 64, 64])

    ```
    """
    _check_resolution(resolution)
    try:
        return _preprocess(image, resolution, max_upscale)
    except ImageSkipped as error:
        if skipped is not None:
            skipped.record(error.reason, identifier or _image_name(image), error.detail)
        return None


def _image_name(image: Any) -> str | None:
    if isinstance(image, Mapping):
        image = image.get("path")
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


class ImageTransform:
    r"""
    A `datasets` transform (`dataset.with_transform(transform)`) and `DataLoader` collate function
    (`collate_fn=transform.collate`) for class-conditional image datasets.

    For a streaming dataset use `dataset.map(transform, batched=True)`. The transform maps each example to
    `pixel_values` (uint8 `(3, R, R)`, or `None`), `class_labels` and a `skipped` record; `collate` stacks the usable
    examples and passes the skip records on, so they reach the main process even from DataLoader workers (feed them
    to [`SkippedImages.update`]). A batch can therefore be smaller than the batch
    size, or empty, when images were skipped.

    Args:
        resolution (`int`): Side R of the training images.
        image_column (`str`, defaults to `"image"`): Column with the images.
        label_column (`str`, defaults to `"label"`): Column with integer class ids.
        max_upscale (`float`, *optional*, defaults to 8): See [`preprocess_image`].
    """

    def __init__(
        self,
        resolution: int,
        image_column: str = "image",
        label_column: str = "label",
        max_upscale: float | None = DEFAULT_MAX_UPSCALE,
    ):
        _check_resolution(resolution)
        self.resolution = resolution
        self.image_column = image_column
        self.label_column = label_column
        self.max_upscale = max_upscale

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for column in (self.image_column, self.label_column):
            if column not in batch:
                raise KeyError(f"The dataset has no column {column!r} (columns: {sorted(batch)}).")
        pixel_values, skipped = [], []
        for image in batch[self.image_column]:
            try:
                pixel_values.append(_preprocess(image, self.resolution, self.max_upscale))
                skipped.append(None)
            except ImageSkipped as error:
                pixel_values.append(None)
                skipped.append((error.reason, _image_name(image) or "<bytes>", error.detail))
        return {"pixel_values": pixel_values, "class_labels": list(batch[self.label_column]), "skipped": skipped}

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """
        Stack the usable examples.

        Returns:
            `dict` with `pixel_values` (`(B, 3, R, R)` uint8), `class_labels` (`(B,)` int64) and `skipped` (a list of
            `(reason, identifier, detail)` for the examples left out).
        """
        kept = [example for example in examples if example["pixel_values"] is not None]
        if kept:
            pixel_values = torch.stack([example["pixel_values"] for example in kept])
        else:
            pixel_values = torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.uint8)
        return {
            "pixel_values": pixel_values,
            "class_labels": torch.tensor([int(example["class_labels"]) for example in kept], dtype=torch.long),
            "skipped": [example["skipped"] for example in examples if example["pixel_values"] is None],
        }


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
    **load_dataset_kwargs: Any,
) -> "datasets.Dataset | datasets.IterableDataset":
    r"""
    Load a class-conditional image dataset with `datasets`, with images left undecoded.

    The image column is cast to `datasets.Image(decode=False)`, so examples carry `{"bytes", "path"}` and decoding
    happens in [`preprocess_image`] / [`ImageTransform`], where a corrupt file is skipped instead of raising inside
    `datasets`.

    Args:
        dataset_name (`str`, *optional*): A Hub dataset id or local dataset folder for `load_dataset`, e.g.
            `"ILSVRC/imagenet-1k"` (gated: log in first).
        train_data_dir (`str`, *optional*): A folder with one sub-folder per class, loaded with `"imagefolder"`;
            labels are the class folders' indices in sorted order (the official ImageNet labelling).
        image_column (`str`, defaults to `"image"`), label_column (`str`, defaults to `"label"`): Column names.
        split (`str`, defaults to `"train"`): Split to load.
        streaming (`bool`, defaults to `False`): Return an `IterableDataset` that reads as it goes.
        cache_dir (`str`, *optional*): `datasets` cache folder.
        load_dataset_kwargs: Passed on to `datasets.load_dataset` (e.g. `revision`, `token`).

    Returns:
        `datasets.Dataset`, or `datasets.IterableDataset` when `streaming=True`.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError("`load_image_dataset` needs `datasets`: pip install 'diffusers-repa[training]'.") from error
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("Pass exactly one of `dataset_name` (Hub id or dataset folder) and `train_data_dir`.")
    from datasets.data_files import EmptyDatasetError

    if dataset_name is not None:
        try:
            dataset = datasets.load_dataset(
                dataset_name, split=split, streaming=streaming, cache_dir=cache_dir, **load_dataset_kwargs
            )
        except EmptyDatasetError:
            raise ValueError(
                f"The dataset folder {dataset_name!r} holds no data files: check the path (for a folder of images in "
                "class sub-folders, pass it as `train_data_dir`)."
            ) from None
    else:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"`train_data_dir` {train_data_dir!r} is not a folder.")
        if not _holds_an_image_file(train_data_dir):
            raise ValueError(
                f"`train_data_dir` {train_data_dir!r} holds no image files: put the images in one sub-folder per "
                f"class, e.g. {os.path.join(train_data_dir, 'tench', '0001.jpg')}."
            )
        dataset = datasets.load_dataset(
            "imagefolder",
            data_dir=train_data_dir,
            split=split,
            streaming=streaming,
            cache_dir=cache_dir,
            **load_dataset_kwargs,
        )
    features = dataset.features or {}
    for column, option in ((image_column, "image_column"), (label_column, "label_column")):
        if features and column not in features:
            raise ValueError(
                f"The dataset has no column {column!r} (columns: {sorted(features)}): set `{option}` to the right one."
            )
    if isinstance(features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _holds_an_image_file(folder: str) -> bool:
    """Whether `folder` or a sub-folder holds a file with an image extension Pillow knows (stops at the first)."""
    Image.init()
    extensions = set(Image.registered_extensions())
    for _, _, files in os.walk(folder):
        if any(os.path.splitext(name)[1].lower() in extensions for name in files):
            return True
    return False


def sample_posterior(
    moments: torch.Tensor,
    latent_scale: float | torch.Tensor = SD_VAE_LATENT_SCALE,
    latent_shift: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""
    Draw training latents from stored VAE posteriors: z = (mean + std * N(0, 1)) * latent_scale + latent_shift.

    This is the official `sample_posterior`: the posterior is stored once as `cat([mean, std], dim=1)` (note: the
    standard deviation, not diffusers' log-variance) and re-sampled at every step.

    Args:
        moments (`torch.Tensor` of shape `(batch_size, 2 * C, h, w)`): Posterior mean and std, concatenated on the
            channel axis (`(B, 8, 32, 32)` for 256 px SD-VAE latents).
        latent_scale (`float`, or `C` per-channel values as a list or tensor, defaults to 0.18215): Scale.
        latent_shift (`float`, or `C` per-channel values as a list or tensor, defaults to 0): Shift, added after
            scaling.
        generator (`torch.Generator`, *optional*): For the noise; the global generator of `moments.device` if `None`.

    Returns:
        `torch.Tensor` of shape `(batch_size, C, h, w)`, in the dtype of `moments`.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.data import sample_posterior

    >>> moments = torch.cat([torch.zeros(2, 4, 32, 32), torch.ones(2, 4, 32, 32)], dim=1)
    >>> sample_posterior(moments, generator=torch.manual_seed(0)).shape
    torch.Size([2, 4, 32, 32])

    ```
    """
    if moments.ndim != 4 or moments.shape[1] % 2:
        raise ValueError(
            f"`moments` must have shape (batch, 2*C, h, w) holding cat([mean, std]), got {tuple(moments.shape)}."
        )
    mean, std = moments.chunk(2, dim=1)
    latent_scale = _per_channel(latent_scale, "latent_scale", mean)
    latent_shift = _per_channel(latent_shift, "latent_shift", mean)
    noise = randn_tensor(mean.shape, generator=generator, device=moments.device, dtype=moments.dtype)
    return (mean + std * noise) * latent_scale + latent_shift


def _per_channel(value: float | Sequence[float] | torch.Tensor, name: str, mean: torch.Tensor) -> float | torch.Tensor:
    """A number as it is; one value per channel (list, `(C,)` or `(1, C, 1, 1)` tensor) as a `(1, C, 1, 1)` tensor on
    the latents' device and dtype. A `(C,)` tensor used to broadcast over the width, a list raised a TypeError."""
    if isinstance(value, numbers.Number):
        return value
    values = torch.as_tensor(value, dtype=mean.dtype, device=mean.device)
    channels = mean.shape[1]
    if values.numel() == 1:
        return values.reshape(())
    per_channel = values.shape == (channels,) or (values.ndim in (3, 4) and values.shape[-3:] == (channels, 1, 1))
    if not per_channel or values.numel() != channels:
        raise ValueError(
            f"`{name}` must be a number or one value per latent channel ({channels}), got shape {tuple(values.shape)}."
        )
    return values.reshape(1, channels, 1, 1)
