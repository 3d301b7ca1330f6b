# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
r"""
The ADM evaluator's metrics on features: Fréchet distance (FID / sFID), Inception Score, improved precision / recall.

Each function follows `openai/guided-diffusion` `evaluations/evaluator.py` on the same inputs (differences are stated
in each docstring) and accepts numpy arrays and torch tensors alike. Bad inputs (NaN or inf, too few samples,
mismatched dimensions) raise one `ValueError` before any work.

```py
>>> import numpy as np
>>> from diffusers_repa.evaluation import feature_statistics, frechet_distance, precision_recall

>>> rng = np.random.default_rng(0)
>>> real, fake = rng.normal(size=(500, 8)), rng.normal(0.5, 1.0, size=(500, 8))
>>> fid = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
>>> precision, recall = precision_recall(real, fake, k=3)
```
"""

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

ArrayLike = np.ndarray | torch.Tensor
DISTANCE_DTYPES = ("float32", "float64", "float16")


def _to_numpy(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        return values.numpy()
    if isinstance(values, np.ndarray):
        return values
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(values).__name__}.") from error


def _check_finite(values: np.ndarray | torch.Tensor, name: str) -> None:
    finite = torch.isfinite(values) if isinstance(values, torch.Tensor) else np.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).reshape(len(values), -1).any(1).sum()) if values.ndim > 1 else int((~finite).sum())
        raise ValueError(
            f"{name} contains NaN or inf ({bad} of {len(values)} rows): check the images and the network output "
            "(e.g. a diverged model or fp16 overflow) before computing metrics."
        )


