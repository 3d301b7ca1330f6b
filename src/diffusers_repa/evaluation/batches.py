# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
r"""
The ADM evaluator's `.npz` batches, both ways, a reference-batch builder, and [`evaluate_samples`].

- **Sample batch**: `arr_0`, uint8 `(N, H, W, 3)` (what `python -m diffusers_repa.sample npz` writes), optionally
  `labels`.
- **Reference batch**: `arr_0` images plus the FID / sFID statistics `mu` `(2048,)`, `sigma` `(2048, 2048)`, `mu_s`
  `(2023,)`, `sigma_s` `(2023, 2023)`, like `VIRTUAL_imagenet256_labeled.npz`. The ADM evaluator uses stored statistics
  for FID / sFID when present and the images for precision / recall. Our builder also stores `pool_features` (the
  images' `(N, 2048)` pool features) and `network` (which network made them), so an evaluation against it runs the
  Inception on the samples only; the ADM evaluator ignores these extra keys.

```py
>>> from diffusers_repa.evaluation import build_reference_batch, evaluate_samples

>>> build_reference_batch("training/data/fashion-mnist", "fmnist-test-ref.npz", resolution=32, split="test")
>>> evaluate_samples("samples.npz", "fmnist-test-ref.npz")  # {"fid": ..., "sfid": ..., "precision": ..., ...}
```
"""

import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..utils import atomic_write
from .inception import (
    IS_UNAVAILABLE_REASON,
    POOL_DIM,
    RESIZE_MODES,
    SPATIAL_DIM,
    FeatureNetwork,
    FIDInceptionV3,
    check_image_layout,
    check_images,
    compute_activations,
    load_inception,
)
from .metrics import DISTANCE_DTYPES, feature_statistics, frechet_distance, inception_score, precision_recall

IMAGES_KEY = "arr_0"
STATISTICS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_npz(path: str | os.PathLike) -> list[str]:
    """Names of the arrays in an `.npz`, or one clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{os.fspath(path)!r} is not an .npz archive (save with np.savez(path, arr_0=images)).")
    with zipfile.ZipFile(path) as archive:
        return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]


class NpzImageReader:
    r"""
    Reads `arr_0` of an ADM `.npz` in batches without loading it whole (50k 256px images are 9.8 GB), after checking
    from the `.npy` header that it is uint8 `(N, H, W, 3)`.

    Args:
        path (`str`): The `.npz` file (plain or `np.savez_compressed`).
        key (`str`, defaults to `"arr_0"`): The array to read.
    """

    def __init__(self, path: str | os.PathLike, key: str = IMAGES_KEY):
        self.path = os.fspath(path)
        self.key = key
        names = _check_npz(self.path)
        if key not in names:
            raise ValueError(
                f"{self.path!r} has no `{key}` array (it holds {names}); an ADM batch keeps its uint8 (N, H, W, 3) "
                f"images in `{key}`."
            )
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{key}.npy") as file:
            self.shape, fortran_order, self.dtype, self._streamable = self._read_header(file)
        check_image_layout(self.shape, self.dtype, f"`{key}` of {self.path!r}")
        self._streamable = self._streamable and not fortran_order

    @staticmethod
    def _read_header(file) -> tuple[tuple, bool, np.dtype, bool]:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
        else:  # format 3.0 (utf-8 header): read the whole array instead of streaming
            return (), False, np.dtype("O"), False
        return tuple(shape), fortran, dtype, True

    def __len__(self) -> int:
        return int(self.shape[0])

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield uint8 `(B, H, W, 3)` batches in order."""
        if not self._streamable:
            images = np.load(self.path)[self.key]
            for start in range(0, len(images), batch_size):
                yield images[start : start + batch_size]
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as file:
            self._read_header(file)
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                data = file.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise ValueError(f"{self.path!r} is truncated: `{self.key}` ends before image {start + count}.")
                yield np.frombuffer(bytearray(data), dtype=self.dtype).reshape((count, *self.shape[1:]))  # writable


