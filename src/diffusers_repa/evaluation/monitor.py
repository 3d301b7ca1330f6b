# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
r"""
FID while training: the ADM metrics (FID, sFID, precision, recall) of a fixed set of class-balanced samples against a
reference batch, and REPA's CKNNA at the alignment layer on a fixed batch of training images, so that successive
values of a run differ only by its weights.

`train_repa.py --fid_steps N` uses it; the same object works on any [`REPAPipeline`]:

```py
>>> from diffusers_repa import REPAPipeline
>>> from diffusers_repa.evaluation.monitor import FIDMonitor

>>> monitor = FIDMonitor.from_source(
...     "training/data/fashion-mnist", cache_dir="outputs", resolution=32, split="test", num_classes=10,
...     num_samples=500, num_inference_steps=50,
... )  # builds and caches outputs/fid_reference-<key>.npz on the first call
>>> pipe = REPAPipeline.from_pretrained("outputs/demo/sit-repa")
>>> monitor.evaluate(monitor.sample(pipe))
{'fid': ..., 'sfid': ..., 'precision': ..., 'recall': ...}
```
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..alignment import alignment_cknna
from ..sample import image_generators, sample_labels, to_uint8
from .batches import (
    ReferenceBatch,
    build_reference_batch,
    cached_pool_features,
    evaluate_samples,
    load_reference_batch,
    statistics_match,
)
from .inception import FeatureNetwork, compute_activations, load_inception

# Metrics of `evaluate_samples` that the monitor reports (the Inception Score needs logits the offline network lacks).
MONITORED_METRICS = ("fid", "sfid", "precision", "recall")


def reference_cache_path(
    cache_dir: str | os.PathLike, source: str, resolution: int, split: str, num_images: int | None, seed: int | None
) -> Path:
    """Where [`FIDMonitor.from_source`] caches the reference batch built from a dataset: one file per setting."""
    key = json.dumps(
        [os.path.abspath(source) if os.path.exists(source) else source, resolution, split, num_images, seed]
    )
    return Path(cache_dir) / f"fid_reference-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


class FIDMonitor:
    r"""
    The ADM metrics of a fixed set of samples against a reference batch, for tracking a model during training.

    The samples are always the same `num_samples` class-balanced labels (`0, 1, ..., C-1, 0, ...`) drawn from the same
    per-image noise (image `i` from seed `seed * SEED_STRIDE + i`, as `python -m diffusers_repa.sample npz`), with
    the Euler ODE sampler of the pipeline given, so two evaluations differ only by the model. The feature network
    (the FID Inception by default) is loaded once.

    Args:
        reference ([`ReferenceBatch`], *optional*): Reference images (their statistics are made with `network` when
            they are missing or were made by another network; an ADM file's stored statistics are used as they are
            with the FID Inception, as [`evaluate_samples`] does). None on processes that only [`sample`].
        network ([`FeatureNetwork`], *optional*): The feature network (the FID Inception from [`load_inception`]);
            None on processes that only sample.
        num_samples (`int`): Samples per evaluation (at least 4).
        num_classes (`int`): The model's class count.
        seed (`int`, defaults to 0): Seed of the per-image noise.
        num_inference_steps (`int`, defaults to 50): Sampler steps.
        guidance_scale (`float`, defaults to 1.0): Classifier-free guidance (1 = none).
        batch_size (`int`, defaults to 64): Images per sampling and feature batch.
        reference_name (`str`, *optional*): What the reference is, for reports.
        progress (`bool`, defaults to `True`): tqdm bars over the sampling and feature batches.
        fast (`bool`, defaults to `False`): Sample in the pipeline's fast mode (`fast=True`: float32 sampler state,
            bf16 autocast on CUDA), as `train_repa.py --fast` does; the default is the exact mode.
    """

    def __init__(
        self,
        reference: ReferenceBatch | None,
        network: FeatureNetwork | None,
        num_samples: int,
        num_classes: int,
        seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        batch_size: int = 64,
        reference_name: str | None = None,
        progress: bool = True,
        fast: bool = False,
    ):
        if num_samples < 4:
            raise ValueError(f"num_samples must be at least 4 (precision/recall use k = 3), got {num_samples}.")
        if (reference is None) != (network is None):
            raise ValueError("Pass both `reference` and `network` (to evaluate), or neither (to sample only).")
        if reference is not None and not statistics_match(reference, network):
            reference = build_reference_batch(reference.images, network=network, batch_size=batch_size, progress=False)
        elif reference is not None and cached_pool_features(reference, network) is None:  # e.g. an ADM file: once, here
            pool = compute_activations(reference.images, network, batch_size, progress=False).pool
            reference = dataclasses.replace(reference, pool_features=pool)
        self.reference, self.network = reference, network
        self.labels = sample_labels(num_samples, num_classes, "balanced", seed)
        self.seed, self.num_inference_steps, self.guidance_scale = seed, num_inference_steps, guidance_scale
        self.batch_size, self.progress, self.fast = batch_size, progress, fast
        self.reference_name = reference_name or "the reference images"

    @classmethod
    def from_source(
        cls,
        source: str,
        *,
        num_classes: int,
        num_samples: int,
        cache_dir: str | os.PathLike | None = None,
        resolution: int | None = None,
        split: str = "train",
        num_images: int | None = None,
        reference_seed: int | None = None,
        network: FeatureNetwork | None = None,
        device: str | torch.device | None = None,
        dataset_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> "FIDMonitor":
        r"""
        A monitor against `source`: an ADM reference `.npz` (used as it is), or a dataset (Hub id, local dataset
        folder, image folder) from which a reference batch is built once ([`build_reference_batch`]: ADM center crop
        to `resolution`, `split`, `num_images` images, shuffled with `reference_seed`) and cached in `cache_dir`
        ([`reference_cache_path`]); a cached file made by another network is rebuilt. `kwargs` go to the
        constructor.
        """
        network = network if network is not None else load_inception(device)
        batch_size = kwargs.get("batch_size", 64)
        if str(source).endswith(".npz"):
            if not os.path.isfile(source):
                raise FileNotFoundError(f"The FID reference {source} does not exist.")
            return cls(load_reference_batch(source), network, num_samples, num_classes, reference_name=source, **kwargs)
        if resolution is None or cache_dir is None:
            raise ValueError("A reference built from a dataset needs `resolution` and `cache_dir`.")
        path = reference_cache_path(cache_dir, source, resolution, split, num_images, reference_seed)
        name = f"{source} (split {split})"
        if path.is_file():
            reference = load_reference_batch(path)
            if statistics_match(reference, network):
                return cls(reference, network, num_samples, num_classes, reference_name=name, **kwargs)
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        reference = build_reference_batch(
            source, path, resolution=resolution, split=split, num_images=num_images, seed=reference_seed,
            network=network, batch_size=batch_size, cache_dir=dataset_cache_dir,
        )  # fmt: skip
        return cls(reference, network, num_samples, num_classes, reference_name=name, **kwargs)

    def describe(self) -> str:
        """One sentence on how the metrics are measured (for logs and the model card)."""
        guidance = f"guidance scale {self.guidance_scale}" if self.guidance_scale != 1 else "no guidance"
        mode = ", fast mode" if self.fast else ""
        return (
            f"{len(self.labels)} class-balanced samples ({self.num_inference_steps} Euler ODE steps, {guidance}, fixed "
            f"noise{mode}) against {self.reference_name} ({len(self.reference)} images), features of "
            f"{self.network.name}."
        )

    @torch.no_grad()
    def sample(self, pipeline, process_index: int = 0, num_processes: int = 1) -> np.ndarray:
        """
        This process's share of the samples (a contiguous slice of the indices; concatenating the shares of processes
        `0, 1, ...` gives all of them), as uint8 `(n, H, W, 3)`. Run the pipeline's transformer in eval mode.
        """
        per_process = -(-len(self.labels) // num_processes)
        indices = range(process_index * per_process, min((process_index + 1) * per_process, len(self.labels)))
        pipeline.set_progress_bar_config(disable=True)
        images = []
        starts = range(indices.start, indices.stop, self.batch_size)
        for start in tqdm(starts, desc="FID samples", disable=not self.progress, leave=False):
            batch = range(start, min(start + self.batch_size, indices.stop))
            output = pipeline(
                self.labels[batch.start : batch.stop].tolist(),
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=image_generators(self.seed, batch),
                output_type="np",
                fast=self.fast,
            )
            images.append(to_uint8(output.images))
        return np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)

    def evaluate(self, images: np.ndarray | Sequence[np.ndarray]) -> dict[str, float]:
        """FID, sFID, precision and recall of all the samples (the shares of every process, in order)."""
        if self.network is None:
            raise ValueError("This FIDMonitor only samples: build it with a reference and a network to evaluate.")
        if not isinstance(images, np.ndarray):  # a process with no samples (more processes than shares) gives none
            images = np.concatenate([share for share in images if len(share)])
        result = evaluate_samples(
            images, self.reference, network=self.network, batch_size=self.batch_size, progress=self.progress
        )
        return {name: float(result[name]) for name in MONITORED_METRICS}


class CKNNAProbe:
    r"""
    CKNNA ([`~diffusers_repa.alignment.alignment_cknna`]) between a SiT's mean-pooled hidden states at a layer and
    an encoder's features, on a fixed batch of training images with fixed noise: comparable across steps.

    Args:
        sample (`torch.Tensor` of shape `(N, C, H, W)`): Clean model inputs of the images (N > 10).
        target_features (`torch.Tensor` of shape `(N, T, D)`): The encoder's features of the same images.
        layer (`int`, *optional*): 1-based block; defaults to the model's `alignment_depth`.
        path_type (`str`, defaults to `"linear"`): The training path.
        seed (`int`, defaults to 0): Seed of the noise.
        timestep (`float`, defaults to 0.5): Flow time of the noisy inputs.
        batch_size (`int`, defaults to 64): Images per forward pass.
    """

    def __init__(
        self,
        sample: torch.Tensor,
        target_features: torch.Tensor,
        layer: int | None = None,
        path_type: str = "linear",
        seed: int = 0,
        timestep: float = 0.5,
        batch_size: int = 64,
    ):
        if not (torch.is_tensor(sample) and torch.is_tensor(target_features)):
            raise TypeError("`sample` and `target_features` must be tensors.")
        if len(sample) <= 10 or len(target_features) != len(sample):
            raise ValueError(
                f"CKNNAProbe needs more than 10 images (CKNNA uses 10 neighbours) and one feature row per image, got "
                f"{len(sample)} images and {len(target_features)} feature rows."
            )
        self.sample, self.target_features = sample, target_features
        self.layer, self.path_type, self.seed = layer, path_type, seed
        self.timestep, self.batch_size = timestep, batch_size

    def describe(self) -> str:
        """One sentence on how the value is measured (for logs and the model card)."""
        layer = f"block {self.layer}" if self.layer is not None else "the alignment layer"
        return (
            f"CKNNA (top-10) between the SiT's mean-pooled hidden states after {layer} (t = {self.timestep}, fixed "
            f"noise, null label) and the target features of {len(self.sample)} fixed training images."
        )

    def __call__(self, transformer: torch.nn.Module) -> float:
        # Eager even where the blocks are compiled (`--torch_compile`): the hidden states are read by forward hooks
        # that stop the forward pass after the layer, which a full-graph compile cannot trace.
        stance = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
        with stance:
            return self._cknna(transformer)

    def _cknna(self, transformer: torch.nn.Module) -> float:
        return alignment_cknna(
            transformer,
            self.sample,
            self.target_features,
            layer=self.layer,
            timestep=self.timestep,
            path_type=self.path_type,
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size,
        )
