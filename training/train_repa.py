#!/usr/bin/env python
# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Train a SiT with REPA (representation alignment, Yu et al. 2024) with accelerate, in diffusers' example style.

Each step draws a flow time t and noise, trains the SiT to predict the velocity of x_t, and aligns the hidden states
after block `--alignment_depth` (through an MLP projector) with a frozen encoder's patch features of the clean image:
`loss = denoising + proj_coeff * projection`. The defaults are the official `train.py`'s (SiT-XL/2, DINOv2-B, depth 8,
proj_coeff 0.5, AdamW 1e-4, global batch 256, EMA 0.9999, grad clip 1.0).

Data: a dataset prepared by `prepare_latents.py` (ADM crops + VAE posterior moments, re-sampled every step as the
official code does; optionally stored encoder features), or any image dataset (`--dataset_name`, `--train_data_dir`)
for pixel-space training. Outputs in `--output_dir`: `checkpoint-N/` folders (written atomically;
`--resume_from_checkpoint latest` resumes bit for bit), a `REPAPipeline` folder of the EMA weights with `projector/`,
`sample_grid.png`, a model card (README.md), and tensorboard/wandb logs. With `--lora_rank`, a pretrained SiT is
fine-tuned with a LoRA adapter instead, and only the adapter is saved.

    accelerate launch training/train_repa.py --config training/configs/sit-xl-2_imagenet256.yaml \
        --dataset_name my-user/imagenet-256-sdvae --output_dir sit-xl-2-repa
