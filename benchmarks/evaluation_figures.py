"""The evaluation figures README.md quotes, re-measured on the bundled Fashion-MNIST with the real FID Inception.

On the first `--num_images` training and the first `--num_images` test images of `training/data/fashion-mnist`,
ADM-center-cropped to 32 px (`load_reference_images`), the Inception features are computed once per resize
convention (`compute_activations(..., resize="tf1")` and `resize="torch"`), and every figure comes from them:

* *Resizing*: the relative L2 (Frobenius over the whole `(N, 2048)` matrix) between the pool features of the
  training images under the two conventions; the FID between those same images resized both ways; the train-vs-test
  FID and sFID in each convention.
* *Float precision* (`tf1` features; the test images are the reference, the training images play the samples):
  `precision_recall` with `distance_dtype` float16, float32 and float64; and the change of the train-vs-test FID
  when every pool feature of both sets is multiplied by `1 + 1e-4 * z` (`z` standard normal, seed 0).
* *Costs* (process CPU time, so other processes on a shared machine are not counted; run it with one thread for
  the README's one-thread figures): the Inception per image (`compute_activations` over the `tf1` training images,
  batch 64), one 2048-d `frechet_distance` (the train-vs-test FID: one 2048x2048 `scipy.linalg.sqrtm`, which is
  nearly all of it), and, with `--pipeline`, sampling per image as the trainer's FID monitor does
  (`FIDMonitor.sample`: 50 Euler ODE steps, no guidance, class-balanced labels, batch 64).

```bash
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/evaluation_figures.py \
    --pipeline outputs/demo/sit-repa   # about 11 minutes on one shared core (2026-12-01)
```
Prints a Markdown table and one `JSON {...}` line.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import environment, print_json, print_table, relative_l2

from diffusers_repa import REPAPipeline, SiTEulerScheduler
from diffusers_repa.evaluation import (
    compute_activations,
    feature_statistics,
    frechet_distance,
    load_inception,
    load_reference_images,
    precision_recall,
)
from diffusers_repa.evaluation.inception import RESIZE_MODES
from diffusers_repa.evaluation.monitor import FIDMonitor

DATA = Path(__file__).resolve().parent.parent / "training" / "data" / "fashion-mnist"
RESOLUTION = 32
# Images per Inception forward pass and per sampling batch (the FID monitor's default).
BATCH_SIZE = 64
DISTANCE_DTYPES = ("float16", "float32", "float64")


def fid_of(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians of two `(N, D)` feature sets."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def timed(fn, *args, **kwargs):
    """`(result, process CPU seconds)` of `fn(*args, **kwargs)`."""
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def sampling_seconds_per_image(pipeline_dir: str, num_samples: int, steps: int) -> float:
    """CPU seconds per image of the trainer's FID sampling (Euler ODE, no guidance) with a saved pipeline."""
    pipeline = REPAPipeline.from_pretrained(pipeline_dir)
    pipeline.scheduler = SiTEulerScheduler(path_type=pipeline.scheduler.config.path_type)
    num_classes = pipeline.transformer.config.num_classes
    monitor = FIDMonitor(
        None, None, num_samples=num_samples, num_classes=num_classes, num_inference_steps=steps, batch_size=BATCH_SIZE
    )
    _, seconds = timed(monitor.sample, pipeline)
    return seconds / num_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=500, help="training and test images each (default 500)")
    parser.add_argument("--pipeline", default=None, help="a trained pipeline folder (the demo's) to time sampling")
    parser.add_argument("--num_samples", type=int, default=128, help="samples timed with --pipeline (default 128)")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of the timed sampling (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; set OMP_NUM_THREADS too)")
    args = parser.parse_args()
    if args.num_images < 4:
        parser.error(f"--num_images must be at least 4 (precision/recall use k = 3), got {args.num_images}.")
    if args.pipeline is not None and not Path(args.pipeline, "model_index.json").is_file():
        parser.error(f"--pipeline {args.pipeline} is not a saved pipeline folder (no model_index.json).")
    if args.num_samples < 4:
        parser.error(f"--num_samples must be at least 4, got {args.num_samples}.")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    torch.set_num_threads(args.threads)

    network = load_inception("cpu")
    images = {
        split: load_reference_images(str(DATA), RESOLUTION, split, num_images=args.num_images)[0]
        for split in ("train", "test")
    }
    pool, spatial, inception_seconds = {}, {}, None
    for resize in RESIZE_MODES:
        for split in ("train", "test"):
            acts, seconds = timed(compute_activations, images[split], network, BATCH_SIZE, resize=resize)
            if resize == "tf1" and split == "train":
                inception_seconds = seconds / len(images[split])
            pool[resize, split], spatial[resize, split] = acts.pool, acts.spatial

    results = {
        "pool_relative_l2_tf1_vs_torch": relative_l2(
            torch.from_numpy(pool["torch", "train"]), torch.from_numpy(pool["tf1", "train"])
        ),
        "fid_same_images_tf1_vs_torch": fid_of(pool["tf1", "train"], pool["torch", "train"]),
    }
    sqrtm_seconds = None
    for resize in RESIZE_MODES:
        fid, seconds = timed(fid_of, pool[resize, "train"], pool[resize, "test"])
        if resize == "tf1":
            sqrtm_seconds = seconds
        results[f"fid_train_vs_test_{resize}"] = fid
        results[f"sfid_train_vs_test_{resize}"] = fid_of(spatial[resize, "train"], spatial[resize, "test"])
    for dtype in DISTANCE_DTYPES:
        precision, recall = precision_recall(pool["tf1", "test"], pool["tf1", "train"], distance_dtype=dtype)
        results[f"precision_{dtype}"], results[f"recall_{dtype}"] = precision, recall
    rng = np.random.default_rng(0)
    perturbed = [pool["tf1", s] * (1 + 1e-4 * rng.standard_normal(pool["tf1", s].shape)) for s in ("train", "test")]
    results["fid_change_relative_1e-4_perturbation"] = abs(fid_of(*perturbed) - results["fid_train_vs_test_tf1"])
    results["inception_seconds_per_image"] = inception_seconds
    results["frechet_distance_2048_seconds"] = sqrtm_seconds
    if args.pipeline is not None:
        results["sampling_seconds_per_image"] = sampling_seconds_per_image(args.pipeline, args.num_samples, args.steps)

    n = args.num_images
    setting = f"{n} train vs {n} test, 32 px"
    rows = [
        ["pool features, relative L2 tf1 vs torch", results["pool_relative_l2_tf1_vs_torch"], f"{n} train images"],
        ["FID, same images tf1 vs torch", results["fid_same_images_tf1_vs_torch"], f"{n} train images"],
    ]
    for resize in RESIZE_MODES:
        rows.append([f"FID train vs test ({resize})", results[f"fid_train_vs_test_{resize}"], setting])
        rows.append([f"sFID train vs test ({resize})", results[f"sfid_train_vs_test_{resize}"], setting])
    for dtype in DISTANCE_DTYPES:
        value = f"{results[f'precision_{dtype}']:.3f} / {results[f'recall_{dtype}']:.3f}"
        rows.append([f"precision / recall, {dtype} distances", value, f"{setting}, tf1, test = reference"])
    rows += [
        ["FID change, features x (1 + 1e-4 z)", results["fid_change_relative_1e-4_perturbation"], f"{setting}, tf1"],
        ["Inception, CPU s per image", inception_seconds, f"batch {BATCH_SIZE}, {args.threads} thread(s)"],
        ["one 2048-d Fréchet distance (sqrtm), CPU s", sqrtm_seconds, f"{args.threads} thread(s)"],
    ]
    if args.pipeline is not None:
        rows.append(
            [
                "sampling, CPU s per image",
                results["sampling_seconds_per_image"],
                f"{args.pipeline}, {args.steps} Euler steps, batch {BATCH_SIZE}, {args.num_samples} samples",
            ]
        )
    print_table(["figure", "value", "setting"], rows)
    print_json({**results, **vars(args), **environment(torch.device("cpu"))})


if __name__ == "__main__":
    main()