def _features(values: ArrayLike, name: str) -> np.ndarray:
    array = _to_numpy(values, name)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (num_samples, feature_dim >= 1), got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}.")
    _check_finite(array, name)
    return array


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r"""
    Mean and covariance of features, as the ADM evaluator's `compute_statistics` (`np.cov(rowvar=False)`, unbiased).

    Computed in float64 (the ADM keeps the mean in the features' float32; the difference is ~1e-7 relative).

    Args:
        features: `(N, D)` array or tensor with N >= 2.

    Returns:
        `(mu, sigma)`: float64 `(D,)` and `(D, D)`.

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_repa.evaluation import feature_statistics

    >>> mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0]]))
    >>> mu, sigma
    (array([1., 2.]), array([[2., 2.],
           [2., 2.]]))
    ```
    """
    array = _features(features, "features").astype(np.float64)
    if len(array) < 2:
        raise ValueError(f"Statistics need at least 2 feature vectors, got {len(array)}.")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    from scipy import linalg

    # ADM calls sqrtm(disp=False), which only silences scipy's accuracy message; `disp` is deprecated in scipy 1.17.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6) -> float:
    r"""
    Fréchet distance between two Gaussians, `|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2))`: FID on pool
    features, sFID on spatial features.

    As the ADM evaluator: float64, `scipy.linalg.sqrtm`; if the square root is not finite, `eps` is added to both
    diagonals and it is retried (with a warning; a `ValueError` if it is still not finite, where the ADM would return
    NaN); an imaginary part is dropped when the diagonal's imaginary parts are within 1e-3 of 0, otherwise a
    `ValueError` is raised.

    Args:
        mu1, mu2: `(D,)` means. sigma1, sigma2: `(D, D)` covariances (e.g. from [`feature_statistics`]).
        eps (`float`, defaults to 1e-6): Diagonal offset of the retry.

    Returns:
        `float`.

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_repa.evaluation import frechet_distance

    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)  # 2 + (1 + 1 + 4 + 4 - 2 * 4)
    4.0
    ```
    """
    mu1, mu2 = (np.atleast_1d(_to_numpy(m, n)).astype(np.float64) for m, n in ((mu1, "mu1"), (mu2, "mu2")))
    sigma1, sigma2 = (
        np.atleast_2d(_to_numpy(s, n)).astype(np.float64) for s, n in ((sigma1, "sigma1"), (sigma2, "sigma2"))
    )
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"Mismatched statistics: means of shapes {mu1.shape} and {mu2.shape} (need equal (D,)).")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"Mismatched statistics: covariances of shapes {sigma1.shape} and {sigma2.shape} for means of dimension "
            f"{dim} (need ({dim}, {dim})). Both sides must come from the same network and layer."
        )
    for value, name in ((mu1, "mu1"), (mu2, "mu2"), (sigma1, "sigma1"), (sigma2, "sigma2")):
        _check_finite(value, name)
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the product of the covariances is singular; adding {eps} to their diagonals.")
        offset = np.eye(dim) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if not np.isfinite(covmean).all():  # the ADM would return NaN here
            raise ValueError(
                f"FID: sqrtm of the covariance product is not finite, even with {eps} on the diagonals: pass a larger "
                "`eps` (e.g. 1e-4), or use more images than feature dimensions (2048 for FID)."
            )
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):g} (> 1e-3).")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: ArrayLike, split_size: int = 5000) -> float:
    r"""
    Inception Score as the ADM evaluator computes it: the predictions are cut into consecutive chunks of `split_size`
    (not shuffled); per chunk `exp(mean_i KL(p_i || mean_j p_j))`; the score is the mean over chunks.

    Computed in float64 with `0 * log 0 = 0` (the ADM's float32 `p * log p` gives NaN for an exact zero).

    When N is not a multiple of `split_size` the last chunk is smaller but, as in the ADM, weighs as much as the others
    (a chunk of n images scores at most n, so a small last chunk lowers the score); a warning says so. FID-50K's 50,000
    samples make 10 full chunks.

    Args:
        probs: `(N, C)` class probabilities (softmax outputs), rows summing to 1.
        split_size (`int`, defaults to 5000): Chunk size.

    Returns:
        `float` between 1 and C.

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_repa.evaluation import inception_score

    >>> round(inception_score(np.eye(10)), 6), round(inception_score(np.full((10, 10), 0.1)), 6)  # certain; uniform
    (10.0, 1.0)
    ```
    """
    array = _features(probs, "probs").astype(np.float64)
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}.")
    if len(array) == 0:
        raise ValueError("probs is empty.")
    if (array < 0).any() or not np.allclose(array.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "probs must be probabilities (non-negative rows summing to 1): pass softmax outputs, not logits."
        )
    remainder = len(array) % split_size
    if len(array) > split_size and remainder:
        warnings.warn(
            f"Inception Score: {len(array)} predictions make chunks of {split_size} and a last one of {remainder}, "
            "which counts as much as the others (as in the ADM evaluator) and lowers the score; use a multiple of "
            f"{split_size} samples."
        )
    scores = []
    for start in range(0, len(array), split_size):
        part = array[start : start + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        positive = part > 0
        log_ratio = np.log(np.where(positive, part, 1.0)) - np.log(np.where(positive, marginal, 1.0))
        kl = np.sum(np.where(positive, part * log_ratio, 0.0), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores))