"""

import argparse
import concurrent.futures
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import diffusers
import numpy as np
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import create_repo, upload_folder
from peft import LoraConfig, set_peft_model_state_dict
from PIL import Image
from prepare_latents import FEATURES_PREFIX, MOMENTS_COLUMN, features_column
from safetensors.torch import load_file
from tqdm.auto import tqdm

from diffusers_repa import (
    SIT_PRESETS,
    REPAPipeline,
    REPAProjector,
    SiTEulerMaruyamaScheduler,
    SiTEulerScheduler,
    SiTTransformer2DModel,
)
from diffusers_repa.alignment import AlignmentEncoder, REPALoss, check_compatibility
from diffusers_repa.data import ImageTransform, SkippedImages, load_image_dataset, load_rgb_image, sample_posterior
from diffusers_repa.model_card import LORA_WEIGHT_NAME, build_model_card
from diffusers_repa.sample import caption, image_generators, make_grid, to_uint8
from diffusers_repa.training_utils import (
    RESUME_HISTORY,
    TRAINING_ARGS,
    TRAINING_STATE,
    CheckpointError,
    StopSignal,
    apply_resume_changes,
    compare_resume_args,
    ignore_stop_signals,
    list_checkpoints,
    load_resume_args,
    prepare_run_folder,
    save_checkpoint,
    value_history,
    with_resume_history,
    write_json_atomically,
)

logger = get_logger(__name__)

LORA_TARGET_MODULES = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
# What the trainer writes in --output_dir besides checkpoints and training_args.json (--overwrite_output_dir
# removes them).
RUN_OUTPUTS = (
    "transformer", "projector", "scheduler", "vae", "model_index.json", "README.md", "sample_grid.png", "samples",
    LORA_WEIGHT_NAME,
)  # fmt: skip
# Options a resume may change: they are applied from the first resumed step (and recorded in training_args.json).
# Any other changed option stops the resume, except these, which are not compared.
RESUME_CAN_CHANGE = (
    "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "ema_decay", "max_train_steps", "num_train_epochs", "proj_coeff",
    "proj_coeff_schedule", "alignment_stop_step", "checkpointing_steps", "checkpoints_total_limit", "validation_steps",
    "validation_class_labels", "validation_num_inference_steps", "validation_guidance_scale", "logging_dir",
    "report_to", "tracker_project_name", "push_to_hub", "push_checkpoints_to_hub", "hub_model_id", "hub_private_repo",
    "dataloader_num_workers", "cache_dir", "vae", "vae_subfolder", "allow_tf32", "gradient_checkpointing",
    "torch_compile",
)  # fmt: skip
RESUME_NOT_COMPARED = ("config", "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "encoders")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--config FILE` (YAML or JSON, keys = option names) supplies defaults the command line
    overrides. Where the official `train.py` names an option differently, its name is accepted as an alias."""
    parser = argparse.ArgumentParser(description="Train a SiT with REPA.")
    parser.add_argument("--config", default=None, help="YAML/JSON file of option values; command-line options win.")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="SiT-XL/2", choices=list(SIT_PRESETS), help="Official SiT preset.")
    model.add_argument(
        "--model_kwargs",
        type=json_object,
        default={},
        help='JSON overrides of the preset\'s config, e.g. \'{"num_layers": 6, "attention_head_dim": 32}\'.',
    )
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Start from this pipeline folder or Hub repo (its `transformer/`, and `projector/` when present) "
        "instead of a random preset: fine-tuning, or LoRA with --lora_rank.",
    )
    model.add_argument("--revision", default=None, help="Revision of --pretrained_model_name_or_path.")
    model.add_argument("--num_classes", type=int, default=None, help="Default: the label column's ClassLabel size.")
    model.add_argument(
        "--alignment_depth",
        "--encoder_depth",
        type=int,
        default=None,
        help="1-based block whose output is aligned (official --encoder-depth; default 8, or the pretrained model's).",
    )
    model.add_argument("--projector_dim", type=int, default=2048, help="Hidden width of the projector MLP.")
    model.add_argument("--qk_norm", action="store_true", help="LayerNorm on queries and keys (off officially).")
    model.add_argument(
        "--cfg_prob", type=float, default=0.1, help="Label dropout (null class) for classifier-free guidance."
    )
    model.add_argument(
        "--legacy",
        action="store_true",
        help="Also drop labels with --cfg_prob before the model (which drops again): the authors' early runs "
        "(effective null rate about 0.19).",
    )

    repa = parser.add_argument_group("REPA")
    repa.add_argument(
        "--encoder",
        "--enc_type",
        default="facebook/dinov2-base",
        help="Alignment encoder(s), comma-separated Hub ids or folders (one projector head each); `none` with "
        "--proj_coeff 0 trains a plain SiT.",
    )
    repa.add_argument("--proj_coeff", type=float, default=0.5, help="Weight of the alignment loss.")
    repa.add_argument(
        "--proj_coeff_schedule",
        choices=["constant", "linear", "cosine"],
        default="constant",
        help="Decay of proj_coeff to 0 at --alignment_stop_step (or --max_train_steps).",
    )
    repa.add_argument(
        "--alignment_stop_step",
        type=int,
        default=None,
        help="Stop aligning after this many steps (HASTE); the projector is then no longer run.",
    )
    repa.add_argument("--path_type", choices=["linear", "cosine"], default="linear")
    repa.add_argument("--prediction", choices=["v"], default="v", help="Only velocity prediction, as officially.")
    repa.add_argument("--weighting", choices=["uniform", "lognormal"], default="uniform", help="Time sampling.")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub id or local folder (e.g. prepare_latents.py output).")
    data.add_argument("--train_data_dir", default=None, help="Image folder with one sub-folder per class.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--dataset_split", default="train")
    data.add_argument("--cache_dir", default=None, help="`datasets` / Hub cache folder.")
    data.add_argument("--resolution", type=int, default=256, help="Image side (ADM center crop): 256 or 512.")
    data.add_argument("--dataloader_num_workers", "--num_workers", type=int, default=4)
    data.add_argument(
        "--vae",
        default="stabilityai/sd-vae-ft-ema",
        help="VAE that decodes samples, for latent datasets (the official sampler decodes with sd-vae-ft-ema).",
    )
    data.add_argument("--vae_subfolder", default=None)
    data.add_argument("--latent_scale", type=float, default=0.18215, help="Latents are z * scale + shift.")
    data.add_argument("--latent_shift", type=float, default=0.0)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--batch_size", type=int, default=256, help="Global batch: images per optimizer step over all processes."
    )
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_train_steps", type=int, default=400_000)
    optim.add_argument("--num_train_epochs", "--epochs", type=int, default=None, help="Optional bound on epochs.")
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument("--lr_scheduler", default="constant", help="diffusers `get_scheduler` name.")
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; <= 0 disables it.")
    optim.add_argument(
        "--ema_decay", type=float, default=0.9999, help="Constant EMA decay from the first step, as officially."
    )
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    optim.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls and convolutions on Ampere+.")
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument("--torch_compile", action="store_true", help="torch.compile the transformer.")
    optim.add_argument("--seed", type=int, default=0, help="Process i uses seed + i, as officially.")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora_rank", type=int, default=None, help="Train a LoRA adapter of this rank.")
    lora.add_argument("--lora_alpha", type=float, default=None, help="Default: the rank (scale 1).")
    lora.add_argument("--lora_target_modules", default=LORA_TARGET_MODULES, help="Comma-separated module names.")

    output = parser.add_argument_group("outputs")
    output.add_argument("--output_dir", default="sit-repa")
    output.add_argument("--logging_dir", default="logs", help="Tracker folder, inside --output_dir.")
    output.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none.")
    output.add_argument("--tracker_project_name", "--exp_name", default="repa")
    output.add_argument("--checkpointing_steps", type=int, default=50_000)
    output.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N.")
    output.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='A checkpoint folder, or "latest" (the newest complete one; a new run if there is none).',
    )
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Delete an earlier run's checkpoints and outputs in --output_dir, then start a new run there.",
    )
    output.add_argument("--validation_steps", "--sampling_steps", type=int, default=10_000)
    output.add_argument(
        "--validation_class_labels", type=int, nargs="+", default=None, help="Default: 8 classes spread evenly."
    )
    output.add_argument("--validation_num_inference_steps", type=int, default=50, help="Euler ODE steps.")
    output.add_argument("--validation_guidance_scale", type=float, default=4.0)

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final folder and card.")
    hub.add_argument("--push_checkpoints_to_hub", action="store_true", help="Also upload checkpoints, in background.")
    hub.add_argument("--hub_model_id", default=None, help="Default: the output folder's name.")
    hub.add_argument("--hub_token", default=None)
    hub.add_argument("--hub_private_repo", action="store_true")

    config_args, _ = parser.parse_known_args(argv)
    if config_args.config:
        parser.set_defaults(**_read_config(parser, config_args.config))
    args = parser.parse_args(argv)

    if (args.dataset_name is None) == (args.train_data_dir is None):
        parser.error("pass exactly one of --dataset_name and --train_data_dir.")
    args.encoders = [name.strip() for name in args.encoder.split(",") if name.strip().lower() not in ("", "none")]
    if args.proj_coeff > 0 and not args.encoders:
        parser.error("--proj_coeff > 0 needs an alignment --encoder (or pass --proj_coeff 0 for a plain SiT).")
    if args.lora_rank is not None and args.pretrained_model_name_or_path is None:
        parser.error("--lora_rank fine-tunes a pretrained SiT: pass --pretrained_model_name_or_path.")
    if args.push_checkpoints_to_hub and not args.push_to_hub:
        parser.error("--push_checkpoints_to_hub needs --push_to_hub.")
    if args.overwrite_output_dir and args.resume_from_checkpoint is not None:
        parser.error("--overwrite_output_dir starts a new run: it cannot be combined with --resume_from_checkpoint.")
    for option, (is_valid, requirement) in _RANGES.items():
        value = getattr(args, option)
        if value is not None and not is_valid(value):
            parser.error(f"--{option} must be {requirement}, got {value}.")
    return args


