# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Evaluation CLI: FID, sFID, IS, precision and recall of a sample batch against a reference batch (ADM evaluator).

```bash
# once: a reference batch (images + Inception statistics) from a dataset split, center-cropped like the training data
python -m diffusers_repa.evaluate reference --source training/data/fashion-mnist --dataset_split test --resolution 32 \\
    --output fmnist-test-ref.npz
# each evaluation: a sample batch (`python -m diffusers_repa.sample npz ...`) against it
python -m diffusers_repa.evaluate --samples samples.npz --reference fmnist-test-ref.npz --output_json metrics.json
```

The reference may also be an ADM file such as `VIRTUAL_imagenet256_labeled.npz`. The console script
`diffusers-repa-evaluate` is the same command.
"""

import argparse
import json
import os
import sys

from .evaluation.inception import RESIZE_MODES
from .evaluation.metrics import DISTANCE_DTYPES

ROWS = (
    ("FID", "fid"),
    ("sFID", "sfid"),
    ("Inception Score", "inception_score"),
    ("Precision", "precision"),
    ("Recall", "recall"),
)


def _add_network_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=int, default=64, help="Images per Inception forward pass.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    parser.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="tf1",
        help="Resize to 299: 'tf1' = the TF graph's resize_bilinear (default), 'torch' = F.interpolate.",
    )
    parser.add_argument(
        "--logits_weights",
        default=None,
        help="File with the Inception's 1008-way output layer (enables the Inception Score).",
    )
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")


def parse_evaluate_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffusers-repa-evaluate",
        description="FID / sFID / IS / precision / recall of an ADM sample batch against a reference batch. "
        "Build a reference first with `diffusers-repa-evaluate reference --help`.",
    )
    parser.add_argument("--samples", required=True, help="Sample batch .npz (uint8 NHWC images in arr_0).")
    parser.add_argument("--reference", required=True, help="Reference batch .npz (arr_0 [+ mu, sigma, mu_s, sigma_s]).")
    parser.add_argument("--output_json", default=None, help="Write the metrics here as JSON.")
    parser.add_argument("--k", type=int, default=3, help="Precision/recall neighbourhood size (ADM: 3).")
    parser.add_argument("--distance_dtype", choices=DISTANCE_DTYPES, default="float32",
                        help="Precision/recall distances; the ADM evaluator uses float16 when finite.")  # fmt: skip
    _add_network_args(parser)
    return parser.parse_args(argv)


def parse_reference_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffusers-repa-evaluate reference",
        description="Build an ADM reference batch (center-cropped images + Inception statistics) from a `datasets` "
        "dataset (local folder, Hub id) or a folder of images.",
    )
    parser.add_argument("--source", required=True, help="Dataset folder, Hub dataset id, or image folder.")
    parser.add_argument("--output", required=True, help="Reference .npz to write.")
    parser.add_argument("--resolution", type=int, required=True, help="Center-crop side: the samples' resolution.")
    parser.add_argument(
        "--dataset_split", "--split", default="train", help="Dataset split (default: train; --split: old name)."
    )
    parser.add_argument("--num_images", type=int, default=None, help="Use only this many images.")
    parser.add_argument("--seed", type=int, default=None, help="Shuffle with this seed before --num_images.")
    parser.add_argument("--image_column", default=None, help="Image column (default: 'image' or the only one).")
    parser.add_argument("--cache_dir", default=None, help="`datasets` cache folder.")
    _add_network_args(parser)
    return parser.parse_args(argv)


def format_table(metrics: dict) -> str:
    """The metrics as an aligned text table; an unavailable metric shows `n/a` and the reason below the table."""
    lines = [f"{'metric':<16} value", f"{'-' * 16} {'-' * 10}"]
    for label, key in ROWS:
        value = metrics.get(key)
        lines.append(f"{label:<16} {'n/a' if value is None else f'{value:.4f}'}")
    lines.append(f"{'samples':<16} {metrics['num_samples']}")
    lines.append(f"{'reference':<16} {metrics['num_reference']} images (statistics {metrics['reference_statistics']})")
    lines.append(f"network: {metrics['network']}")
    if metrics.get("inception_score_note"):
        lines.append(metrics["inception_score_note"])
    return "\n".join(lines)


def _network(args: argparse.Namespace):
    from .evaluation import load_inception

    return load_inception(args.device, logits_weights=args.logits_weights)


def run_evaluate(args: argparse.Namespace, network=None) -> dict:
    from .evaluation import evaluate_samples

    for path, flag in ((args.samples, "--samples"), (args.reference, "--reference")):
        if not os.path.isfile(path):
            raise SystemExit(f"{flag} {path!r} does not exist.")
    metrics = evaluate_samples(
        args.samples,
        args.reference,
        network=network if network is not None else _network(args),
        batch_size=args.batch_size,
        k=args.k,
        device=args.device,
        progress=not args.no_progress,
        resize=args.resize,
        distance_dtype=args.distance_dtype,
    )
    metrics.update(samples=os.path.abspath(args.samples), reference=os.path.abspath(args.reference))
    print(format_table(metrics))
    if args.output_json:
        folder = os.path.dirname(os.path.abspath(args.output_json))
        os.makedirs(folder, exist_ok=True)
        with open(args.output_json, "w") as file:
            json.dump(metrics, file, indent=2)
        print(f"Wrote {args.output_json}")
    return metrics


def run_reference(args: argparse.Namespace, network=None) -> None:
    from .evaluation import build_reference_batch

    reference = build_reference_batch(
        args.source,
        args.output,
        resolution=args.resolution,
        split=args.dataset_split,
        num_images=args.num_images,
        image_column=args.image_column,
        seed=args.seed,
        network=network if network is not None else _network(args),
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        resize=args.resize,
        cache_dir=args.cache_dir,
    )
    print(
        f"Wrote {args.output}: {len(reference)} images {reference.images.shape[1:]} with mu/sigma "
        f"{reference.mu.shape[0]}-d, mu_s/sigma_s {reference.mu_s.shape[0]}-d ({reference.network})"
    )


def main(argv: list[str] | None = None, network=None) -> int:
    """Entry point; `network` replaces the Inception (tests inject a tiny one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    reference = bool(argv) and argv[0] == "reference"
    args = parse_reference_args(argv[1:]) if reference else parse_evaluate_args(argv)
    try:
        run_reference(args, network) if reference else run_evaluate(args, network)
    except (ValueError, ImportError, FileNotFoundError) as error:  # bad inputs: one message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
