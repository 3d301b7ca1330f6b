# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Encode an image dataset once for REPA training: ADM center crop, VAE posterior, optionally encoder features.

The official pipeline (`preprocessing/dataset_tools.py`) stores every training image once as a center-cropped uint8
PNG plus the SD-VAE posterior `(mean, std)`, and re-samples the latent at every training step. This script writes the
same thing as a `datasets` dataset (parquet shards under `OUTPUT_DIR/data/`), which `train_repa.py` reads with
`--dataset_name OUTPUT_DIR` (or the Hub id it was pushed to):

| column | type | content |
|---|---|---|
| `image` | `Image` (PNG) | the ADM center crop at `--resolution`, RGB uint8 (uncompressed PNG by default) |
| `label` | `ClassLabel` (names kept from the source) or `int64` | the class id |
| `moments` | `Array3D((2C, h, w), float32)` | `cat([mean, std])` of the VAE posterior (omitted with `--vae none`) |
| `features_<encoder>` | `Array2D((T, D), float16)` | `AlignmentEncoder` patch features, only with `--encoder` |

Stored encoder features are an option for small datasets (the demo): REPA uses no data augmentation, so the targets
are a fixed function of each image, and storing them saves the encoder's forward at every step. For ImageNet they
would take hundreds of GB; there the trainer runs the encoder online, as the official code does.

The crops are stored as uncompressed PNGs by default (`--png_compress_level 0`), as the official pipeline stores
them, because decoding them is most of the training loader's work: on one CPU core a 256 px crop decodes at about
900 images/s uncompressed and about 500/s at any level 1-9 (`benchmarks/RESULTS.md`, "Data path"), so a training step
at 528 images/s needs one loader core per GPU instead of two. The price is disk: ImageNet's 1.28M crops take about
235 GiB uncompressed against about 124-153 GiB at levels 1-9 (124-134 GiB on photo crops; plus about 39 GiB of
posterior moments either way). Pass a level of 1 (nearly all of the size gain at the fastest compressed encode) when
disk or network bandwidth, not CPU cores, is what is short. PNG is lossless, so every level decodes to the same
pixels, and a resumed run may use another level than the shards already written (each shard's level is recorded in
`OUTPUT_DIR/.stats/` and the dataset card).

Work is split into shards of `--shard_size` rows; process `i` of `n` (`accelerate launch --num_processes n`) encodes
shards `i, i + n, ...`. Every shard is written to a temporary file and renamed when complete, so an interrupted run
resumes where it stopped: rerunning the same command skips the shards already on disk (it refuses other settings,
or a source whose row count or class names changed since). Unusable images (corrupt, truncated, too small) are left
out and counted (`OUTPUT_DIR/.stats/`, and the dataset card).

    accelerate launch --num_processes 8 training/prepare_latents.py \
        --dataset_name ILSVRC/imagenet-1k --resolution 256 --output_dir imagenet-256-sdvae \
        --push_to_hub --hub_dataset_id my-user/imagenet-256-sdvae