@dataclass
class ReferenceBatch:
    r"""
    An ADM reference batch.

    Args:
        images (`np.ndarray`): uint8 `(N, H, W, 3)` (`arr_0`).
        mu, sigma (`np.ndarray`, *optional*): Pool-feature statistics `(2048,)`, `(2048, 2048)`.
        mu_s, sigma_s (`np.ndarray`, *optional*): Spatial-feature statistics `(2023,)`, `(2023, 2023)`.
        pool_features (`np.ndarray`, *optional*): `(N, 2048)` pool features of `images` (our cache; not ADM).
        network (`str`, *optional*): `feature_id` of the network that made the statistics (with `"; resize torch"`
            appended when made with that resize, see [`features_name`]); `None` for ADM files (made with the TF
            Inception).
        labels (`np.ndarray`, *optional*): Class labels of the images.
    """

    images: np.ndarray
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool_features: np.ndarray | None = None
    network: str | None = None
    labels: np.ndarray | None = None

    @property
    def has_statistics(self) -> bool:
        return self.mu is not None

    def __len__(self) -> int:
        return len(self.images)


def check_statistics(
    mu: Any, sigma: Any, mu_s: Any, sigma_s: Any, dims: tuple[int, int] | None = None, what: str = "reference"
) -> None:
    r"""
    Raise one clear `ValueError` unless the four statistics are all present or all absent, finite, and shaped
    `mu (D,)`, `sigma (D, D)`, `mu_s (S,)`, `sigma_s (S, S)`, with `(D, S) == dims` when `dims` is given
    (`(2048, 2023)` for the Inception).
    """
    values = dict(zip(STATISTICS_KEYS, (mu, sigma, mu_s, sigma_s)))
    present = [key for key, value in values.items() if value is not None]
    if not present:
        return
    if len(present) != len(STATISTICS_KEYS):
        missing = [key for key in STATISTICS_KEYS if key not in present]
        raise ValueError(f"The {what} has statistics {present} but lacks {missing}: store all four or none.")
    shapes = {key: np.shape(value) for key, value in values.items()}
    pool, spatial = shapes["mu"], shapes["mu_s"]
    consistent = (
        len(pool) == 1
        and len(spatial) == 1
        and shapes["sigma"] == (pool[0], pool[0])
        and shapes["sigma_s"] == (spatial[0], spatial[0])
    )
    if not consistent or (dims is not None and (pool[0], spatial[0]) != tuple(dims)):
        expected = f"{dims[0]} / {dims[1]}" if dims is not None else "D / S"
        raise ValueError(
            f"Mismatched {what} statistics: shapes {shapes}; expected mu ({expected.split(' / ')[0]},), sigma "
            f"(D, D), mu_s ({expected.split(' / ')[1]},), sigma_s (S, S) with D / S = {expected} (pool / spatial "
            "features of the network that evaluates)."
        )
    for key, value in values.items():
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ValueError(f"The {what} statistic `{key}` contains NaN or inf.")


