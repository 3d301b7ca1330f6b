# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Alignment CLI: per-layer CKNNA against an encoder and linear-probe accuracy of a trained SiT, as REPA reports them.

For `--num_images` images of a dataset split (a seeded random subset), every requested layer's hidden states are
taken with the null class label at flow time `--timestep` and mean-pooled over patches
([`~diffusers_repa.alignment.sit_hidden_states`]); the encoder's features of the same images are mean-pooled the same
way. Per layer it reports CKNNA against the encoder (`--topk` neighbours) and the accuracy of a linear probe
(BatchNorm1d + Linear) trained on a seeded `1 - --probe_test_fraction` of the images and tested on the rest. It
prints a table, and writes `alignment_metrics.json` and `alignment_metrics.png` (both metrics against the layer) to
`--output_dir`.

```bash
# the demo's model (scripts/run_demo.sh) on the held-out Fashion-MNIST test split
python -m diffusers_repa.evaluate_alignment --pretrained_model_name_or_path outputs/demo/sit-repa \
    --encoder outputs/demo/encoder --dataset_name training/data/fashion-mnist --dataset_split test \
    --num_images 1000 --timestep 0.5 --output_dir outputs/demo/alignment
```

Data: an image dataset (Hub id, dataset folder, or `--train_data_dir` class folders) for a pixel-space model, or for
a latent model whose pipeline folder has its `vae/`; or a `training/prepare_latents.py` output folder, whose stored
VAE posteriors are sampled as in training (the encoder always sees the stored crops).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .alignment.encoders import AlignmentEncoder
from .alignment.metrics import cknna, encoder_features, linear_probe_accuracy, sit_hidden_states
from .data import SD_VAE_LATENT_SCALE, preprocess_image, sample_posterior
from .flow_paths import PATH_TYPES
from .models import SiTTransformer2DModel
from .pipeline_repa import latent_shift_from_shift_factor
from .sample import image_generators
from .training_utils import MOMENTS_COLUMN

JSON_NAME = "alignment_metrics.json"
PLOT_NAME = "alignment_metrics.png"