def _as_tensor(values: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if tensor.ndim != 2 or tensor.shape[1] == 0:
            raise ValueError(f"{name} must be 2-D (num_samples, feature_dim >= 1), got shape {tuple(tensor.shape)}.")
        if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise ValueError(f"{name} must be real numbers, got dtype {tensor.dtype}.")
        _check_finite(tensor, name)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(_features(values, name)))
    return tensor.to(device)


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor, dtype: str) -> torch.Tensor:
    """`max(|u|^2 - 2 u.v + |v|^2, 0)` as a float32/float64 block; float16 when finite, as the ADM's `DistanceBlock`."""

    def compute(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        norm_u = (u * u).sum(1, keepdim=True)
        norm_v = (v * v).sum(1, keepdim=True).T
        return torch.clamp(norm_u - 2 * (u @ v.T) + norm_v, min=0.0)

    if dtype == "float16":
        block = compute(rows.half(), cols.half())
        if bool(torch.isfinite(block).all()):
            return block.float()
        return compute(rows.float(), cols.float())
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    return compute(rows.to(torch_dtype), cols.to(torch_dtype))


def _kth_neighbour_radii(features: torch.Tensor, k: int, block_size: int, dtype: str, bar: tqdm) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in its own set (the point itself is the 0-th)."""
    radii = []
    for start in range(0, len(features), block_size):
        rows = features[start : start + block_size]
        nearest = None  # running k+1 smallest distances of each row, merged column block by column block
        for col_start in range(0, len(features), block_size):
            block = _squared_distances(rows, features[col_start : col_start + block_size], dtype)
            candidates = block if nearest is None else torch.cat([nearest, block], dim=1)
            nearest = torch.topk(candidates, min(k + 1, candidates.shape[1]), dim=1, largest=False).values
            bar.update()
        radii.append(nearest[:, k])
    return torch.cat(radii)


def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    block_size: int = 10000,
    distance_dtype: str = "float32",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[float, float]:
    r"""
    Improved precision and recall (Kynkäänniemi et al. 2019), as the ADM evaluator's `ManifoldEstimator`.

    Each point gets a ball whose squared radius is the squared distance to its k-th nearest neighbour in its own set
    (the point itself counts as the 0-th). Precision is the fraction of fake points inside some real ball
    (`d^2 <= radius`); recall the fraction of real points inside some fake ball. Distances are computed in
    `block_size` x `block_size` blocks (a running k-NN merge keeps memory at one block), so 50k x 50k fits anywhere.

    The ADM computes the distances in **float16** whenever the block is finite (float32 otherwise), which moves the
    result by a few samples against exact distances (2 of 500 in the recall, 0 in the precision, on Fashion-MNIST
    features: `benchmarks/RESULTS.md`). We default to float32;
    `distance_dtype="float16"` follows the ADM's rule (to within float16 rounding, which differs between TF and
    torch kernels) and `"float64"` gives exact distances.

    Args:
        real_features: `(N_real, D)` reference features (e.g. Inception pool features).
        fake_features: `(N_fake, D)` sample features.
        k (`int`, defaults to 3): Neighbourhood size; each set needs at least k + 1 points.
        block_size (`int`, defaults to 10000): Rows / columns per distance block.
        distance_dtype (`str`, defaults to `"float32"`): `"float32"`, `"float64"` or `"float16"` (ADM).
        device (`str` or `torch.device`, *optional*): Defaults to CUDA when available, else CPU.
        progress (`bool`, defaults to `True`): A tqdm bar over the distance blocks.

    Returns:
        `(precision, recall)` floats in [0, 1].

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_repa.evaluation import precision_recall

    >>> real = np.arange(10.0)[:, None]
    >>> precision_recall(real, real + 100.0, k=3), precision_recall(real, real, k=3)
    ((0.0, 0.0), (1.0, 1.0))
    ```
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}.")
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    real = _as_tensor(real_features, "real_features", device)
    fake = _as_tensor(fake_features, "fake_features", device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real_features have {real.shape[1]} dimensions but fake_features have {fake.shape[1]}: both must come "
            "from the same network and layer."
        )
    for tensor, name in ((real, "real_features"), (fake, "fake_features")):
        if len(tensor) < k + 1:
            raise ValueError(
                f"precision/recall with k={k} needs at least k + 1 = {k + 1} {name.split('_')[0]} samples (each "
                f"point's radius is the distance to its k-th neighbour), got {len(tensor)}."
            )
    real_blocks, fake_blocks = -(-len(real) // block_size), -(-len(fake) // block_size)
    total = real_blocks**2 + fake_blocks**2 + real_blocks * fake_blocks
    bar = tqdm(total=total, desc="Precision/recall distance blocks", disable=not progress, leave=False)
    real_radii = _kth_neighbour_radii(real, k, block_size, distance_dtype, bar)
    fake_radii = _kth_neighbour_radii(fake, k, block_size, distance_dtype, bar)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    for start in range(0, len(fake), block_size):
        stop = start + block_size
        for col_start in range(0, len(real), block_size):
            col_stop = col_start + block_size
            distances = _squared_distances(fake[start:stop], real[col_start:col_stop], distance_dtype)
            fake_in_real[start:stop] |= (distances <= real_radii[col_start:col_stop][None, :]).any(dim=1)
            real_in_fake[col_start:col_stop] |= (distances <= fake_radii[start:stop][:, None]).any(dim=0)
            bar.update()
    bar.close()
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())
