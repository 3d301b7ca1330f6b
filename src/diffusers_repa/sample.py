# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Sampling CLI: a labelled grid PNG for chosen classes, or N images in an `.npz` for FID (ADM evaluator layout).

```bash
# a grid of 4 classes, paper setting (SDE, 250 steps, guidance 1.8 for t <= 0.7)
python -m diffusers_repa.sample grid --model sit-xl-2-repa --classes "golden retriever" 88 207 "tabby" --output grid.png
# 50K images, 50 per class, spread over the GPUs; rerun the same command to resume
accelerate launch -m diffusers_repa.sample npz --model sit-xl-2-repa --num_images 50000 --output samples.npz
```

Every image has its own generator, seeded from `(--seed, image index)`, so the images do not depend on the batch size,
the number of processes, or on resuming. The `npz` mode writes finished batches to `<output>.parts/` (each written
atomically) and assembles `<output>` (`arr_0`: uint8 `(N, H, W, 3)`, plus `labels`) once all are there.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from .pipeline_repa import REPAPipeline
from .schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler

SCHEDULERS = {"sde": SiTEulerMaruyamaScheduler, "heun": SiTHeunScheduler, "euler": SiTEulerScheduler}
DEFAULT_STEPS = {"sde": 250, "heun": 50, "euler": 50}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def image_generators(seed: int, indices: range) -> list[torch.Generator]:
    """One CPU generator per image, seeded from `(seed, index)`: images independent of batching and processes."""
    return [torch.Generator().manual_seed((seed << 32) + index) for index in indices]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] to uint8 by truncation, as the official `generate.py` does."""
    return (images * 255).clip(0, 255).astype(np.uint8)


def sample_labels(num_images: int, num_classes: int, mode: str, seed: int) -> np.ndarray:
    """`"balanced"`: ids `0, 1, ..., C-1, 0, ...` (N/C per class); `"random"`: uniform, as the official script."""
    if mode == "balanced":
        return np.arange(num_images) % num_classes
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, (num_images,), generator=generator).numpy()


def load_pipeline(args: argparse.Namespace, device: torch.device) -> REPAPipeline:
    dtypes = {"transformer": DTYPES[args.dtype], "default": torch.float32}
    pipeline = REPAPipeline.from_pretrained(args.model, dtype=dtypes)
    pipeline.scheduler = SCHEDULERS[args.scheduler].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def generate(pipeline: REPAPipeline, labels: list[int | str], indices: range, args: argparse.Namespace) -> np.ndarray:
    """uint8 images `(len(indices), H, W, 3)` for `labels`, with per-image generators."""
    images = pipeline(
        labels,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_interval=tuple(args.guidance_interval),
        generator=image_generators(args.seed, indices),
        output_type="np",
    ).images
    return to_uint8(images)


def make_grid(images: np.ndarray, captions: list[str], columns: int) -> PIL.Image.Image:
    """Tile `images` (N, H, W, 3) in rows of `columns`, each with its caption in a strip below."""
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    caption_height = 14
    grid = PIL.Image.new("RGB", (columns * width, rows * (height + caption_height)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (index % columns) * width, (index // columns) * (height + caption_height)
        grid.paste(PIL.Image.fromarray(image), (x, y))
        draw.text((x + 2, y + height + 1), caption, fill="black")
    return grid


def caption(pipeline: REPAPipeline, label: int) -> str:
    name = pipeline.config.id2label.get(str(label))
    return f"{label}: {name.split(',')[0]}" if name else str(label)


def run_grid(args: argparse.Namespace) -> None:
    state = PartialState()
    if not state.is_main_process:
        return
    pipeline = load_pipeline(args, state.device)
    labels = pipeline.get_label_ids([int(c) if c.isdigit() else c for c in args.classes])
    images = generate(pipeline, labels, range(len(labels)), args)
    grid = make_grid(images, [caption(pipeline, label) for label in labels], args.columns or min(len(labels), 8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"Wrote {args.output} ({len(labels)} images)")


def run_npz(args: argparse.Namespace) -> None:
    state = PartialState()
    parts = args.output.with_name(args.output.name + ".parts")
    settings = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in ("output", "command")
    }
    settings_file = parts / "settings.json"
    if state.is_main_process:
        parts.mkdir(parents=True, exist_ok=True)
        if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
            raise ValueError(
                f"{parts} holds batches made with other settings ({settings_file}); use another --output or delete it."
            )
        settings_file.write_text(json.dumps(settings, indent=2))
    state.wait_for_everyone()

    pipeline = load_pipeline(args, state.device)
    num_classes = pipeline.transformer.config.num_classes
    labels = sample_labels(args.num_images, num_classes, args.labels, args.seed)
    num_batches = -(-args.num_images // args.batch_size)
    mine = [k for k in range(state.process_index, num_batches, state.num_processes)]
    todo = [k for k in mine if not (parts / f"batch_{k:06d}.npz").exists()]
    for batch in tqdm(todo, desc=f"batches (process {state.process_index})", disable=not state.is_local_main_process):
        indices = range(batch * args.batch_size, min((batch + 1) * args.batch_size, args.num_images))
        images = generate(pipeline, labels[indices.start : indices.stop].tolist(), indices, args)
        temporary = parts / f"batch_{batch:06d}.tmp.npz"
        np.savez(temporary, images=images, labels=labels[indices.start : indices.stop])
        os.replace(temporary, parts / f"batch_{batch:06d}.npz")
    state.wait_for_everyone()

    if state.is_main_process:
        shards = [np.load(parts / f"batch_{k:06d}.npz") for k in range(num_batches)]
        images = np.concatenate([shard["images"] for shard in shards])
        np.savez(args.output, arr_0=images, labels=np.concatenate([shard["labels"] for shard in shards]))
        print(f"Wrote {args.output}: arr_0 {images.shape} uint8 ({args.labels} labels)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusers_repa.sample", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    grid = commands.add_parser("grid", help="a labelled grid PNG of chosen classes")
    grid.add_argument("--classes", nargs="+", required=True, help="class ids or names, e.g. 207 'tabby'")
    grid.add_argument("--columns", type=int, default=None, help="images per row (default: up to 8)")
    npz = commands.add_parser("npz", help="N images in an .npz for the ADM FID evaluator (resumable)")
    npz.add_argument("--num_images", type=int, default=50_000)
    npz.add_argument(
        "--labels",
        choices=("balanced", "random"),
        default="balanced",
        help="balanced: N/num_classes per class; random: uniform, as the official generate.py",
    )
    npz.add_argument("--batch_size", type=int, default=32, help="images per batch and per process")
    for sub in (grid, npz):
        sub.add_argument("--model", required=True, help="REPAPipeline folder or Hub repo id")
        sub.add_argument("--output", type=Path, required=True)
        sub.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="sde")
        sub.add_argument("--steps", type=int, default=None, help="default: 250 for sde, 50 for heun/euler")
        sub.add_argument("--guidance_scale", type=float, default=1.8)
        sub.add_argument("--guidance_interval", type=float, nargs=2, default=(0.0, 0.7), metavar=("LOW", "HIGH"))
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="transformer dtype")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.scheduler]
    args.guidance_interval = list(args.guidance_interval)
    if args.command == "npz" and (args.num_images < 1 or args.batch_size < 1):
        parser.error("--num_images and --batch_size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "grid":
            run_grid(args)
        else:
            run_npz(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