_POSITIVE = (
    "batch_size", "gradient_accumulation_steps", "max_train_steps", "num_train_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "validation_steps", "validation_num_inference_steps", "resolution", "projector_dim",
    "alignment_depth", "num_classes", "lora_rank",
)  # fmt: skip
# Valid values of the numeric options (None, where allowed, means "not set"); NaN fails every check.
_RANGES: dict[str, tuple[Any, str]] = {
    **{name: (lambda value: value > 0, "a positive integer") for name in _POSITIVE},
    **{name: (lambda value: value >= 0, ">= 0") for name in ("lr_warmup_steps", "alignment_stop_step")},
    "dataloader_num_workers": (lambda value: value >= 0, ">= 0"),
    "learning_rate": (lambda value: 0 < value < math.inf, "a positive number"),
    "lora_alpha": (lambda value: 0 < value < math.inf, "a positive number"),
    "ema_decay": (lambda value: 0 <= value < 1, "in [0, 1) (e.g. 0.9999)"),
    "cfg_prob": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "adam_beta1": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "adam_beta2": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "proj_coeff": (lambda value: 0 <= value < math.inf, ">= 0"),
    "adam_weight_decay": (lambda value: 0 <= value < math.inf, ">= 0"),
    "adam_epsilon": (lambda value: 0 <= value < math.inf, ">= 0"),
    "max_grad_norm": (lambda value: not math.isnan(value), "a number (<= 0 disables clipping)"),
    "latent_scale": (lambda value: math.isfinite(value) and value != 0, "a finite non-zero number"),
    "latent_shift": (math.isfinite, "a finite number"),
    "validation_guidance_scale": (math.isfinite, "a finite number"),
}


def json_object(text: str) -> dict[str, Any]:
    """argparse type of `--model_kwargs`: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_layers\": 6}}', got {text!r}")
    return value


def _read_config(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Option values from a YAML/JSON file, converted with each option's `type` (YAML reads `1e-4` as a string)."""
    with open(path, encoding="utf-8") as file:
        values = yaml.safe_load(file) or {}
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"{path}: unknown option(s) {', '.join(unknown)}.")
    for name, value in values.items():
        convert = actions[name].type
        if convert is not None and convert is not json_object and isinstance(value, str):
            values[name] = convert(value)
    return values


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation per epoch, seeded by `(seed, epoch)`: the same order on every process and after a resume,
    without touching the global RNG (which the training step uses)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()


class TrainingBatches(torch.utils.data.Dataset):
    """
    Batches of a `datasets` dataset for the training loop, fetched with one Arrow read per batch (`__getitems__`).

    Images go through [`ImageTransform`] (decode, RGB, ADM crop; unusable ones are dropped with a `skipped` record);
    array columns (VAE moments, stored encoder features) come as tensors, filtered the same way.
    """

    def __init__(self, dataset: datasets.Dataset, transform: ImageTransform, array_columns: list[str]):
        self.dataset = dataset.with_format("torch", columns=array_columns, output_all_columns=True)
        self.transform = transform
        self.array_columns = array_columns

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        rows = self.dataset[indices]
        columns = (self.transform.image_column, self.transform.label_column)
        examples = self.transform({column: rows[column] for column in columns})
        kept = [index for index, pixels in enumerate(examples["pixel_values"]) if pixels is not None]
        batch = self.transform.collate(
            [{name: values[index] for name, values in examples.items()} for index in range(len(indices))]
        )
        for column in self.array_columns:
            batch[column] = rows[column][kept]
        return batch


