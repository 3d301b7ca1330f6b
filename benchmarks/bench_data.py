"""Data-path speed of REPA training from prepared latents: can the loader keep the GPU fed?

What one training step needs from the data path, for `--batch_size` images at 256 px:

1. **loader** (in `--num_workers` worker processes): read the prepared rows (ADM crop as PNG, VAE posterior
   `moments` (8, 32, 32) float32, label), decode the PNG to a uint8 (3, 256, 256) tensor, collate;
2. **main process**: draw the latent from the posterior (`sample_posterior`) and make the encoder input from the
   uint8 crops (`AlignmentEncoder.preprocess`: /255, ImageNet normalisation, bicubic resize to 224). In GPU training
   this runs on the GPU; here it is timed on the CPU, in one thread, as an upper bound.

Ours is the trainer's loader (`training_dataloader` of `diffusers_repa.training_utils`, or the `TrainingBatches`
of `training/train_repa.py` where that is absent) on a dataset written as `training/prepare_latents.py` writes it (a
parquet shard: PNG crops at `prepare_latents.py`'s default level, uncompressed, unless `--png_compress_level` says
otherwise; `moments`, `label`), loaded with `load_image_dataset`.
With `--official_dir`, the official `CustomDataset` reads the same images in its layout (uncompressed PNG files and
`.npy` posteriors, as its `preprocessing/dataset_tools.py` writes them) with the official `DataLoader` settings
(shuffle, pinned memory), for a ratio.

The images are synthetic (smooth random colour fields plus noise, so that PNG compresses them like photos). The
table ends with what the measured rate means for a GPU step at 528 images/s (our compiled SiT-XL/2 step on one
H200) and at twice the official 323 images/s.

With `--png_levels 0,1,3,6` it measures only the PNG compression levels instead (one process, one thread, CPU time,
best of `--repeats`): bytes per crop, what that makes for ImageNet's 1,281,167 crops, and the loader's decode speed
(`preprocess_image`: PIL decode, RGB, uint8 tensor) and `prepare_latents.py`'s encode speed, on the synthetic crops
and on 256 px crops of the one photo shipped offline (matplotlib's `grace_hopper.jpg`, when matplotlib is installed).

```bash
python benchmarks/bench_data.py --tiny --official_dir /tmp/official-repa   # 256 images, batch 32 (seconds)
python benchmarks/bench_data.py --official_dir /tmp/official-repa          # 3072 images, batch 256 (minutes)
python benchmarks/bench_data.py --png_levels 0,1,3,6,9                     # PNG level sweep (a minute)
```
Prints a Markdown table and one `JSON {...}` line.
"""

import argparse
import importlib.util
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import best_times, environment, load_official, official_commit, print_json, print_table
from PIL import Image

from diffusers_repa.alignment import AlignmentEncoder
from diffusers_repa.data import ImageTransform, adm_center_crop, load_image_dataset, preprocess_image, sample_posterior

REPO = Path(__file__).resolve().parents[1]
RESOLUTION, LATENT = 256, 32
IMAGENET_TRAIN_IMAGES = 1_281_167
GPU_STEP_RATES = {"our compiled SiT-XL/2 step (H200)": 528.0, "2x the official step (2 x 323)": 646.0}


def synthetic_images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((RESOLUTION, RESOLUTION), Image.BICUBIC), dtype=np.int16)
        noisy = smooth + rng.integers(-6, 7, smooth.shape, dtype=np.int16)
        images.append(noisy.clip(0, 255).astype(np.uint8))
    return images


def photo_crops() -> list[np.ndarray]:
    """
    256 px crops of the one photo available offline (matplotlib's `grace_hopper.jpg`, 512x600): its ADM center crop,
    and the four corners at full size and at 3/4 size (ImageNet photos average about 400x350, so an ADM crop keeps
    about this much detail). Empty when matplotlib is not installed.
    """
    try:
        from matplotlib import cbook
    except ImportError:
        return []
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        photo = photo.convert("RGB")
    crops = [adm_center_crop(photo, RESOLUTION)]
    for scale in (1.0, 0.75):
        scaled = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        for left in (0, scaled.width - RESOLUTION):
            for top in (0, scaled.height - RESOLUTION):
                crops.append(scaled.crop((left, top, left + RESOLUTION, top + RESOLUTION)))
    return [np.asarray(crop, dtype=np.uint8) for crop in crops]