def _atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` into `path` (its folder made if needed) through [`~diffusers_repa.utils.atomic_write`]."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as file:  # a file object: np.savez does not append ".npz"
        np.savez(file, **arrays)


def _to_numpy_images(images: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    check_images(images, what)
    return images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)


def save_sample_batch(path: str | os.PathLike, images: np.ndarray | torch.Tensor, labels: Any = None) -> None:
    r"""
    Write an ADM sample batch: `arr_0` uint8 `(N, H, W, 3)`, plus `labels` when given (the layout of
    `python -m diffusers_repa.sample npz`). The file is written whole or not at all.

    Example:

    ```py
    >>> import numpy as np, os, tempfile
    >>> from diffusers_repa.evaluation import load_sample_batch, save_sample_batch

    >>> path = os.path.join(tempfile.mkdtemp(), "samples.npz")
    >>> save_sample_batch(path, np.zeros((4, 32, 32, 3), np.uint8))
    >>> load_sample_batch(path).shape
    (4, 32, 32, 3)
    ```
    """
    arrays = {IMAGES_KEY: _to_numpy_images(images, "images")}
    if labels is not None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (len(arrays[IMAGES_KEY]),):
            raise ValueError(f"labels must have shape ({len(arrays[IMAGES_KEY])},), got {labels.shape}.")
        arrays["labels"] = labels
    _atomic_savez(path, arrays)


def load_sample_batch(path: str | os.PathLike) -> np.ndarray:
    r"""
    Read the images of an ADM sample batch, checking first (from the header) that `arr_0` is uint8 `(N, H, W, 3)`.

    Returns:
        `np.ndarray` uint8 `(N, H, W, 3)`.
    """
    NpzImageReader(path)
    with np.load(path, allow_pickle=False) as archive:
        return archive[IMAGES_KEY]


def save_reference_batch(
    path: str | os.PathLike,
    images: np.ndarray | torch.Tensor,
    mu: Any = None,
    sigma: Any = None,
    mu_s: Any = None,
    sigma_s: Any = None,
    *,
    pool_features: Any = None,
    network: str | None = None,
    labels: Any = None,
) -> None:
    r"""
    Write an ADM reference batch: `arr_0` images and, when given, `mu`, `sigma`, `mu_s`, `sigma_s` (float64), plus our
    cache keys `pool_features` `(N, D)` float32 and `network` (a string). All four statistics or none; shapes are
    checked ([`check_statistics`]; `(2048, 2023)` unless `network` names another network).
    """
    arrays = {IMAGES_KEY: _to_numpy_images(images, "images")}
    stats = [None if value is None else _plain(value).astype(np.float64) for value in (mu, sigma, mu_s, sigma_s)]
    check_statistics(*stats, dims=_expected_dims(network))
    arrays.update({key: value for key, value in zip(STATISTICS_KEYS, stats) if value is not None})
    if pool_features is not None:
        pool_features = _plain(pool_features).astype(np.float32)
        if pool_features.ndim != 2 or len(pool_features) != len(arrays[IMAGES_KEY]):
            raise ValueError(
                f"pool_features must be (N, D) with N = {len(arrays[IMAGES_KEY])} images, got {pool_features.shape}."
            )
        arrays["pool_features"] = pool_features
    if network is not None:
        arrays["network"] = np.array(str(network))
    if labels is not None:
        arrays["labels"] = _plain(labels)
    _atomic_savez(path, arrays)


def _plain(values: Any) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _expected_dims(network: str | None) -> tuple[int, int] | None:
    """ADM files (no `network`) and Inception-made files must hold 2048 / 2023 statistics."""
    if network is None or str(network).startswith("inception-2015-12-05"):
        return POOL_DIM, SPATIAL_DIM
    return None


def load_reference_batch(path: str | os.PathLike) -> ReferenceBatch:
    r"""
    Read an ADM reference batch (e.g. `VIRTUAL_imagenet256_labeled.npz`, or one from [`build_reference_batch`]).

    Checks, before returning: `arr_0` is uint8 `(N, H, W, 3)`; the statistics are all four or none, finite and shaped
    2048 / 2023 (for ADM files and Inception-made ones).

    Returns:
        [`ReferenceBatch`].
    """
    NpzImageReader(path)
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)

        def get(key: str) -> np.ndarray | None:
            return archive[key] if key in keys else None

        network = get("network")
        reference = ReferenceBatch(
            images=archive[IMAGES_KEY],
            **{key: get(key) for key in STATISTICS_KEYS},
            pool_features=get("pool_features"),
            network=str(network) if network is not None else None,
            labels=get("labels"),
        )
    check_statistics(
        reference.mu, reference.sigma, reference.mu_s, reference.sigma_s, dims=_expected_dims(reference.network),
        what=f"reference batch {os.fspath(path)!r}",
    )  # fmt: skip
    if reference.pool_features is not None and (
        reference.pool_features.ndim != 2 or len(reference.pool_features) != len(reference.images)
    ):
        raise ValueError(f"`pool_features` of {os.fspath(path)!r} does not match its {len(reference.images)} images.")
    return reference


def _image_column(features: dict, image_column: str | None) -> str:
    import datasets

    if image_column is not None:
        if image_column not in features:
            raise ValueError(f"The dataset has no column {image_column!r} (columns: {sorted(features)}).")
        return image_column
    if "image" in features:
        return "image"
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if len(image_columns) != 1:
        raise ValueError(f"Cannot tell the image column among {sorted(features)}: pass `image_column`.")
    return image_columns[0]


def load_reference_images(
    source: str,
    resolution: int,
    split: str = "train",
    num_images: int | None = None,
    image_column: str | None = None,
    seed: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    r"""
    Images of a `datasets` dataset (local dataset folder such as `training/data/fashion-mnist`, a Hub id, or a folder
    of image files), decoded to RGB and ADM-center-cropped to `resolution` with
    [`diffusers_repa.data.preprocess_image`].

    Images that cannot be decoded, or would need more than 8x upscaling, are skipped with a warning.

    Returns:
        `(images, labels)`: uint8 `(N, resolution, resolution, 3)` and int64 `(N,)` (or `None` without a `label`
        column).
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError("Building a reference batch needs `datasets`: pip install 'diffusers-repa[eval]'.") from error
    from tqdm.auto import tqdm

    from ..data import SkippedImages, preprocess_image

    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}.")
    try:
        dataset = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"{source!r} has no split {split!r}: {error}") from error
        raise
    column = _image_column(dataset.features, image_column)
    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    indices = np.arange(len(dataset))
    if seed is not None:
        indices = np.random.default_rng(seed).permutation(indices)
    if num_images is not None:
        if num_images < 1 or num_images > len(dataset):
            raise ValueError(f"num_images must be in [1, {len(dataset)}] for {source!r} split {split!r}.")
        indices = indices[:num_images]
    has_labels = "label" in dataset.features
    images, labels = [], []
    skipped = SkippedImages()
    for index in tqdm(indices.tolist(), desc="Reference images", disable=not progress, leave=False):
        example = dataset[index]
        pixels = preprocess_image(example[column], resolution, skipped=skipped, identifier=f"{split}[{index}]")
        if pixels is not None:
            images.append(pixels.permute(1, 2, 0).numpy())
            if has_labels:
                labels.append(int(example["label"]))
    if skipped.total:
        warnings.warn(f"Reference batch from {source!r}: {skipped}")
    if not images:
        raise ValueError(f"No usable images in {source!r} split {split!r}.")
    return np.stack(images), (np.asarray(labels, dtype=np.int64) if has_labels else None)


def build_reference_batch(
    source: str | np.ndarray,
    output_path: str | os.PathLike | None = None,
    resolution: int | None = None,
    split: str = "train",
    num_images: int | None = None,
    image_column: str | None = None,
    seed: int | None = None,
    network: FeatureNetwork | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    resize: str = "tf1",
    cache_dir: str | None = None,
) -> ReferenceBatch:
    r"""
    Build an ADM reference batch from a dataset or image folder: ADM center crop to `resolution`, Inception
    activations, statistics; saved to `output_path` (images, `mu`, `sigma`, `mu_s`, `sigma_s`, `pool_features`,
    `network`), so later evaluations against it run the network on the samples only.

    Args:
        source: A local dataset folder (e.g. `"training/data/fashion-mnist"`), a Hub dataset id, a folder of image
            files, or a uint8 `(N, H, W, 3)` array of images already at the evaluation resolution.
        output_path (`str`, *optional*): Where to write the `.npz`.
        resolution (`int`): Side of the center crop; use the resolution of the model's samples. Ignored for arrays.
        split (`str`, defaults to `"train"`): Dataset split (`"test"` for a held-out reference).
        num_images (`int`, *optional*): Use only this many images (the first ones, or a random subset with `seed`).
        image_column (`str`, *optional*): Defaults to `"image"` or the only image column.
        seed (`int`, *optional*): Shuffle before taking `num_images`.
        network ([`FeatureNetwork`], *optional*): Defaults to [`load_inception`]`(device)`.
        batch_size, device, progress, resize: As in [`compute_activations`].
        cache_dir (`str`, *optional*): `datasets` cache folder.

    Returns:
        [`ReferenceBatch`].

    Example:

    ```py
    >>> from diffusers_repa.evaluation import build_reference_batch

    >>> reference = build_reference_batch("training/data/fashion-mnist", "fmnist-test.npz", resolution=32, split="test")
    >>> reference.images.shape, reference.mu.shape, reference.mu_s.shape
    ((1000, 32, 32, 3), (2048,), (2023,))
    ```
    """
    labels = None
    if isinstance(source, (np.ndarray, torch.Tensor)):
        images = _to_numpy_images(source, "source images")
    else:
        if resolution is None:
            raise ValueError("Pass `resolution` (the side of the model's samples, e.g. 32 or 256).")
        images, labels = load_reference_images(
            source, resolution, split, num_images, image_column, seed, cache_dir=cache_dir, progress=progress
        )
    if len(images) < 2:
        raise ValueError(f"A reference batch needs at least 2 images for its statistics, got {len(images)}.")
    network = network if network is not None else load_inception(device)
    activations = compute_activations(images, network, batch_size, device, progress, resize)
    mu, sigma = feature_statistics(activations.pool)
    mu_s, sigma_s = feature_statistics(activations.spatial)
    made_by = features_name(network, resize)
    reference = ReferenceBatch(images, mu, sigma, mu_s, sigma_s, activations.pool, made_by, labels)
    if output_path is not None:
        save_reference_batch(
            output_path, images, mu, sigma, mu_s, sigma_s,
            pool_features=activations.pool, network=made_by, labels=labels,
        )  # fmt: skip
    return reference


def _sample_shape(samples: Any) -> tuple[int, ...]:
    """`(N, H, W, 3)` of the samples, checked (from the `.npy` header for a path)."""
    if isinstance(samples, (str, os.PathLike)):
        return tuple(NpzImageReader(samples).shape)
    check_images(samples, "samples")
    return tuple(samples.shape)


def features_name(network: FeatureNetwork, resize: str = "tf1") -> str:
    """What a reference batch records as its `network`: the `feature_id`, and the resize mode unless it is `"tf1"`."""
    return network.feature_id if resize == "tf1" else f"{network.feature_id}; resize {resize}"


def statistics_match(reference: ReferenceBatch, network: FeatureNetwork, resize: str = "tf1") -> bool:
    """
    Whether `reference`'s stored statistics were made with the features `network` gives with `resize`: its recorded
    `network` is [`features_name`]`(network, resize)`, or it records none (an ADM file, made with the TF Inception and
    its resize) and `network` is the Inception with `resize="tf1"`.
    """
    if not reference.has_statistics:
        return False
    if reference.network is not None:
        return reference.network == features_name(network, resize)
    return isinstance(network, FIDInceptionV3) and resize == "tf1"


def cached_pool_features(reference: ReferenceBatch, network: FeatureNetwork) -> np.ndarray | None:
    """`reference.pool_features` when it holds one `network.pool_dim`-wide row per image, else `None`."""
    cached = reference.pool_features
    return cached if cached is not None and cached.shape == (len(reference), network.pool_dim) else None


def evaluate_samples(
    samples: np.ndarray | torch.Tensor | str,
    reference: ReferenceBatch | np.ndarray | torch.Tensor | str,
    network: FeatureNetwork | None = None,
    batch_size: int = 64,
    k: int = 3,
    device: str | torch.device | None = None,
    progress: bool = True,
    resize: str = "tf1",
    distance_dtype: str = "float32",
    split_size: int = 5000,
) -> dict[str, Any]:
    r"""
    The ADM evaluator on a sample batch against a reference batch: FID, sFID, Inception Score, precision, recall.

    FID / sFID use the reference's stored statistics when it has them and they were made with the same network and
    `resize` ([`statistics_match`]; ADM files, which name none, count as made with the Inception and `"tf1"`);
    otherwise they are computed from its images. Precision and recall compare the samples' pool features with the
    reference images' (stored `pool_features` when valid).

    Bad options or inputs raise a `ValueError` before any image goes through the network; samples at another
    resolution than the reference images give a warning (FID would then measure the resolution too).

    Args:
        samples: uint8 `(N, H, W, 3)` array or tensor, or the path of an ADM sample `.npz` (read in batches).
        reference: A [`ReferenceBatch`], the path of a reference `.npz`, or uint8 reference images.
        network ([`FeatureNetwork`], *optional*): Defaults to [`load_inception`]`(device)`.
        batch_size (`int`, defaults to 64): Images per forward pass.
        k (`int`, defaults to 3): Precision / recall neighbourhood (>= 1).
        device: Where the network and the distance blocks run; defaults to CUDA when available.
        progress (`bool`, defaults to `True`): tqdm bars.
        resize (`str`, defaults to `"tf1"`): See [`compute_activations`].
        distance_dtype (`str`, defaults to `"float32"`): See [`precision_recall`].
        split_size (`int`, defaults to 5000): See [`inception_score`].

    Returns:
        `dict` with `fid`, `sfid`, `inception_score` (`None` when the network has no logits, with the reason in
        `inception_score_note`), `precision`, `recall`, `num_samples`, `num_reference`, `network`,
        `reference_statistics` (`"stored"` or `"computed"`), `k` and `resize`.

    Example:

    ```py
    >>> from diffusers_repa.evaluation import evaluate_samples

    >>> metrics = evaluate_samples("samples.npz", "fmnist-test.npz")
    >>> print(f"FID {metrics['fid']:.2f}  sFID {metrics['sfid']:.2f}  precision {metrics['precision']:.3f}")
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the ADM uses 3), got {k!r}.")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")
    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}.")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}.")
    sample_shape = _sample_shape(samples)
    num_samples = sample_shape[0]
    if isinstance(reference, (str, os.PathLike)):
        reference = load_reference_batch(reference)
    elif isinstance(reference, (np.ndarray, torch.Tensor)):
        reference = ReferenceBatch(images=_to_numpy_images(reference, "reference images"))
    elif not isinstance(reference, ReferenceBatch):
        raise TypeError(f"reference must be a path, a ReferenceBatch or images, got {type(reference).__name__}.")
    else:
        check_images(reference.images, "reference images")
    for count, what in ((num_samples, "samples"), (len(reference), "reference images")):
        if count < k + 1 or count < 2:
            raise ValueError(f"Evaluation needs at least {max(k + 1, 2)} {what} (k = {k}), got {count}.")
    if sample_shape[1:3] != reference.images.shape[1:3]:
        warnings.warn(
            f"The samples are {sample_shape[1]}x{sample_shape[2]} but the reference images are "
            f"{reference.images.shape[1]}x{reference.images.shape[2]}: both are resized to the network's input, but "
            "FID against a reference at another resolution measures the resolution too. Build the reference at the "
            "samples' resolution (ADM: resize to the model's resolution first)."
        )
    network = network if network is not None else load_inception(device)
    made_by = reference.network
    use_stored = statistics_match(reference, network, resize)
    if reference.has_statistics and not use_stored:
        warnings.warn(
            f"The reference statistics were made with {made_by or 'the TF Inception (ADM file)'}, not "
            f"{features_name(network, resize)}: recomputing them from its {len(reference)} images."
        )
    if use_stored:
        check_statistics(reference.mu, reference.sigma, reference.mu_s, reference.sigma_s,
                         dims=(network.pool_dim, network.spatial_dim))  # fmt: skip
        reference_stats = (reference.mu, reference.sigma), (reference.mu_s, reference.sigma_s)
        reference_pool = cached_pool_features(reference, network)
        if reference_pool is None:
            reference_pool = compute_activations(reference.images, network, batch_size, device, progress, resize).pool
    else:
        reference_acts = compute_activations(reference.images, network, batch_size, device, progress, resize)
        reference_pool = reference_acts.pool
        reference_stats = feature_statistics(reference_acts.pool), feature_statistics(reference_acts.spatial)
    sample_acts = compute_activations(samples, network, batch_size, device, progress, resize)
    fid = frechet_distance(*feature_statistics(sample_acts.pool), *reference_stats[0])
    sfid = frechet_distance(*feature_statistics(sample_acts.spatial), *reference_stats[1])
    precision, recall = precision_recall(
        reference_pool, sample_acts.pool, k=k, distance_dtype=distance_dtype, device=device, progress=progress
    )
    result = {
        "fid": fid,
        "sfid": sfid,
        "inception_score": inception_score(sample_acts.probs, split_size) if sample_acts.probs is not None else None,
        "precision": precision,
        "recall": recall,
        "num_samples": len(sample_acts),
        "num_reference": len(reference),
        "network": network.name,
        "reference_statistics": "stored" if use_stored else "computed",
        "k": k,
        "resize": resize,
    }
    if sample_acts.probs is None:
        result["inception_score_note"] = (
            IS_UNAVAILABLE_REASON
            if isinstance(network, FIDInceptionV3)
            else f"Inception Score unavailable: the network {network.name!r} has no logits."
        )
    return result