def collate_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`TrainingBatches` returns whole batches already."""
    return batch


def load_training_data(args: argparse.Namespace) -> tuple[datasets.Dataset, dict[str, Any]]:
    """
    Load the dataset and describe it: latent or pixel space, sample size, channels, classes and their names.
    Raises a `ValueError` naming the option to change when the data does not fit the options.
    """
    dataset = load_image_dataset(
        dataset_name=args.dataset_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        label_column=args.label_column,
        split=args.dataset_split,
        cache_dir=args.cache_dir,
    )
    info: dict[str, Any] = {"latent": MOMENTS_COLUMN in dataset.column_names}
    prepared = info["latent"] or any(name.startswith(FEATURES_PREFIX) for name in dataset.column_names)
    if prepared:
        width, height = load_rgb_image(dataset[0][args.image_column]).size
        if (width, height) != (args.resolution, args.resolution):
            raise ValueError(
                f"The dataset was prepared at {width}x{height} but --resolution is {args.resolution}: pass "
                f"--resolution {width}, or prepare the data again at {args.resolution}."
            )
    if info["latent"]:
        channels, side, _ = dataset.features[MOMENTS_COLUMN].shape
        info.update(in_channels=channels // 2, sample_size=side)
    else:
        info.update(in_channels=3, sample_size=args.resolution)

    label_feature = dataset.features[args.label_column]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    num_classes = args.num_classes or (len(names) if names else None)
    if num_classes is None:
        raise ValueError(f"The label column {args.label_column!r} is not a ClassLabel: pass --num_classes.")
    if names and num_classes < len(names):
        raise ValueError(f"--num_classes {num_classes} is below the dataset's {len(names)} classes.")
    info["num_classes"] = num_classes
    info["id2label"] = {str(index): name for index, name in enumerate(names)} if names else None
    return dataset, info


# ----------------------------------------------------------------------------------------------------------------------
# Runs and resumes
# ----------------------------------------------------------------------------------------------------------------------


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace, output_dir: Path) -> Path | None:
    """The checkpoint to resume from (or None), after [`prepare_run_folder`] made `output_dir` ready."""
    required = ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
    required += ["transformer_lora"] if args.lora_rank is not None else ["transformer", "transformer_ema"]
    required += ["projector"] if args.proj_coeff > 0 else []
    try:
        return prepare_run_folder(
            accelerator,
            output_dir,
            args.resume_from_checkpoint,
            overwrite=args.overwrite_output_dir,
            required=required,
            run_outputs=[*RUN_OUTPUTS, args.logging_dir],
        )
    except CheckpointError as error:  # an explicit checkpoint that is incomplete or damaged
        raise ValueError(
            f"--resume_from_checkpoint {args.resume_from_checkpoint}: {error}. Resume from another checkpoint "
            "(`latest` picks the newest complete one)."
        ) from None


def resume_args(args: argparse.Namespace, run_args: dict[str, Any], resume_path: Path) -> tuple[dict, dict]:
    """
    Compare this command's options with those `resume_path` was trained with: refused changes raise one error
    listing them all; the others are returned (to apply and log), with `run_args` plus the history of changes.
    """
    saved = load_resume_args(resume_path)
    if saved is None:
        logger.warning(f"{resume_path} does not record its options: they cannot be compared with this command's.")
        return run_args, {}
    diff = compare_resume_args(saved, run_args, RESUME_CAN_CHANGE, RESUME_NOT_COMPARED)
    if "proj_coeff" in diff.applied and (saved["proj_coeff"] > 0) != (args.proj_coeff > 0):
        diff.refused["proj_coeff"] = diff.applied.pop("proj_coeff")  # turns the alignment (its projector) on or off
    if diff.refused:
        raise ValueError(diff.refusal(resume_path))
    step = json.loads((resume_path / TRAINING_STATE).read_text())["global_step"]
    for name, (old, new) in diff.applied.items():
        logger.warning(f"{name} changed {old} -> {new} on resume (from step {step + 1}).")
    return with_resume_history(saved, run_args, diff.applied, step), diff.applied


def register_checkpoint_hooks(accelerator: Accelerator, ema: EMAModel | None, lora: bool) -> None:
    """Save and load the models of a checkpoint in diffusers' format: `transformer/` (or `transformer_lora/`),
    `transformer_ema/` and `projector/`, instead of accelerate's `model.safetensors` files."""

    def save_model_hook(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                if isinstance(model, REPAProjector):
                    model.save_pretrained(os.path.join(checkpoint_dir, "projector"))
                elif lora:
                    model.save_lora_adapter(os.path.join(checkpoint_dir, "transformer_lora"))
                else:
                    model.save_pretrained(os.path.join(checkpoint_dir, "transformer"))
            if ema is not None:
                # EMAModel builds a randomly initialised model to save: keep that off the training's random stream, so
                # that a run's numbers do not depend on when it saved (an extra checkpoint on SIGTERM, a new cadence).
                with torch.random.fork_rng(devices=[]):
                    ema.save_pretrained(os.path.join(checkpoint_dir, "transformer_ema"))
        weights.clear()  # everything is saved above, in diffusers' format

    def load_model_hook(models, checkpoint_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, REPAProjector):
                model.load_state_dict(REPAProjector.from_pretrained(checkpoint_dir, subfolder="projector").state_dict())
            elif lora:
                adapter = load_file(os.path.join(checkpoint_dir, "transformer_lora", LORA_WEIGHT_NAME))
                set_peft_model_state_dict(model, adapter, adapter_name="default")
            else:
                loaded = SiTTransformer2DModel.from_pretrained(checkpoint_dir, subfolder="transformer")
                model.load_state_dict(loaded.state_dict())
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(checkpoint_dir, "transformer_ema"), SiTTransformer2DModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------------------------------------


def proj_coeff_at(step: int, args: argparse.Namespace) -> float:
    """The alignment coefficient of optimizer step `step` (0-based): constant, or decayed to 0 at the stop step."""
    stop = args.alignment_stop_step if args.alignment_stop_step is not None else args.max_train_steps
    if step >= stop:
        return 0.0
    progress = step / stop
    if args.proj_coeff_schedule == "linear":
        return args.proj_coeff * (1.0 - progress)
    if args.proj_coeff_schedule == "cosine":
        return args.proj_coeff * 0.5 * (1.0 + math.cos(math.pi * progress))
    return args.proj_coeff


def non_finite_error(what: str, step: int, last_checkpoint: Path | None) -> FloatingPointError:
    """The error that stops training on a non-finite loss or gradient, before the step is applied."""
    return FloatingPointError(
        f"The {what} at step {step}; training stopped before applying it. Last checkpoint: "
        f"{last_checkpoint or 'none'}. Resume from it (--resume_from_checkpoint latest) with a lower --learning_rate, "
        "--mixed_precision bf16, or a smaller --max_grad_norm."
    )


def drop_labels(class_labels: torch.Tensor, probability: float, null_class: int) -> torch.Tensor:
    """`--legacy`: replace labels by the null class with `probability`, before the model's own dropout."""
    drop = torch.rand(class_labels.shape[0], device=class_labels.device) < probability
    return torch.where(drop, torch.full_like(class_labels, null_class), class_labels)


def build_pipeline(
    transformer: SiTTransformer2DModel, scheduler, vae: AutoencoderKL | None, info: dict, args: argparse.Namespace
) -> REPAPipeline:
    """A `REPAPipeline` around the given modules; pixel-space models get latent scale 1 (pixels in [-1, 1])."""
    return REPAPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        id2label=info["id2label"],
        latent_scale=args.latent_scale if info["latent"] else 1.0,
        latent_shift=args.latent_shift if info["latent"] else 0.0,
    )


