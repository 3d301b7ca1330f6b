# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Sampling CLI: a labelled grid PNG for chosen classes, or N images in an `.npz` for FID (ADM evaluator layout).

```bash
# a grid of 4 classes, paper setting (SDE, 250 steps, guidance 1.8 for t <= 0.7)
python -m diffusers_repa.sample grid --pretrained_model_name_or_path sit-xl-2-repa \
    --classes "golden retriever" 88 207 "tabby" --output grid.png
# 50K images, 50 per class, spread over the GPUs; rerun the same command to resume
accelerate launch -m diffusers_repa.sample npz --pretrained_model_name_or_path sit-xl-2-repa --num_images 50000 \
    --output samples.npz
```

The flags share diffusers' vocabulary with `convert`, `evaluate_alignment` and the trainer:
`--pretrained_model_name_or_path` (a pipeline folder or Hub repo id; old name `--model`), `--num_inference_steps`
(old name `--steps`) and `--guidance_scale`.

Every image has its own generator, seeded from `(--seed, image index)`, so the images do not depend on the batch size,
the number of processes, or on resuming. The `npz` mode writes finished batches to `<output>.parts/` (each written
atomically) and assembles `<output>` (`arr_0`: uint8 `(N, H, W, 3)`, plus `labels`) once all are there; `<output>`
gets the `.npz` suffix if it lacks one (as NumPy would add it). All arguments, the model included, are checked before
anything is written, and `<output>.parts/settings.json` records them with a fingerprint of the model (its weights and
configs): a rerun with other settings, or on a model changed in place, is refused.

Preemption: on SIGTERM (SLURM, Kubernetes), SIGINT (Ctrl-C) or SIGUSR1, `npz` stops at the next denoising step,
discards the unfinished batch (nothing partial is ever written), keeps the finished ones, and exits with code 0 and
no `.npz`; rerunning the same command resumes, and the assembled `.npz` is the one an uninterrupted run writes. With
several processes, all stop once any got the signal. A second Ctrl-C stops at once (exit code 130). Exit code 2: an
invalid argument, with a one-line message.
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from .models import SIT_PRESETS
from .pipeline_repa import REPAPipeline
from .schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler
from .training_utils import StopSignal
from .utils import atomic_write, write_json_atomically

SCHEDULERS = {"sde": SiTEulerMaruyamaScheduler, "heun": SiTHeunScheduler, "euler": SiTEulerScheduler}
DEFAULT_STEPS = {"sde": 250, "heun": 50, "euler": 50}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A class given as digits (with an optional sign) is an id, anything else a name.
_CLASS_ID = re.compile(r"[+-]?\d+")
# Setting names of `<output>.parts/settings.json` written before the flags were renamed -> the current names.
_LEGACY_SETTINGS = {"model": "pretrained_model_name_or_path", "steps": "num_inference_steps"}
MODEL_FLAG = "--pretrained_model_name_or_path"


class BatchAbandoned(Exception):
    """Raised inside a batch when a stop signal arrived: the batch is discarded, never written."""


# Torch's CPU generator keeps only the low 32 bits of its seed, so the per-image seeds live in [0, 2**32). Seed `s`
# starts its images at `s * SEED_STRIDE` (2**32 / golden ratio): the runs of different seeds stay far apart (seeds
# below 1000 share no generator within their first 1.9M images, seeds below 10000 within 280K).
SEED_STRIDE = 0x9E3779B9