"""

import argparse
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers import AutoencoderKL
from huggingface_hub import DatasetCard, DatasetCardData, create_repo, upload_folder
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffusers_repa.alignment import AlignmentEncoder
from diffusers_repa.data import ImageTransform, SkippedImages, load_image_dataset
from diffusers_repa.training_utils import (
    MOMENTS_COLUMN,
    PREPARED_SETTINGS,
    PREPARED_STATS_FOLDER,
    StopSignal,
    features_column,
    ignore_stop_signals,
)
from diffusers_repa.utils import atomic_write, check_recorded_settings, write_json_atomically

logger = get_logger(__name__)

SHARD_PATTERN = "train-{:05d}.parquet"
# Uncompressed: 1.8x faster to decode than any zlib level, the official layout; see the module docstring.
DEFAULT_PNG_COMPRESS_LEVEL = 0
# The source's row count and class names when the first shards were made (`.stats/`), compared on resume.
SOURCE_FILE = "source.json"
# The options that decide what a shard holds: a rerun must match them to resume. (`png_compress_level` is not one:
# PNG is lossless, so shards of different levels hold the same pixels; each shard's level is in its stats file.)
RESUME_SETTINGS = (
    "dataset_name", "train_data_dir", "split", "image_column", "label_column", "max_samples", "resolution", "vae",
    "vae_subfolder", "encoders", "encoder_num_tokens", "shard_size",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("source data")
    data.add_argument("--dataset_name", default=None, help="Hub dataset id or local dataset folder.")
    data.add_argument("--train_data_dir", default=None, help="Image folder with one sub-folder per class.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--dataset_split", "--split", dest="split", default="train", help="Dataset split to prepare.")
    data.add_argument("--streaming", action="store_true", help="Read the source as it goes instead of downloading it.")
    data.add_argument("--cache_dir", default=None, help="`datasets` / Hub cache folder.")
    data.add_argument("--max_samples", type=int, default=None, help="Only encode the first N images.")
    data.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="Side of the ADM center crop (256 or 512 for ImageNet; 32 in the demo).",
    )

    models = parser.add_argument_group("models")
    models.add_argument(
        "--vae",
        default="stabilityai/sd-vae-ft-mse",
        help="AutoencoderKL to encode with (the official latents use sd-vae-ft-mse); `none` stores images only, for "
        "pixel-space training.",
    )
    models.add_argument("--vae_subfolder", default=None, help="Subfolder of `--vae` holding the AutoencoderKL.")
    models.add_argument(
        "--encoder",
        default=None,
        help="Also store the features of these alignment encoders (comma-separated Hub ids or folders).",
    )
    models.add_argument(
        "--encoder_num_tokens",
        type=int,
        default=None,
        help="Tokens per image of the stored features: the SiT's (sample_size / patch_size)^2 "
        "(default: (resolution / 16)^2, the official grid).",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True)
    output.add_argument("--shard_size", type=int, default=1000, help="Rows per parquet shard (the unit of resuming).")
    output.add_argument("--batch_size", type=int, default=32, help="Images per VAE/encoder forward.")
    output.add_argument("--dataloader_num_workers", type=int, default=4, help="Image-decoding worker processes.")
    output.add_argument(
        "--png_compress_level",
        type=int,
        default=DEFAULT_PNG_COMPRESS_LEVEL,
        help="zlib level (0-9) of the stored PNG crops. Default 0 (uncompressed, as the official data): the training "
        "loader decodes them about 1.8x faster (about 900 vs 500 crops/s per core at 256 px), at about 235 GiB for "
        "ImageNet's 1.28M crops instead of about 124-153 GiB at 1-9. Use 1 when disk or network, not CPU, is short. "
        "Lossless at every level.",
    )
    output.add_argument("--push_to_hub", action="store_true", help="Upload the finished dataset to the Hub.")
    output.add_argument("--hub_dataset_id", default=None, help="Dataset repo (default: the output folder's name).")
    output.add_argument("--hub_token", default=None)
    output.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    if (args.dataset_name is None) == (args.train_data_dir is None):
        parser.error("pass exactly one of --dataset_name and --train_data_dir.")
    if args.vae.lower() == "none":
        args.vae = None
    args.encoders = [name.strip() for name in args.encoder.split(",") if name.strip()] if args.encoder else []
    for option in ("shard_size", "batch_size", "resolution", "max_samples", "encoder_num_tokens"):
        if getattr(args, option) is not None and getattr(args, option) <= 0:
            parser.error(f"--{option} must be positive, got {getattr(args, option)}.")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}.")
    if not 0 <= args.png_compress_level <= 9:
        parser.error(
            f"--png_compress_level must be a zlib level from 0 (uncompressed, fastest to decode) to 9, got "
            f"{args.png_compress_level}."
        )
    return args


def describe_source(dataset: datasets.Dataset | datasets.IterableDataset, label_column: str) -> dict:
    """What the shards' rows depend on besides the settings: the source's row count (None for a stream) and labels."""
    label = (dataset.features or {}).get(label_column)
    return {
        "num_rows": len(dataset) if isinstance(dataset, datasets.Dataset) else None,
        "label_names": label.names if isinstance(label, datasets.ClassLabel) else None,
    }


def check_source(source_file: Path, source: dict, name: str, output_dir: Path) -> None:
    """
    Refuse to resume when the source changed since the shards on disk were made (images added to or removed from an
    image folder, another revision of a Hub dataset): shard `i` holds rows `i * shard_size, ...`, so the remaining
    shards would repeat or skip rows at their boundaries, or label them with other class ids. Values unknown on either
    side (a streamed source's row count, a folder prepared before they were recorded) are not compared.
    """
    if not source_file.is_file():
        return
    recorded = json.loads(source_file.read_text(encoding="utf-8"))
    changes = [
        f"{key}: {recorded[key]!r} -> {value!r}"
        for key, value in source.items()
        if value is not None and recorded.get(key) is not None and recorded[key] != value
    ]
    if changes:
        raise ValueError(
            f"{output_dir} holds shards prepared from {name} as it was then, and it has changed "
            f"({', '.join(changes)}): the remaining shards would repeat or skip rows, or use other class ids. Restore "
            "the source, or prepare it again in a new --output_dir."
        )


def output_features(
    source_features: datasets.Features,
    label_column: str,
    moments_shape: tuple[int, ...] | None,
    encoders: list[AlignmentEncoder],
) -> datasets.Features:
    """The columns of the prepared dataset (see the module docstring)."""
    label = source_features.get(label_column) if source_features else None
    features = {
        "image": datasets.Image(),
        "label": label if isinstance(label, datasets.ClassLabel) else datasets.Value("int64"),
    }
    if moments_shape is not None:
        features[MOMENTS_COLUMN] = datasets.Array3D(moments_shape, "float32")
    for encoder in encoders:
        features[features_column(encoder.name)] = datasets.Array2D((encoder.num_tokens, encoder.embed_dim), "float16")
    return datasets.Features(features)


def png_bytes(image: torch.Tensor, compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL) -> bytes:
    """
    Encode a uint8 `(3, H, W)` tensor as PNG (lossless at every level).

    Args:
        image (`torch.Tensor`): uint8 RGB image of shape `(3, H, W)`.
        compress_level (`int`, defaults to 0): zlib level, 0 (uncompressed, fastest to decode) to 9.

    Example:

    ```py
    >>> import torch
    >>> image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    >>> len(png_bytes(image)) > len(png_bytes(image, compress_level=9))
    True

    ```
    """
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def iter_source_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    shard_size: int,
    is_wanted: Callable[[int], bool],
    max_samples: int | None,
) -> Iterator[tuple[int, datasets.Dataset]]:
    """
    Yield `(shard_index, rows)` for the wanted shards. A map-style dataset is sliced; a streamed one is read once, in
    order, keeping only the rows of wanted shards (images stay undecoded until they are encoded).
    """
    if isinstance(dataset, datasets.Dataset):
        total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
        for shard in filter(is_wanted, range(math.ceil(total / shard_size))):
            yield shard, dataset.select(range(shard * shard_size, min((shard + 1) * shard_size, total)))
        return
    rows, current = [], None
    for index, row in enumerate(dataset):
        if max_samples is not None and index >= max_samples:
            break
        if index // shard_size != current:
            if rows:
                yield current, datasets.Dataset.from_list(rows, features=dataset.features)
            rows, current = [], index // shard_size
        if is_wanted(current):
            rows.append(row)
    if rows:
        yield current, datasets.Dataset.from_list(rows, features=dataset.features)


@torch.no_grad()
def encode_shard(
    rows: datasets.Dataset,
    args: argparse.Namespace,
    vae: AutoencoderKL | None,
    encoders: list[AlignmentEncoder],
    device: torch.device,
    skipped: SkippedImages,
) -> dict[str, list]:
    """Center-crop, VAE-encode and (optionally) feature-encode the rows of one shard."""
    transform = ImageTransform(args.resolution, args.image_column, args.label_column)
    loader = DataLoader(
        rows.with_transform(transform),
        batch_size=args.batch_size,
        num_workers=args.dataloader_num_workers,
        collate_fn=transform.collate,
        worker_init_fn=ignore_stop_signals,  # a stop signal is handled by the main process, between shards
    )
    # Every column from the start: a shard whose images are all unusable is written with no rows.
    columns = {"image": [], "label": [], **({MOMENTS_COLUMN: []} if vae is not None else {})}
    columns.update({features_column(encoder.name): [] for encoder in encoders})
    for batch in loader:
        skipped.update(batch["skipped"])
        images = batch["pixel_values"]
        if len(images) == 0:
            continue
        columns["image"].extend({"bytes": png_bytes(image, args.png_compress_level), "path": None} for image in images)
        columns["label"].extend(batch["class_labels"].tolist())
        images = images.to(device)
        if vae is not None:
            posterior = vae.encode(images.float() / 127.5 - 1.0).latent_dist
            moments = torch.cat([posterior.mean, posterior.std], dim=1).float().cpu()
            columns[MOMENTS_COLUMN].extend(moments.numpy())
        for encoder in encoders:
            features = encoder(images).to(torch.float16).cpu()
            columns[features_column(encoder.name)].extend(features.numpy())
    return columns


def write_shard(table: datasets.Dataset, path: Path) -> None:
    """Write a parquet shard atomically: a crash leaves the complete shard or none (a rerun then encodes it)."""
    with atomic_write(path) as file:
        # Content-defined chunking (datasets' default, for Xet deduplication of edited files) makes writing ~3x
        # slower; these shards are written once.
        table.to_parquet(file, use_content_defined_chunking=False)


def write_dataset_card(output_dir: Path, args: argparse.Namespace, features: datasets.Features, stats: dict) -> None:
    """The dataset card (README.md, `huggingface_hub.DatasetCard`): what the prepared dataset holds, how it was made."""
    source = args.dataset_name or args.train_data_dir
    columns = "\n".join(f"| `{name}` | `{feature!r}` |" for name, feature in features.items())
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(stats["skipped"].items())) or "none"
    levels = sorted(stats["png_compress_levels"].items())
    levels = ", ".join(f"{level} ({count} shard{'s' * (count != 1)})" for level, count in levels)
    metadata = DatasetCardData(pretty_name=f"REPA training data from {source}", tags=["diffusers-repa"])
    text = f"""---
{metadata.to_yaml()}
---

# REPA training data

Prepared with diffusers-repa's `training/prepare_latents.py` from `{source}` (split `{args.split}`): ADM center crop
to {args.resolution}x{args.resolution}, VAE `{args.vae or "none (pixel space)"}`, alignment encoders
{", ".join(f"`{name}`" for name in args.encoders) or "none"}. PNG crops at zlib level (0 = uncompressed)
{levels}.

{stats["rows"]} images; skipped {skipped}.

| column | feature |
|---|---|
{columns}

Train with `python training/train_repa.py --dataset_name <this dataset> --resolution {args.resolution} ...`.
"""
    DatasetCard(text).save(output_dir / "README.md")


def main(args: argparse.Namespace) -> None:
    """Prepare the dataset. SIGTERM, SIGINT and SIGUSR1 stop after the current shard (a second Ctrl-C discards it)."""
    with StopSignal() as stop:
        prepare(args, stop)


def prepare(args: argparse.Namespace, stop: StopSignal) -> None:
    accelerator = Accelerator()
    output_dir = Path(args.output_dir)
    (output_dir / "data").mkdir(parents=True, exist_ok=True)
    stats_dir = output_dir / PREPARED_STATS_FOLDER
    stats_dir.mkdir(exist_ok=True)
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()
    # Resuming into a folder made with other settings would mix incompatible shards. (The settings are written when
    # the models have loaded, so that a run that failed on a mistyped option does not block the corrected one.)
    settings = {name: getattr(args, name) for name in RESUME_SETTINGS}
    settings_file = stats_dir / PREPARED_SETTINGS
    resuming = any((output_dir / "data").glob("train-*.parquet"))
    if resuming:
        hint = "use a new --output_dir, or the same settings to resume"
        check_recorded_settings(settings_file, settings, hint, what="shards prepared", folder=output_dir)

    dataset = load_image_dataset(
        dataset_name=args.dataset_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        label_column=args.label_column,
        split=args.split,
        streaming=args.streaming,
        cache_dir=args.cache_dir,
    )
    source = describe_source(dataset, args.label_column)
    if resuming:
        check_source(stats_dir / SOURCE_FILE, source, args.dataset_name or args.train_data_dir, output_dir)
    device = accelerator.device
    vae = None
    if args.vae is not None:
        vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder, cache_dir=args.cache_dir)
        vae = vae.to(device).eval().requires_grad_(False)
    num_tokens = args.encoder_num_tokens
    encoders = [
        AlignmentEncoder.from_pretrained(name, resolution=args.resolution, num_tokens=num_tokens).to(device)
        for name in args.encoders
    ]
    moments_shape = None
    if vae is not None:
        downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        side = args.resolution // downsample
        moments_shape = (2 * vae.config.latent_channels, side, side)
    features = output_features(dataset.features, args.label_column, moments_shape, encoders)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomically(settings_file, settings)
        if not resuming or not (stats_dir / SOURCE_FILE).is_file():
            write_json_atomically(stats_dir / SOURCE_FILE, source)

    done = {int(path.stem.split("-")[1]) for path in (output_dir / "data").glob("train-*.parquet")}

    def is_wanted(shard: int) -> bool:
        return shard % accelerator.num_processes == accelerator.process_index and shard not in done

    num_todo = None  # unknown for a stream
    if isinstance(dataset, datasets.Dataset):
        total = len(dataset) if args.max_samples is None else min(len(dataset), args.max_samples)
        num_shards = math.ceil(total / args.shard_size)
        num_todo = sum(map(is_wanted, range(num_shards)))
        logger.info(f"{num_shards} shards of {args.shard_size} rows; this process encodes {num_todo} of them.")
    progress = tqdm(total=num_todo, desc="Shards", disable=not accelerator.is_local_main_process)
    for shard, rows in iter_source_shards(dataset, args.shard_size, is_wanted, args.max_samples):
        skipped = SkippedImages()
        columns = encode_shard(rows, args, vae, encoders, device, skipped)
        stats = {
            "rows": len(columns["label"]),
            "skipped": dict(skipped.counts),
            "png_compress_level": args.png_compress_level,
        }
        write_json_atomically(stats_dir / f"shard-{shard:05d}.json", stats)  # before its shard
        write_shard(
            datasets.Dataset.from_dict(columns, features=features), output_dir / "data" / SHARD_PATTERN.format(shard)
        )
        if skipped.total:
            logger.warning(f"Shard {shard}: {skipped}", main_process_only=False)
        progress.update(1)
        if stop.received:
            break
    progress.close()

    accelerator.wait_for_everyone()
    if stop.should_stop(accelerator):  # any process stopped: the dataset is incomplete
        done = len(list((output_dir / "data").glob("train-*.parquet")))
        accelerator.print(
            f"Stopped by {stop.received or 'a signal to another process'}: {done} shards are complete in "
            f"{output_dir / 'data'}. Run the same command again to encode the rest."
        )
        accelerator.end_training()
        return
    if accelerator.is_main_process:
        totals = {"rows": 0, "skipped": Counter(), "png_compress_levels": Counter()}
        shards = {path.stem.split("-")[1] for path in (output_dir / "data").glob("train-*.parquet")}
        for path in stats_dir.glob("shard-*.json"):
            if path.stem.split("-")[1] not in shards:  # left by a kill before its shard was written
                continue
            shard_stats = json.loads(path.read_text())
            totals["rows"] += shard_stats["rows"]
            totals["skipped"].update(shard_stats["skipped"])
            # Shards written before the level was recorded used PIL's default, 6.
            totals["png_compress_levels"][shard_stats.get("png_compress_level", 6)] += 1
        write_dataset_card(output_dir, args, features, totals)
        skipped_total = sum(totals["skipped"].values())
        logger.info(f"Prepared {totals['rows']} images ({skipped_total} skipped) in {output_dir}.")
        if args.push_to_hub:
            repo_id = create_repo(
                args.hub_dataset_id or output_dir.name,
                repo_type="dataset",
                exist_ok=True,
                private=args.hub_private_repo,
                token=args.hub_token,
            ).repo_id
            upload_folder(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=output_dir,
                ignore_patterns=[f"{PREPARED_STATS_FOLDER}/*", "**/.*.tmp"],
                commit_message="Prepared REPA training data",
                token=args.hub_token,
            )
            logger.info(f"Pushed to https://huggingface.co/datasets/{repo_id}")
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main(parse_args())
    except KeyboardInterrupt:  # a second Ctrl-C: the shard being encoded is discarded
        print("Interrupted: the shard being encoded was discarded; run the same command to resume.", file=sys.stderr)
        sys.exit(130)