@torch.no_grad()
def sample_grid(pipeline: REPAPipeline, args: argparse.Namespace) -> Image.Image:
    """A labelled grid of the validation classes, from fixed per-image noise (the same at every validation)."""
    labels = args.validation_class_labels
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        labels,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        guidance_interval=(0.0, 1.0),
        generator=image_generators(args.seed, range(len(labels))),
        output_type="np",
    ).images
    captions = [caption(pipeline, label) for label in labels]
    scale = max(1, 128 // images.shape[1])  # small images are enlarged so that they (and their captions) are legible
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return make_grid(to_uint8(images), captions, columns=min(len(labels), 8))


def log_validation(
    transformer: torch.nn.Module,
    ema: EMAModel | None,
    vae: AutoencoderKL | None,
    info: dict,
    args: argparse.Namespace,
    accelerator: Accelerator,
    step: int,
) -> Path:
    """Sample the validation grid from the EMA weights (swapped in and out), save it and send it to the trackers."""
    model = accelerator.unwrap_model(transformer)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        pipeline = build_pipeline(model, SiTEulerScheduler(path_type=args.path_type), vae, info, args)
        with accelerator.autocast():
            grid = sample_grid(pipeline, args)
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())
    path = Path(args.output_dir) / "samples" / f"step-{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid)}, step=step)
    return path