def png_level_sweep(levels: list[int], repeats: int) -> None:
    """Bytes, decode and encode speed of our PNG crops per compression level (see the module docstring)."""
    device = torch.device("cpu")
    sources = {"synthetic": synthetic_images(64), "photo crops": photo_crops()}
    rows, results = [], {}
    for source, images in sources.items():
        if not images:
            continue
        for level in levels:
            encoded = [png(image, level) for image in images]
            assert all(  # lossless: what the loader decodes is the crop that was encoded
                np.array_equal(preprocess_image(data, RESOLUTION).permute(1, 2, 0).numpy(), image)
                for data, image in zip(encoded, images)
            )
            times = best_times(
                {
                    "decode": lambda encoded=encoded: [preprocess_image(data, RESOLUTION) for data in encoded],
                    "encode": lambda level=level, images=images: [png(image, level) for image in images],
                },
                device,
                repeats,
            )
            size = sum(map(len, encoded)) / len(encoded)
            record = {
                "kib_per_crop": size / 1024,
                "imagenet_gib": size * IMAGENET_TRAIN_IMAGES / 2**30,
                "decode_images_per_s": len(images) / times["decode"],
                "encode_images_per_s": len(images) / times["encode"],
            }
            results[f"{source}, level {level}"] = record
            rows.append([source, len(images), level, *record.values()])
    env = environment(device)
    print(
        f"{env['device']}, {env['cpu_count']} CPUs (load {env.get('load_average')}), torch {env['torch']}, "
        f"{torch.get_num_threads()} thread(s), CPU time, best of {repeats}; 256 px RGB crops "
        f"({3 * RESOLUTION**2 // 1024} KiB raw)"
    )
    print_table(
        [
            "crops",
            "n",
            "PNG level",
            "KiB / crop",
            f"GiB for ImageNet ({IMAGENET_TRAIN_IMAGES:,})",
            "decode images / s (one core)",
            "encode images / s (one core)",
        ],
        rows,
    )
    print_json({"bench": "data_png_levels", "env": env, "repeats": repeats, "results": results})


def png(image: np.ndarray, compress_level: int) -> bytes:
    """What `prepare_latents.png_bytes` stores for an `(H, W, 3)` uint8 crop."""
    return prepare_latents().png_bytes(torch.from_numpy(image).permute(2, 0, 1), compress_level)


def prepare_latents():
    """`training/prepare_latents.py` as a module."""
    if str(REPO / "training") not in sys.path:
        sys.path.insert(0, str(REPO / "training"))
    return importlib.import_module("prepare_latents")