def image_generators(seed: int, indices: range) -> list[torch.Generator]:
    """One CPU generator per image, image `i` seeded with `(seed * SEED_STRIDE + i) % 2**32`: the images do not
    depend on batching or processes, and `seed` 0 uses seeds `0, 1, 2, ...`."""
    return [torch.Generator().manual_seed((seed * SEED_STRIDE + index) % 2**32) for index in indices]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] to uint8 by truncation, as the official `generate.py` does."""
    return (images * 255).clip(0, 255).astype(np.uint8)


def sample_labels(num_images: int, num_classes: int, mode: str, seed: int) -> np.ndarray:
    """`"balanced"`: ids `0, 1, ..., C-1, 0, ...` (N/C per class); `"random"`: uniform, as the official script."""
    if mode == "balanced":
        return np.arange(num_images) % num_classes
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_classes, (num_images,), generator=generator).numpy()


def process_state() -> PartialState:
    """
    accelerate's `PartialState`; on a machine without CUDA, a multi-process launch (`torchrun --nproc_per_node N`)
    shares the work over gloo, where a plain `PartialState()` would make every process a lone process 0.
    """
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    return PartialState(cpu=launched and not torch.cuda.is_available())


def check_model_source(model: str) -> None:
    """
    Refuse a `--pretrained_model_name_or_path` that is neither a pipeline folder nor a plausible Hub repo id, in one
    sentence (instead of a Hub lookup error); a repo id that cannot be found is reported by
    [`REPAPipeline.download`].
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"{MODEL_FLAG} {model} is a folder but not a pipeline folder (it has no model_index.json): pass the "
                "folder written by `REPAPipeline.save_pretrained`, by the trainer (its --output_dir) or by "
                "`python -m diffusers_repa.convert ... --vae ...`."
            )
        return
    if path.exists():
        raise ValueError(f"{MODEL_FLAG} {model} is a file: pass a pipeline folder or a Hub repo id ('org/name').")
    if model in SIT_PRESETS:
        raise ValueError(
            f"{MODEL_FLAG} {model} is a SiT preset name (an architecture), not a trained model: pass a pipeline "
            "folder or Hub repo id."
        )
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model:
        raise ValueError(f"{MODEL_FLAG} {model} does not exist: check the path of the pipeline folder.")