def parse_layers(value: str) -> list[int] | None:
    """`"all"` -> None; `"1,4,8"` or `"2-6"` (ranges inclusive, mixable) -> a list of block indices."""
    if value.strip().lower() == "all":
        return None
    layers = []
    try:
        for part in value.split(","):
            first, _, last = part.strip().partition("-")
            first, last = int(first), int(last or first)
            if last < first:
                raise ValueError
            layers.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all' or block indices like '2,4,6' or '1-8' (ranges ascending), got {value!r}"
        ) from None
    return layers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_repa.evaluate_alignment", description=__doc__.splitlines()[0]
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="REPAPipeline folder (with transformer/) or Hub repo, or a SiTTransformer2DModel folder.",
    )
    model.add_argument(
        "--encoder",
        default=None,
        help="Alignment encoder (Hub id or folder, e.g. the demo's outputs/demo/encoder) for CKNNA; without it only "
        "the probe is run.",
    )
    model.add_argument(
        "--encoder_num_tokens",
        type=int,
        default=None,
        help="Token grid the encoder is run for (default: the SiT's token count, as in training).",
    )
    model.add_argument(
        "--path_type",
        choices=PATH_TYPES,
        default=None,
        help="Flow path of the model (default: the pipeline scheduler's, else linear).",
    )
    model.add_argument("--latent_scale", type=float, default=None, help="Latent scale (default: the pipeline's).")
    model.add_argument("--latent_shift", type=float, default=None, help="Latent shift (default: the pipeline's).")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub dataset id or dataset folder (prepare_latents output).")
    data.add_argument("--train_data_dir", default=None, help="Image folder with one sub-folder per class.")
    data.add_argument("--dataset_split", default="train")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--cache_dir", default=None, help="`datasets` / Hub cache folder.")
    data.add_argument("--num_images", type=int, default=1000, help="Images used (a seeded random subset).")

    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--timestep", type=float, default=0.5, help="Flow time t in [0, 1] (1 = pure noise).")
    metrics.add_argument(
        "--layers", type=parse_layers, default="all", help="Blocks to measure: 'all', '2,4,6' or '1-8' (1-based)."
    )
    metrics.add_argument("--topk", type=int, default=10, help="CKNNA neighbours (REPA: 10).")
    metrics.add_argument("--probe_test_fraction", type=float, default=0.2, help="Images held out to test the probe.")
    metrics.add_argument("--probe_epochs", type=int, default=100)
    metrics.add_argument("--probe_lr", type=float, default=0.1)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="alignment_metrics")
    run.add_argument("--seed", type=int, default=0, help="Image subset, noise, probe split and probe training.")
    run.add_argument("--batch_size", type=int, default=64, help="Images per forward pass.")
    run.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = parser.parse_args(argv)

    if (args.dataset_name is None) == (args.train_data_dir is None):
        parser.error("pass exactly one of --dataset_name and --train_data_dir.")
    if not 0.0 <= args.timestep <= 1.0:
        parser.error(f"--timestep is a flow time in [0, 1] (0 = data, 1 = pure noise), got {args.timestep}.")
    if args.topk < 2:
        parser.error(f"--topk must be >= 2, got {args.topk}.")
    if args.num_images <= args.topk:
        parser.error(f"--num_images ({args.num_images}) must exceed --topk ({args.topk}) for CKNNA.")
    if not 0.0 < args.probe_test_fraction < 1.0:
        parser.error(f"--probe_test_fraction must be in (0, 1), got {args.probe_test_fraction}.")
    num_test = round(args.num_images * args.probe_test_fraction)
    if num_test < 1 or args.num_images - num_test < 2:
        parser.error(
            f"--num_images {args.num_images} with --probe_test_fraction {args.probe_test_fraction} leaves "
            f"{args.num_images - num_test} training and {num_test} test images for the probe; it needs >= 2 and >= 1."
        )
    for option in ("batch_size", "probe_epochs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1.")
    if args.probe_lr <= 0:
        parser.error("--probe_lr must be > 0.")
    if args.encoder_num_tokens is not None and args.encoder_num_tokens < 1:
        parser.error("--encoder_num_tokens must be >= 1.")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_model_folder(name_or_path: str, cache_dir: str | None = None) -> Path:
    """A local folder for `name_or_path`; a Hub repo is downloaded (its config files, transformer, scheduler, vae)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    if os.path.exists(name_or_path):
        raise ValueError(f"--pretrained_model_name_or_path {name_or_path} is a file; pass the model's folder.")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name_or_path,
                cache_dir=cache_dir,
                allow_patterns=["*.json", "transformer/*", "scheduler/*", "vae/*"],
            )
        )
    except Exception as error:  # any Hub failure (offline, not found, gated) becomes one clear message
        raise ValueError(
            f"--pretrained_model_name_or_path {name_or_path!r} is not a local folder and could not be fetched from "
            f"the Hub ({type(error).__name__}: {error})."
        ) from error


def load_model(args: argparse.Namespace) -> tuple[SiTTransformer2DModel, dict[str, Any]]:
    """
    The transformer (eval mode) and what the pipeline knows about it: `path_type`, `latent_scale`, `latent_shift`,
    and `vae_folder` (a folder with the VAE, or None).
    """
    folder = resolve_model_folder(args.pretrained_model_name_or_path, args.cache_dir)
    pipeline_config = _read_json(folder / "model_index.json")
    if (folder / "transformer" / "config.json").is_file():
        transformer_folder = folder / "transformer"
    elif (folder / "config.json").is_file():
        transformer_folder = folder
    else:
        raise ValueError(
            f"{folder} holds neither a pipeline (transformer/config.json) nor a transformer (config.json): pass the "
            "output folder of train_repa.py or convert.py, or its transformer/ subfolder."
        )
    class_name = _read_json(transformer_folder / "config.json").get("_class_name")
    if class_name != SiTTransformer2DModel.__name__:
        raise ValueError(f"{transformer_folder} holds a {class_name!r}, not a SiTTransformer2DModel.")
    transformer = SiTTransformer2DModel.from_pretrained(transformer_folder).eval()

    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    vae_entry = pipeline_config.get("vae")
    has_vae = bool(vae_entry and vae_entry[0] is not None) and (folder / "vae" / "config.json").is_file()
    # The pipeline stores diffusers' `shift_factor` (decoded as x / scale + shift_factor; older folders stored the
    # encode-side `latent_shift`); this script encodes as z * scale + latent_shift. A null scale is the VAE's.
    pipeline_scale = pipeline_config.get("latent_scale") or SD_VAE_LATENT_SCALE
    if pipeline_config.get("shift_factor") is not None:
        pipeline_shift = latent_shift_from_shift_factor(pipeline_config["shift_factor"], pipeline_scale)
    else:
        pipeline_shift = pipeline_config.get("latent_shift", 0.0)
    info = {
        "path_type": args.path_type or scheduler_config.get("path_type", "linear"),
        "latent_scale": args.latent_scale if args.latent_scale is not None else pipeline_scale,
        "latent_shift": args.latent_shift if args.latent_shift is not None else pipeline_shift,
        "vae_folder": folder / "vae" if has_vae else None,
    }
    return transformer, info


def load_data(args: argparse.Namespace, transformer: SiTTransformer2DModel, info: dict[str, Any]):
    """
    The dataset split, the images' side, and how the model input is made: `"moments"` (stored VAE posteriors),
    `"vae"` (raw images through the pipeline's VAE) or `"pixels"`. Raises a `ValueError` when the data cannot feed
    this model.
    """
    try:
        import datasets  # noqa: F401
    except ImportError as error:
        raise ImportError("evaluate_alignment needs `datasets`: pip install 'diffusers-repa[training]'.") from error
    from .data import load_image_dataset, load_rgb_image

    try:
        dataset = load_image_dataset(
            dataset_name=args.dataset_name,
            train_data_dir=args.train_data_dir,
            image_column=args.image_column,
            label_column=args.label_column,
            split=args.dataset_split,
            cache_dir=args.cache_dir,
        )
    except (FileNotFoundError, ValueError) as error:
        source = args.dataset_name or args.train_data_dir
        raise ValueError(f"Could not load split {args.dataset_split!r} of {source}: {error}") from error
    if len(dataset) < args.num_images:
        raise ValueError(
            f"The {args.dataset_split!r} split has {len(dataset)} images, fewer than --num_images {args.num_images}: "
            f"pass --num_images {len(dataset)} or fewer."
        )
    config = transformer.config
    if MOMENTS_COLUMN in dataset.column_names:
        channels, side, _ = dataset.features[MOMENTS_COLUMN].shape
        if (channels // 2, side) != (config.in_channels, config.sample_size):
            raise ValueError(
                f"The dataset's latents are {channels // 2}x{side}x{side} but the model takes "
                f"{config.in_channels}x{config.sample_size}x{config.sample_size}: use the data it was trained on."
            )
        width, _ = load_rgb_image(dataset[0][args.image_column]).size
        return dataset, width, "moments"
    if info["vae_folder"] is not None:
        vae_config = _read_json(info["vae_folder"] / "config.json")
        if vae_config.get("latent_channels") != config.in_channels:
            raise ValueError(
                f"The pipeline's VAE has {vae_config.get('latent_channels')} latent channels but the transformer "
                f"takes {config.in_channels}."
            )
        downsample = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
        return dataset, config.sample_size * downsample, "vae"
    if config.in_channels != 3:
        raise ValueError(
            f"The model works on {config.in_channels}-channel latents, but {args.pretrained_model_name_or_path} has no "
            "vae/ and the dataset has no stored VAE posteriors: pass a training/prepare_latents.py output folder as "
            "--dataset_name, or a pipeline folder that includes its VAE."
        )
    return dataset, config.sample_size, "pixels"


# ----------------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_features(
    args: argparse.Namespace,
    transformer: SiTTransformer2DModel,
    encoder: AlignmentEncoder | None,
    dataset,
    resolution: int,
    source: str,
    info: dict[str, Any],
    layers: list[int],
    device: torch.device,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, torch.Tensor, int]:
    """Mean-pooled hidden states per layer, encoder features, labels and the number of skipped images."""
    vae = None
    if source == "vae":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(info["vae_folder"]).to(device).eval()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
    if source == "moments":
        dataset = dataset.with_format("torch", columns=[MOMENTS_COLUMN], output_all_columns=True)
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    encoded, labels = [], []
    skipped, used, cursor = 0, 0, 0
    progress = tqdm(total=args.num_images, desc="Images", unit="img")
    while used < args.num_images:
        if cursor >= len(order):
            raise ValueError(
                f"Only {used} of the split's images could be read ({skipped} unusable): lower --num_images to {used}."
            )
        chunk = order[cursor : cursor + min(args.batch_size, args.num_images - used)]
        cursor += len(chunk)
        rows = dataset[chunk]
        images, kept = [], []
        for position, image in enumerate(rows[args.image_column]):
            pixels = preprocess_image(image, resolution)
            if pixels is None:
                skipped += 1
            else:
                images.append(pixels)
                kept.append(position)
        if not kept:
            continue
        images = torch.stack(images).to(device)
        indices = range(used, used + len(kept))  # per-image generators: independent of the batch size
        if source == "moments":
            moments = rows[MOMENTS_COLUMN][kept].to(device)
            clean = sample_posterior(
                moments, info["latent_scale"], info["latent_shift"], generator=image_generators(args.seed + 1, indices)
            )
        elif source == "vae":
            posterior = vae.encode(images.float() / 127.5 - 1.0).latent_dist
            clean = posterior.sample(generator=image_generators(args.seed + 1, indices))
            clean = clean * info["latent_scale"] + info["latent_shift"]
        else:
            clean = images.float() / 127.5 - 1.0
        states = sit_hidden_states(
            transformer,
            clean,
            args.timestep,
            layers,
            generator=image_generators(args.seed, indices),
            path_type=info["path_type"],
        )
        for layer, values in states.items():
            hidden[layer].append(values.cpu())
        if encoder is not None:
            encoded.append(encoder_features(encoder, images).cpu())
        labels.append(torch.as_tensor([int(rows[args.label_column][position]) for position in kept]))
        used += len(kept)
        progress.update(len(kept))
    progress.close()
    features = {layer: torch.cat(chunks) for layer, chunks in hidden.items()}
    return features, (torch.cat(encoded) if encoder is not None else None), torch.cat(labels), skipped


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def format_table(results: dict[str, Any]) -> str:
    """The per-layer table; `*` marks the model's alignment depth."""
    lines = [f"{'layer':>6}  {'CKNNA':>8}  {'probe acc':>9}"]
    for row in results["layers"]:
        mark = "*" if row["layer"] == results["alignment_depth"] else " "
        value = "-" if row["cknna"] is None else f"{row['cknna']:.4f}"
        lines.append(f"{row['layer']:>5}{mark}  {value:>8}  {row['probe_accuracy']:>9.4f}")
    if results["encoder_probe_accuracy"] is not None:
        lines.append(f"{'encoder':>6}  {'':>8}  {results['encoder_probe_accuracy']:>9.4f}")
    lines.append(
        f"({results['num_images']} images of {results['dataset']} [{results['dataset_split']}], t = "
        f"{results['timestep']}, topk = {results['topk']}; * = alignment depth {results['alignment_depth']}; probe: "
        f"{results['probe']['num_train']} train / {results['probe']['num_test']} test images)"
    )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Both metrics against the layer, the alignment depth marked, saved as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in results["layers"]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("cknna", "CKNNA vs encoder", axes[0]), ("probe_accuracy", "linear-probe accuracy", axes[1]))
    for key, title, axis in panels:
        values = [math.nan if row[key] is None else row[key] for row in results["layers"]]
        axis.plot(layers, values, marker="o")
        axis.axvline(results["alignment_depth"], color="gray", linestyle=":", label="alignment depth")
        axis.set_xlabel("layer (output of block i)")
        axis.set_title(title)
        axis.set_xticks(layers)
        axis.grid(alpha=0.3)
    if results["encoder_probe_accuracy"] is not None:
        axes[1].axhline(results["encoder_probe_accuracy"], color="tab:red", linestyle="--", label="encoder")
    axes[1].legend()
    name = Path(results["model"]).name or results["model"]
    figure.suptitle(f"{name}: t = {results['timestep']}, {results['num_images']} images of {results['dataset_split']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, print the table, write the JSON and the plot; returns the results."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("The alignment plot needs matplotlib: pip install 'diffusers-repa[eval]'.") from error
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    transformer, info = load_model(args)
    num_layers = transformer.config.num_layers
    layers = list(range(1, num_layers + 1)) if args.layers is None else sorted(set(args.layers))
    if not all(1 <= layer <= num_layers for layer in layers):
        raise ValueError(f"--layers must be block indices in [1, {num_layers}] for this model, got {args.layers}.")
    if transformer.class_embedder.embedding_table.num_embeddings <= transformer.config.num_classes:
        raise ValueError(
            "This SiT has no null class (trained with label dropout 0), so its hidden states cannot be read without "
            "injecting a label, as REPA's metrics require."
        )
    dataset, resolution, source = load_data(args, transformer, info)
    encoder = None
    if args.encoder is not None:
        side = transformer.config.sample_size // transformer.config.patch_size
        encoder = AlignmentEncoder.from_pretrained(
            args.encoder, resolution=resolution, num_tokens=args.encoder_num_tokens or side * side
        ).to(device)
    transformer.to(device)

    hidden, encoded, labels, skipped = collect_features(
        args, transformer, encoder, dataset, resolution, source, info, layers, device
    )
    num_test = round(args.num_images * args.probe_test_fraction)
    split = torch.randperm(args.num_images, generator=torch.Generator().manual_seed(args.seed + 2))
    test, train = split[:num_test], split[num_test:]
    num_classes = int(labels.max()) + 1

    def probe(features: torch.Tensor) -> float:
        return linear_probe_accuracy(
            features[train],
            labels[train],
            features[test],
            labels[test],
            num_classes=num_classes,
            epochs=args.probe_epochs,
            lr=args.probe_lr,
            seed=args.seed,
        )

    rows = []
    for layer in tqdm(layers, desc="Metrics per layer"):
        value = cknna(hidden[layer], encoded, topk=args.topk) if encoded is not None else None
        rows.append({"layer": layer, "cknna": value, "probe_accuracy": probe(hidden[layer])})
    results = {
        "model": str(args.pretrained_model_name_or_path),
        "encoder": args.encoder,
        "dataset": str(args.dataset_name or args.train_data_dir),
        "dataset_split": args.dataset_split,
        "num_images": args.num_images,
        "skipped_images": skipped,
        "input": source,
        "resolution": resolution,
        "timestep": args.timestep,
        "path_type": info["path_type"],
        "topk": args.topk,
        "seed": args.seed,
        "alignment_depth": transformer.config.alignment_depth,
        "class_label": "null",
        "pooling": "mean over patches",
        "probe": {
            "num_train": len(train),
            "num_test": num_test,
            "num_classes": num_classes,
            "epochs": args.probe_epochs,
            "lr": args.probe_lr,
        },
        "encoder_probe_accuracy": probe(encoded) if encoded is not None else None,
        "layers": rows,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / JSON_NAME).write_text(json.dumps(results, indent=2))
    plot(results, output_dir / PLOT_NAME)
    print(format_table(results))
    print(f"Wrote {output_dir / JSON_NAME} and {output_dir / PLOT_NAME}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