def write_ours(
    root: Path, images: list[np.ndarray], moments: np.ndarray, labels: np.ndarray, compress_level: int
) -> Path:
    """A prepared dataset as `prepare_latents.py` writes it: `data/train-00000.parquet`."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(num_classes=1000),
            "moments": datasets.Array3D(moments.shape[1:], "float32"),
        }
    )
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": png(image, compress_level), "path": None} for image in images],
            "label": labels.tolist(),
            "moments": list(moments),
        },
        features=features,
    )
    (root / "data").mkdir(parents=True)
    table.to_parquet(str(root / "data" / "train-00000.parquet"))
    return root


def write_official(root: Path, images: list[np.ndarray], moments: np.ndarray, labels: np.ndarray) -> Path:
    """The official layout: `images/00000/img00000000.png` (uncompressed) and `vae-sd/.../img-mean-std-*.npy`."""
    entries = []
    for index, image in enumerate(images):
        name = f"{index:08d}"
        image_file = root / "images" / name[:5] / f"img{name}.png"
        feature_file = root / "vae-sd" / name[:5] / f"img-mean-std-{name}.npy"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        feature_file.parent.mkdir(parents=True, exist_ok=True)
        image_file.write_bytes(png(image, 0))
        np.save(feature_file, moments[index])
        entries.append([f"{name[:5]}/img-mean-std-{name}.npy", int(labels[index])])
    (root / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": entries}))
    return root


def our_loader(dataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    try:
        from diffusers_repa.training_utils import training_dataloader
    except ImportError:  # older layout: the loader pieces live in the training script
        spec = importlib.util.spec_from_file_location("train_repa", REPO / "training" / "train_repa.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        return torch.utils.data.DataLoader(
            script.TrainingBatches(dataset, ImageTransform(RESOLUTION, "image", "label"), ["moments"]),
            batch_size=batch_size,
            sampler=script.EpochShuffleSampler(len(dataset), 0),
            drop_last=True,
            collate_fn=script.collate_batch,
            num_workers=num_workers,
        )
    return training_dataloader(
        dataset, RESOLUTION, "image", "label", ["moments"], batch_size, seed=0, num_workers=num_workers
    )


def dinov2_input() -> AlignmentEncoder:
    """An AlignmentEncoder set up as DINOv2-B at 256 px (its network is never run here: only `preprocess`)."""
    return AlignmentEncoder(
        torch.nn.Linear(1, 1),
        name="dinov2-b-input",
        resolution=RESOLUTION,
        input_size=224,
        grid_size=16,
        embed_dim=768,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_prefix_tokens=1,
        normalize_before_resize=True,
    )


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (joined) child processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def loader_rate(loader, batches: int, main_work=None) -> tuple[float, float, float]:
    """
    (images/s over `batches` batches, seconds to the first batch, images per CPU second). The time runs from creating
    the iterator (worker start-up included) to the last batch, so that batches the workers prefetched during start-up
    are not free. The CPU seconds are those of the main process and the workers (joined at the end), whatever the
    other load on the machine: images per CPU second is what one free core would deliver. (The datasets here hold
    exactly `batches` batches, so no prefetched batch is left unused.)
    """
    start, start_cpu = time.perf_counter(), cpu_seconds()
    first, count = None, 0
    iterator = iter(loader)
    for batch in itertools.islice(iterator, batches):
        first = first or time.perf_counter() - start
        images = batch["pixel_values"] if isinstance(batch, dict) else batch[0]
        if main_work is not None:
            main_work(batch)
        count += len(images)
    wall = time.perf_counter() - start
    del iterator, batch  # shuts the workers down and joins them, so that their CPU time is counted
    return count / wall, first, count / (cpu_seconds() - start_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="8 batches of 32 images")
    parser.add_argument("--official_dir", default=None, help="a clone of github.com/sihyun-yu/REPA (optional)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 32 tiny, 256 real")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument(
        "--png_compress_level",
        type=int,
        default=None,
        choices=range(10),
        help="PNG compression of our crops (default: prepare_latents.py's; 0 = the official's, uncompressed)",
    )
    parser.add_argument("--batches", type=int, default=None, help="timed batches per loader (default: 8 tiny, 12)")
    parser.add_argument(
        "--png_levels",
        default=None,
        help="comma-separated PNG levels (0-9): measure only bytes, decode and encode speed per level",
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the --png_levels sweep (the best counts)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all loaders, shuffled; the best counts")
    args = parser.parse_args()
    if args.png_levels is not None:
        try:
            levels = [int(level) for level in args.png_levels.split(",")]
        except ValueError:
            levels = []
        if not levels or any(level not in range(10) for level in levels):
            parser.error(f"--png_levels takes comma-separated integers 0-9, got {args.png_levels!r}.")
        png_level_sweep(levels, args.repeats)
        return
    if args.png_compress_level is None:
        args.png_compress_level = prepare_latents().DEFAULT_PNG_COMPRESS_LEVEL
    batch = args.batch_size or (32 if args.tiny else 256)
    args.batches = args.batches or (8 if args.tiny else 12)
    count = batch * args.batches
    torch.manual_seed(0)
    images = synthetic_images(count)
    rng = np.random.default_rng(1)
    moments = np.concatenate(
        [rng.standard_normal((count, 4, LATENT, LATENT)), rng.uniform(0.0, 0.1, (count, 4, LATENT, LATENT))], axis=1
    ).astype(np.float32)
    labels = rng.integers(0, 1000, count)
    off = load_official(args.official_dir) if args.official_dir else None
    encoder_input = dinov2_input()

    def main_process_work(data: dict[str, Any] | tuple) -> None:
        if isinstance(data, dict):
            sample_posterior(data["moments"], 0.18215)
            encoder_input.preprocess(data["pixel_values"])
        else:  # the official batch (raw_image, moments, label), as its train.py uses it
            off.sample_posterior(data[1], latents_scale=0.18215)
            off.preprocess_raw_image(data[0], "dinov2-vit-b")

    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_image_dataset(
            dataset_name=str(write_ours(Path(tmp, "ours"), images, moments, labels, args.png_compress_level))
        )
        png_kib = sum(len(row["bytes"]) for row in dataset["image"][:64]) / 64 / 1024
        candidates = {}
        for workers in sorted({0, args.num_workers}):
            candidates[f"ours, {workers} workers"] = lambda w=workers: our_loader(dataset, batch, w)
        if off is not None:
            official_root = write_official(Path(tmp, "official"), images, moments, labels)
            official_dataset = off.CustomDataset(str(official_root))
            for workers in sorted({0, args.num_workers}):
                candidates[f"official, {workers} workers"] = lambda w=workers: torch.utils.data.DataLoader(
                    official_dataset,
                    batch_size=batch,
                    shuffle=True,
                    num_workers=w,
                    pin_memory=torch.cuda.is_available(),
                    drop_last=True,
                )
        # Every round runs every loader once, in an order shuffled per round (seeded); the best round counts, the
        # least disturbed by other load on a shared machine.
        order, shuffler = list(candidates), random.Random(0)
        for name in candidates:
            results[name] = {"loader_images_per_s": 0.0, "first_batch_s": math.inf, "with_main_process_work": 0.0}
        for _ in range(args.rounds):
            shuffler.shuffle(order)
            for name in order:
                rate, first, cpu_rate = loader_rate(candidates[name](), args.batches)
                full_rate, _, _ = loader_rate(candidates[name](), args.batches, main_process_work)
                best = results[name]
                best["loader_images_per_s"] = max(best["loader_images_per_s"], rate)
                best["images_per_cpu_s"] = max(best.get("images_per_cpu_s", 0.0), cpu_rate)
                best["first_batch_s"] = min(best["first_batch_s"], first)
                best["with_main_process_work"] = max(best["with_main_process_work"], full_rate)
        # The main-process work alone, on one batch.
        sample = next(iter(our_loader(dataset, batch, 0)))
        start = time.perf_counter()
        for _ in range(3):
            main_process_work(sample)
        results["main_process_work_images_per_s"] = 3 * batch / (time.perf_counter() - start)

    for name, record in results.items():
        if isinstance(record, dict):
            rows.append(
                [
                    name,
                    record["loader_images_per_s"],
                    record["images_per_cpu_s"],
                    record["with_main_process_work"],
                    record["first_batch_s"],
                ]
            )
    env = environment(torch.device("cpu"))
    print(
        f"{env['device']}, {env['cpu_count']} CPUs (load {env.get('load_average')}), torch {env['torch']}, "
        f"batch {batch}, {args.batches} timed batches, best of {args.rounds} round(s), 256 px crops (our PNGs "
        f"{png_kib:.0f} KiB, level {args.png_compress_level}), posterior (8, 32, 32)"
    )
    print_table(
        [
            "loader",
            "images / s",
            "images / CPU-s (all processes)",
            "images / s with posterior + encoder input (CPU, main process)",
            "first batch s",
        ],
        rows,
    )
    print(
        f"posterior + encoder input alone (CPU, 1 thread): {results['main_process_work_images_per_s']:.0f} "
        "images/s (on the GPU in GPU training)"
    )
    # The cores a GPU step needs: our loader's images per CPU second with the workers (worker and hand-over costs
    # included), which other load on a shared machine does not change as it changes images/s.
    per_core = results[f"ours, {args.num_workers} workers"]["images_per_cpu_s"]
    needs = {}
    for what, rate in GPU_STEP_RATES.items():
        needs[what] = rate / per_core
        print(
            f"- {what}: {rate:.0f} images/s needs {needs[what]:.2f} free cores of loader work "
            f"at the {per_core:.0f} images per CPU second measured here (so {math.ceil(needs[what])} workers)"
        )
    print_json(
        {
            "bench": "data",
            "tiny": args.tiny,
            "batch": batch,
            "num_workers": args.num_workers,
            "rounds": args.rounds,
            "env": env,
            "official_commit": official_commit(args.official_dir) if args.official_dir else None,
            "png_kib": png_kib,
            "png_compress_level": args.png_compress_level,
            "results": results,
            "workers_needed": needs,
        }
    )


if __name__ == "__main__":
    main()