def load_pipeline(args: argparse.Namespace, device: torch.device) -> REPAPipeline:
    """Load the model with the chosen scheduler and transformer dtype; every bad model source is one `ValueError`."""
    check_model_source(args.pretrained_model_name_or_path)
    dtypes = {"transformer": DTYPES[args.dtype], "default": torch.float32}
    pipeline = REPAPipeline.from_pretrained(args.pretrained_model_name_or_path, dtype=dtypes)
    pipeline.scheduler = SCHEDULERS[args.scheduler].from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def generate(
    pipeline: REPAPipeline,
    labels: list[int | str],
    indices: range,
    args: argparse.Namespace,
    stop: StopSignal | None = None,
) -> np.ndarray:
    """
    uint8 images `(len(indices), H, W, 3)` for `labels`, with per-image generators. Raises [`BatchAbandoned`] at the
    next denoising step once `stop` has received a signal.
    """

    def abandon_on_signal(pipe: REPAPipeline, step: int, timestep: torch.Tensor, tensors: dict) -> dict:
        if stop is not None and stop.received is not None:
            raise BatchAbandoned(stop.received)
        return tensors

    images = pipeline(
        labels,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        guidance_interval=tuple(args.guidance_interval),
        generator=image_generators(args.seed, indices),
        output_type="np",
        callback_on_step_end=abandon_on_signal if stop is not None else None,
        fast=args.fast,
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
    state = process_state()
    if not state.is_main_process:
        return
    pipeline = load_pipeline(args, state.device)
    labels = pipeline.get_label_ids([int(c) if _CLASS_ID.fullmatch(c.strip()) else c for c in args.classes])
    images = generate(pipeline, labels, range(len(labels)), args)
    grid = make_grid(images, [caption(pipeline, label) for label in labels], args.columns or min(len(labels), 8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"Wrote {args.output} ({len(labels)} images)")


def _write_npz_atomically(path: Path, **arrays: np.ndarray) -> None:
    """`np.savez` through [`~diffusers_repa.utils.atomic_write`]: `path` is complete or absent, never partial."""
    with atomic_write(path) as file:  # a file object: NumPy adds no suffix
        np.savez(file, **arrays)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as batch:
            return batch["images"], batch["labels"]
    except Exception as error:  # noqa: BLE001 - any damage means the same: make the batch again
        raise ValueError(f"The batch file {path} is damaged ({type(error).__name__}): delete it and rerun.") from None


def model_fingerprint(pipeline: REPAPipeline) -> str:
    """
    SHA-256 of what the images depend on beyond the flags: the transformer's and the VAE's weights (in the dtype
    sampled with), their configs, the scheduler's config (e.g. `path_type`, `t_last`) and the latent scaling. A
    pipeline folder retrained or re-converted in place, or a Hub repo with new commits, gets another fingerprint
    (hashing reads every weight once: about a second per GB).
    """

    def public(config: Any) -> dict[str, Any]:  # leaves out `_diffusers_version`, `_name_or_path`, ...
        return {key: value for key, value in dict(config).items() if not key.startswith("_")}

    modules = {"transformer": pipeline.transformer, "vae": pipeline.vae}
    configs = {name: public(module.config) for name, module in modules.items() if module is not None}
    configs["scheduler"] = public(pipeline.scheduler.config)
    configs["pipeline"] = {key: pipeline.config.get(key) for key in ("latent_scale", "shift_factor")}
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode())
    for name, module in modules.items():
        for key, tensor in sorted((module.state_dict() if module is not None else {}).items()):
            tensor = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}.{key} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def _agree_to_stop(stop: StopSignal, state: PartialState) -> bool:
    """Whether any process got a stop signal; every process calls this once per round, so none is left waiting."""
    flag = stop.received is not None
    if state.num_processes == 1:
        return flag
    flag = torch.tensor([float(flag)], device=state.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def run_npz(args: argparse.Namespace, stop: StopSignal) -> None:
    state = process_state()
    # Everything that can be wrong with the arguments is found before anything is written.
    pipeline = load_pipeline(args, state.device)
    config = pipeline.transformer.config
    pipeline.check_inputs(
        args.num_inference_steps, args.guidance_scale, tuple(args.guidance_interval), None, (1,), None, "np", []
    )
    parts = args.output.with_name(args.output.name + ".parts")
    settings = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in ("output", "command") and not (key == "fast" and not value)  # runs from before --fast resume
    }
    # The same flags on a model changed in place (retrained, re-converted, new Hub commits) must not resume either.
    settings["model_fingerprint"] = model_fingerprint(pipeline)
    settings_file = parts / "settings.json"
    try:
        recorded = json.loads(settings_file.read_text()) if settings_file.exists() else None
        if recorded is not None:  # a run started before the flags were renamed resumes too
            recorded = {_LEGACY_SETTINGS.get(key, key): value for key, value in recorded.items()}
    except ValueError:
        raise ValueError(f"{settings_file} is unreadable: delete {parts} (or use another --output).") from None
    state.wait_for_everyone()  # every process has read the settings before the main process writes them
    if recorded is not None and "model_fingerprint" not in recorded:  # a run started before it was recorded
        settings.pop("model_fingerprint")
    first_run, recorded = recorded is None, settings if recorded is None else recorded
    changed = sorted(key for key in {*settings, *recorded} if key not in settings or recorded.get(key) != settings[key])
    if changed:
        what = ", ".join("the model (its weights or configs)" if key == "model_fingerprint" else key for key in changed)
        raise ValueError(
            f"{parts} holds batches made with other settings ({settings_file}; changed: {what}); use another "
            "--output, rerun with the settings recorded there, or delete the folder."
        )
    if state.is_main_process:
        parts.mkdir(parents=True, exist_ok=True)
        for leftover in parts.glob("*.tmp"):  # from a process killed while writing; never a finished batch
            leftover.unlink()
        if first_run:
            write_json_atomically(settings_file, settings)
    state.wait_for_everyone()

    labels = sample_labels(args.num_images, config.num_classes, args.labels, args.seed)
    num_batches = -(-args.num_images // args.batch_size)
    batch_file = lambda batch: parts / f"batch_{batch:06d}.npz"  # noqa: E731
    mine = range(state.process_index, num_batches, state.num_processes)
    todo = sum(1 for batch in mine if not batch_file(batch).exists())
    progress = tqdm(
        total=todo, desc=f"batches (process {state.process_index})", disable=not state.is_local_main_process
    )
    stopped = _agree_to_stop(stop, state)
    # Rounds, one batch per process each, so that all processes meet at every stop check.
    for first in range(0, num_batches, state.num_processes):
        if stopped:
            break
        batch = first + state.process_index
        if batch < num_batches and not batch_file(batch).exists():
            indices = range(batch * args.batch_size, min((batch + 1) * args.batch_size, args.num_images))
            batch_labels = labels[indices.start : indices.stop]
            try:
                images = generate(pipeline, batch_labels.tolist(), indices, args, stop)
            except BatchAbandoned:
                pass  # a signal arrived: this batch is discarded, the finished ones are kept
            else:
                _write_npz_atomically(batch_file(batch), images=images, labels=batch_labels)
                progress.update()
        stopped = _agree_to_stop(stop, state)
    progress.close()
    state.wait_for_everyone()

    if stopped:
        if state.is_main_process:
            finished = sum(1 for batch in range(num_batches) if batch_file(batch).exists())
            print(
                f"Stopped by {stop.received or 'a signal to another process'}: {finished} of {num_batches} batches "
                f"are saved in {parts}; {args.output} was not written. Rerun the same command to resume.",
                file=sys.stderr,
            )
        return
    if state.is_main_process:
        shards = [_load_batch(batch_file(batch)) for batch in range(num_batches)]
        images = np.concatenate([images for images, _ in shards])
        _write_npz_atomically(args.output, arr_0=images, labels=np.concatenate([labels for _, labels in shards]))
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
        sub.add_argument(
            MODEL_FLAG,
            "--model",
            required=True,
            help="REPAPipeline folder or Hub repo id (--model: old name)",
        )
        sub.add_argument(
            "--output", type=Path, required=True, help="grid: an image file (.png, .jpg, ...); npz: the .npz file"
        )
        sub.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="sde")
        sub.add_argument(
            "--num_inference_steps",
            "--steps",
            type=int,
            default=None,
            help="integration steps; default: 250 for sde, 50 for heun/euler (--steps: old name)",
        )
        sub.add_argument("--guidance_scale", type=float, default=1.8)
        sub.add_argument("--guidance_interval", type=float, nargs=2, default=(0.0, 0.7), metavar=("LOW", "HIGH"))
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="transformer dtype")
        sub.add_argument(
            "--fast",
            action="store_true",
            help="fast sampling (REPAPipeline fast=True): float32 state, bf16 autocast on CUDA, no host syncs; "
            "default: exact (the official samplers)",
        )
    args = parser.parse_args(argv)
    if args.num_inference_steps is None:
        args.num_inference_steps = DEFAULT_STEPS[args.scheduler]
    args.guidance_interval = list(args.guidance_interval)
    low, high = args.guidance_interval
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be >= 1, got {args.num_inference_steps}")
    if not math.isfinite(args.guidance_scale) or args.guidance_scale < 0:
        parser.error(f"--guidance_scale must be a finite number >= 0 (1 disables guidance), got {args.guidance_scale}")
    if not 0 <= low <= high <= 1:
        parser.error(f"--guidance_interval LOW HIGH must satisfy 0 <= LOW <= HIGH <= 1 (flow time), got {low} {high}")
    if args.command == "npz":
        if args.num_images < 1 or args.batch_size < 1:
            parser.error("--num_images and --batch_size must be >= 1")
        if args.output.suffix != ".npz":  # np.savez would add it; say so in every message instead
            args.output = args.output.with_name(args.output.name + ".npz")
    else:
        if args.columns is not None and args.columns < 1:
            parser.error(f"--columns must be >= 1, got {args.columns}")
        PIL.Image.init()
        if args.output.suffix.lower() not in PIL.Image.registered_extensions():
            parser.error(f"--output {args.output}: give the grid an image file extension, e.g. {args.output}.png")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, or 2 for a bad argument; 130 for a second Ctrl-C)."""
    args = parse_args(argv)
    try:
        if args.command == "grid":
            run_grid(args)
        else:
            with StopSignal() as stop:  # npz: stop cleanly on SIGTERM/SIGINT/SIGUSR1 (see the module docstring)
                run_npz(args, stop)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # grid: Ctrl-C; npz: a second Ctrl-C (the first one stops cleanly)
        print("Interrupted: nothing unfinished was written (npz: rerun the same command to resume).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