def public_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options without the Hub token, for `training_args.json` and the trackers."""
    return {key: value for key, value in vars(args).items() if key != "hub_token"}


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options in the flat scalar form trackers (tensorboard hparams) accept."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in public_args(args).items()
    }


def wait_for_uploads(uploads: list[concurrent.futures.Future]) -> None:
    """Wait for the background checkpoint uploads; a failed upload is reported, not fatal."""
    for upload in uploads:
        try:
            upload.result()
        except Exception as error:  # noqa: BLE001 - any Hub/network error
            logger.warning(f"A checkpoint upload to the Hub failed: {error}")
    uploads.clear()


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    """Train as the options say. SIGTERM, SIGINT and SIGUSR1 stop the run after the current step, with a checkpoint."""
    with StopSignal() as stop:
        train(args, stop)


def train(args: argparse.Namespace, stop: StopSignal) -> None:
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- Checks and set-up that can fail: all before the first step ----
    micro_batches = accelerator.num_processes * args.gradient_accumulation_steps
    if args.batch_size % micro_batches:
        raise ValueError(
            f"--batch_size {args.batch_size} (global) must be divisible by processes x gradient_accumulation_steps "
            f"= {micro_batches}."
        )
    local_batch_size = args.batch_size // micro_batches

    run_args = public_args(args)  # the options as given, saved in training_args.json and in every checkpoint
    resume_path = prepare_output_dir(accelerator, args, output_dir)
    changes = {}
    if resume_path is not None:
        run_args, changes = resume_args(args, run_args, resume_path)
    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        repo_id = create_repo(
            args.hub_model_id or output_dir.name, exist_ok=True, private=args.hub_private_repo, token=args.hub_token
        ).repo_id

    dataset, info = load_training_data(args)
    vae = None
    if info["latent"]:
        vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder, cache_dir=args.cache_dir)
        vae = vae.to(accelerator.device).eval().requires_grad_(False)
        vae_side = info["sample_size"] * 2 ** (len(vae.config.block_out_channels) - 1)
        if vae_side != args.resolution:
            raise ValueError(
                f"The dataset's latents are {info['sample_size']}x{info['sample_size']}, which {args.vae} decodes to "
                f"{vae_side} px, but --resolution is {args.resolution}."
            )

    set_seed(args.seed)  # the same initial weights on every process
    if args.pretrained_model_name_or_path:
        transformer = SiTTransformer2DModel.from_pretrained(
            args.pretrained_model_name_or_path,
            subfolder="transformer",
            revision=args.revision,
            cache_dir=args.cache_dir,
        )
        expected = {
            "sample_size": info["sample_size"],
            "in_channels": info["in_channels"],
            "num_classes": info["num_classes"],
        }
        wrong = {key: transformer.config[key] for key, value in expected.items() if transformer.config[key] != value}
        if wrong:
            raise ValueError(f"The pretrained transformer has {wrong} but the data needs {expected}.")
        if args.alignment_depth is not None and args.alignment_depth != transformer.config.alignment_depth:
            if not 1 <= args.alignment_depth <= transformer.config.num_layers:
                raise ValueError(
                    f"--alignment_depth must be in [1, {transformer.config.num_layers}], got {args.alignment_depth}."
                )
            transformer.register_to_config(alignment_depth=args.alignment_depth)
    else:
        config = SiTTransformer2DModel.preset_config(
            args.model,
            sample_size=info["sample_size"],
            in_channels=info["in_channels"],
            num_classes=info["num_classes"],
            class_dropout_prob=args.cfg_prob,
            qk_norm=args.qk_norm,
            alignment_depth=8 if args.alignment_depth is None else args.alignment_depth,
        )
        config.update(args.model_kwargs)
        transformer = SiTTransformer2DModel(**config)

    encoders, projector, stored_columns = [], None, []
    if args.proj_coeff > 0:
        side = transformer.config.sample_size // transformer.config.patch_size
        encoders = [
            AlignmentEncoder.from_pretrained(
                name, resolution=args.resolution, num_tokens=side * side, cache_dir=args.cache_dir
            )
            for name in args.encoders
        ]
        projector = REPAProjector(
            transformer.hidden_size, args.projector_dim, [encoder.embed_dim for encoder in encoders]
        )
        if args.pretrained_model_name_or_path:
            try:
                projector = REPAProjector.from_pretrained(args.pretrained_model_name_or_path, subfolder="projector")
            except OSError:
                logger.info("The pretrained model has no projector: training a new one.")
        check_compatibility(encoders, transformer, projector)
        for encoder in encoders:
            column = features_column(encoder.name)
            if column in dataset.column_names:
                shape = tuple(dataset.features[column].shape)
                if shape != (encoder.num_tokens, encoder.embed_dim):
                    raise ValueError(
                        f"The dataset's stored features {column!r} are {shape}, but {encoder.name} gives "
                        f"{(encoder.num_tokens, encoder.embed_dim)} here: prepare the data with the same encoder and "
                        "--encoder_num_tokens as the model's token count."
                    )
                logger.info(f"Using the features stored in column {column!r} for {encoder.name}.")
            stored_columns.append(column if column in dataset.column_names else None)
        encoders = [encoder.to(accelerator.device) for encoder in encoders]
    set_seed(args.seed + accelerator.process_index)  # the training randomness differs per process, as officially

    if args.lora_rank is not None:
        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_alpha or args.lora_rank,
                init_lora_weights="gaussian",
                target_modules=args.lora_target_modules.split(","),
            )
        )
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if args.torch_compile:
        transformer.compile()
    transformer.train()
    ema = None
    if args.lora_rank is None:
        ema = EMAModel(
            transformer.parameters(),
            decay=args.ema_decay,
            min_decay=args.ema_decay,  # constant decay from the first step (diffusers' default warms up for ~90k steps)
            model_cls=SiTTransformer2DModel,
            model_config=transformer.config,
        )
        ema.to(accelerator.device)

    register_checkpoint_hooks(accelerator, ema, lora=args.lora_rank is not None)

    trainable = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    if projector is not None:
        trainable += list(projector.parameters())
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )

    array_columns = ([MOMENTS_COLUMN] if info["latent"] else []) + [column for column in stored_columns if column]
    transform = ImageTransform(args.resolution, args.image_column, args.label_column)
    sampler = EpochShuffleSampler(len(dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        TrainingBatches(dataset, transform, array_columns),
        batch_size=local_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_batch,
        num_workers=args.dataloader_num_workers,
        worker_init_fn=ignore_stop_signals,  # a preemption signal is handled by the main process (see below)
        generator=torch.Generator().manual_seed(args.seed),  # worker seeds, kept off the global RNG
    )
    if projector is None:
        transformer, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            transformer, optimizer, train_dataloader, lr_scheduler
        )
    else:
        transformer, projector, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            transformer, projector, optimizer, train_dataloader, lr_scheduler
        )
    if len(train_dataloader) == 0:
        raise ValueError(
            f"The dataset has {len(dataset)} images, fewer than one batch of {local_batch_size} per process."
        )
    num_epochs = args.num_train_epochs or math.inf
    if args.validation_class_labels is None:
        count = min(8, info["num_classes"])
        args.validation_class_labels = [round(i * (info["num_classes"] - 1) / max(count - 1, 1)) for i in range(count)]
    wrong = [label for label in args.validation_class_labels if not 0 <= label < info["num_classes"]]
    if wrong:
        raise ValueError(f"--validation_class_labels {wrong} are not class ids in [0, {info['num_classes'] - 1}].")

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))
    loss_fn = REPALoss(path_type=args.path_type, weighting=args.weighting, proj_coeff=args.proj_coeff)
    skipped = SkippedImages()
    # Raw image folders may lose images to decoding errors, so a process can get an empty batch (see below).
    images_can_drop = not (info["latent"] or any(stored_columns))

    global_step, batches_seen = 0, 0
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        if not (resume_path / f"random_states_{accelerator.process_index}.pkl").is_file():
            logger.warning(
                f"{resume_path} has no random state for process {accelerator.process_index} (it was saved by fewer "
                "processes): the resumed run will not repeat an uninterrupted one exactly.",
                main_process_only=False,
            )
        accelerator.load_state(str(resume_path))
        apply_resume_changes(changes, optimizer, lr_scheduler, ema, args)
        state = json.loads((resume_path / TRAINING_STATE).read_text())
        global_step, batches_seen = state["global_step"], state["batches_seen"]
    if accelerator.is_main_process:
        write_json_atomically(output_dir / TRAINING_ARGS, run_args)
    last_checkpoint = resume_path
    uploads: list[concurrent.futures.Future] = []  # background checkpoint uploads

    def checkpoint(push: bool) -> Path:
        """Save `checkpoint-<global_step>` (and push it to the Hub in the background if asked)."""
        wait_for_uploads(uploads)  # the previous upload must not race the pruning of its folder
        state = {"global_step": global_step, "batches_seen": batches_seen}
        path = save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit, run_args)
        if push and args.push_checkpoints_to_hub and accelerator.is_main_process:
            upload = upload_folder(
                repo_id=repo_id,
                folder_path=path,
                path_in_repo=path.name,
                commit_message=f"Checkpoint {global_step}",
                token=args.hub_token,
                run_as_future=True,
            )
            uploads.append(upload)
        return path

    logger.info("***** Running training *****")
    logger.info(f"  Examples = {len(dataset)}, batches per epoch and process = {len(train_dataloader)}")
    logger.info(f"  Global batch = {args.batch_size} ({local_batch_size} per process and micro-step)")
    logger.info(f"  Optimizer steps = {args.max_train_steps}, starting at {global_step}")
    progress_bar = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    unwrapped = accelerator.unwrap_model(transformer)
    null_class = unwrapped.config.num_classes
    window = torch.zeros(3, device=accelerator.device)  # loss, denoising, projection summed over a step's micro-steps
    step_start = time.perf_counter()
    epoch = batches_seen // len(train_dataloader)
    stopping = stop.should_stop(accelerator)  # a signal during the set-up: nothing to save yet
    while global_step < args.max_train_steps and epoch < num_epochs and not stopping:
        train_dataloader.set_epoch(epoch)
        offset = batches_seen % len(train_dataloader)
        loader = accelerator.skip_first_batches(train_dataloader, offset) if offset else train_dataloader
        for batch in loader:
            batches_seen += 1
            skipped.update(batch["skipped"])
            if images_can_drop:
                sizes = accelerator.gather(torch.tensor([len(batch["class_labels"])], device=accelerator.device))
                if sizes.min() == 0:
                    logger.warning(f"Skipping a batch whose images could not be read ({skipped}).")
                    continue
            proj_coeff = proj_coeff_at(global_step, args)
            with accelerator.accumulate(*([transformer] if projector is None else [transformer, projector])):
                images, class_labels = batch["pixel_values"], batch["class_labels"]
                if info["latent"]:
                    clean = sample_posterior(batch[MOMENTS_COLUMN], args.latent_scale, args.latent_shift)
                else:
                    clean = images.float() / 127.5 - 1.0
                target_features = None
                if proj_coeff > 0:
                    with accelerator.autocast():
                        target_features = [
                            batch[column] if column else encoder(images)
                            for encoder, column in zip(encoders, stored_columns, strict=True)
                        ]
                if args.legacy:
                    class_labels = drop_labels(class_labels, args.cfg_prob, null_class)
                output = loss_fn(transformer, projector, clean, class_labels, target_features, proj_coeff=proj_coeff)
                values = accelerator.reduce(
                    torch.stack([output.loss, output.denoising_loss, output.projection_loss]).detach(), "mean"
                )
                if not torch.isfinite(values[0]):
                    what = f"loss is {values[0].item()} (denoising {values[1].item()}, projection {values[2].item()})"
                    raise non_finite_error(what, global_step + 1, last_checkpoint)
                window += values / args.gradient_accumulation_steps
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                    grad_norm = accelerator.clip_grad_norm_(trainable, max_norm)
                    # fp16's gradient scaler skips such steps itself; otherwise they would poison the weights and EMA.
                    if accelerator.scaler is None and not torch.isfinite(grad_norm):
                        raise non_finite_error(f"gradient norm is {grad_norm.item()}", global_step + 1, last_checkpoint)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(unwrapped.parameters())
            global_step += 1
            progress_bar.update(1)
            now = time.perf_counter()
            logs = {
                "loss": window[0].item(),
                "denoising_loss": window[1].item(),
                "projection_loss": window[2].item(),
                "grad_norm": grad_norm.item(),
                "lr": lr_scheduler.get_last_lr()[0],
                "proj_coeff": proj_coeff,
                "images_per_second": args.batch_size / (now - step_start),
            }
            if skipped.total:
                logs.update(skipped.as_dict())
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", proj=f"{logs['projection_loss']:.4f}")
            window.zero_()
            step_start = now

            if global_step % args.checkpointing_steps == 0:
                last_checkpoint = checkpoint(push=True)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                path = log_validation(transformer, ema, vae, info, args, accelerator, global_step)
                logger.info(f"Validation grid: {path}")
            stopping = stop.should_stop(accelerator)  # the same answer on every process
            if stopping or global_step >= args.max_train_steps:
                break
        if stopping:
            break
        epoch += 1
    progress_bar.close()
    if stopping:  # SIGTERM/SIGINT/SIGUSR1: the step is complete; save it, so that a re-queued job loses nothing
        if last_checkpoint is None or last_checkpoint.name != f"checkpoint-{global_step}":
            last_checkpoint = checkpoint(push=False) if global_step > 0 else None
        accelerator.print(
            f"Stopped by {stop.received or 'a signal to another process'} at step {global_step}; "
            f"{f'saved {last_checkpoint}' if last_checkpoint else 'nothing to save'}. Run the same command with "
            "--resume_from_checkpoint latest to continue."
        )
        accelerator.end_training()
        return
    if skipped.total:
        logger.warning(f"Images skipped on this process: {skipped}", main_process_only=False)

    # ---- Final outputs: the EMA weights as a pipeline folder, the projector, a sample grid, the model card ----
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(transformer)
        if args.lora_rank is not None:
            model.save_lora_adapter(output_dir)
        else:  # a copy holding the EMA weights; the trained weights stay as they are on every process
            model = SiTTransformer2DModel.from_config(model.config).to(accelerator.device)
            ema.copy_to(model.parameters())
            scheduler = SiTEulerMaruyamaScheduler(path_type=args.path_type)
            build_pipeline(model, scheduler, vae, info, args).save_pretrained(output_dir)
        model.eval()
        if projector is not None:
            accelerator.unwrap_model(projector).save_pretrained(output_dir / "projector")
        grid_pipeline = build_pipeline(model, SiTEulerScheduler(path_type=args.path_type), vae, info, args)
        with accelerator.autocast():
            sample_grid(grid_pipeline, args).save(output_dir / "sample_grid.png")
        write_model_card(args, info, model, global_step, repo_id or args.hub_model_id or output_dir.name, run_args)
        if args.push_to_hub:
            wait_for_uploads(uploads)
            upload_folder(
                repo_id=repo_id,
                folder_path=output_dir,
                commit_message="End of training",
                ignore_patterns=["checkpoint-*", ".*", f"{args.logging_dir}/*", "samples/*", "training_args.json"],
                token=args.hub_token,
            )
        where = "LoRA adapter" if args.lora_rank is not None else "pipeline (EMA weights)"
        accelerator.print(
            f"\nTraining finished at step {global_step}. Outputs in {output_dir}:\n"
            f"  {where}: {output_dir}\n"
            f"  checkpoints: {', '.join(path.name for _, path in list_checkpoints(output_dir)) or 'none'}\n"
            f"  sample grid: {output_dir / 'sample_grid.png'} (validation grids in {output_dir / 'samples'})\n"
            f"  model card: {output_dir / 'README.md'}\n"
            f"  logs: {output_dir / args.logging_dir}"
        )
    accelerator.end_training()


def write_model_card(
    args: argparse.Namespace,
    info: dict,
    model: SiTTransformer2DModel,
    steps: int,
    repo_id: str,
    run_args: dict[str, Any] | None = None,
) -> None:
    """The run's model card, saved as README.md in the output folder; a value a resume changed shows its history."""
    config = model.config
    space = "VAE latents" if info["latent"] else "pixels"
    description = (
        f"A SiT ({config.num_layers} blocks, width {model.hidden_size}, patch {config.patch_size}, "
        f"{config.num_classes} classes) trained with REPA on `{args.dataset_name or args.train_data_dir}` at "
        f"{args.resolution}x{args.resolution} ({space}), aligning block {config.alignment_depth}."
    )
    hyperparameters = {
        "model": args.model,
        "alignment_depth": config.alignment_depth,
        "proj_coeff": args.proj_coeff,
        "proj_coeff_schedule": args.proj_coeff_schedule,
        "alignment_stop_step": args.alignment_stop_step,
        "path_type": args.path_type,
        "weighting": args.weighting,
        "cfg_prob": args.cfg_prob,
        "legacy": args.legacy,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "max_grad_norm": args.max_grad_norm,
        "ema_decay": None if args.lora_rank is not None else args.ema_decay,
        "mixed_precision": args.mixed_precision,
        "lora_rank": args.lora_rank,
        "seed": args.seed,
    }
    history = (run_args or {}).get(RESUME_HISTORY, [])
    hyperparameters = {name: value_history(name, value, history) for name, value in hyperparameters.items()}
    card = build_model_card(
        repo_id,
        model_description=description,
        encoders=args.encoders if args.proj_coeff > 0 else [],
        hyperparameters=hyperparameters,
        train_steps=steps,
        dataset=args.dataset_name,
        base_model=args.pretrained_model_name_or_path,
        lora=args.lora_rank is not None,
        sample_grid="sample_grid.png",
        example_label=args.validation_class_labels[0],
    )
    card.save(Path(args.output_dir) / "README.md")


if __name__ == "__main__":
    try:
        main(parse_args())
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint (the first one saves one)
        print("Interrupted: nothing saved since the last checkpoint.", file=sys.stderr)
        sys.exit(130)
