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
`sample_grid.png`, a model card (README.md), tensorboard/wandb logs, and with `--fid_steps` the FID of the EMA
weights (`eval_metrics.json`, and the card). With `--lora_rank`, a pretrained SiT is fine-tuned with a LoRA adapter
instead, and only the adapter is saved. The plumbing (data, checkpoints, resumes, validation) lives in
`diffusers_repa.training_utils`.

    accelerate launch training/train_repa.py --config training/configs/sit-xl-2_imagenet256.yaml \
        --dataset_name my-user/imagenet-256-sdvae --output_dir sit-xl-2-repa
"""

import argparse
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import PartialState
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import create_repo, upload_folder
from peft import LoraConfig
from tqdm.auto import tqdm

from diffusers_repa import SIT_PRESETS, REPAProjector, SiTTransformer2DModel
from diffusers_repa.alignment import AlignmentEncoder, REPALoss, check_compatibility
from diffusers_repa.data import SD_VAE_LATENT_SCALE, SkippedImages
from diffusers_repa.model_card import LORA_WEIGHT_NAME
from diffusers_repa.training_utils import (
    MOMENTS_COLUMN,
    TRAINING_ARGS,
    AlignmentTargets,
    CheckpointUploads,
    DatasetInfo,
    NonFiniteGuard,
    OutputDirLock,
    PipelineSpec,
    ProjCoeffSchedule,
    StepMetrics,
    StopSignal,
    TrainingEvaluation,
    TrainState,
    ValidationSettings,
    apply_resume_changes,
    batch_is_empty,
    check_data_parallel,
    check_option_ranges,
    checkpoint_contents,
    clean_sample,
    compile_blocks,
    configure_logging,
    encoder_names,
    json_object,
    load_training_data,
    load_training_state,
    log_validation,
    per_process_batch_size,
    prepare_training_run,
    public_args,
    read_config_file,
    register_checkpoint_hooks,
    resolve_fast_settings,
    restart_options,
    resume_options,
    save_checkpoint,
    save_final_outputs,
    tracker_config,
    training_dataloader,
    update_ema,
    use_fused_optimizer,
    write_json_atomically,
)

logger = get_logger(__name__)

LORA_TARGET_MODULES = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
# What the trainer writes in --output_dir besides checkpoints and training_args.json (--overwrite_output_dir
# removes them; the cached FID reference `fid_reference-*.npz` is kept).
RUN_OUTPUTS = (
    "transformer", "projector", "scheduler", "vae", "model_index.json", "README.md", "sample_grid.png", "samples",
    "eval_metrics.json", LORA_WEIGHT_NAME,
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
    "gradient_checkpointing_blocks", "torch_compile", "logging_steps", "fid_steps", "fid_num_samples", "fid_reference",
    "fid_reference_split", "fid_reference_num_images", "fid_num_inference_steps", "fid_guidance_scale",
    "fid_batch_size", "cknna_steps", "cknna_num_images",
    # Speed, not maths: the weights, optimizer state and EMA are float32 under any autocast; a change to fp16 is
    # refused by `resume_options` (the checkpoint holds no loss-scaler state).
    "fast", "mixed_precision",
)  # fmt: skip
# diffusers' schedules that need nothing but warm-up and total steps (piecewise_constant needs rules).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
RESUME_NOT_COMPARED = ("config", "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "encoders")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--config FILE` (YAML or JSON, keys = option names) supplies defaults the command line
    overrides. Where the official `train.py` names an option differently, its name is accepted as an alias."""
    parser = argparse.ArgumentParser(description="Train a SiT with REPA.")
    parser.add_argument("--config", default=None, help="YAML/JSON file of option values; command-line options win.")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        "--model",
        dest="model",
        default="SiT-XL/2",
        choices=list(SIT_PRESETS),
        help="Official SiT preset (`--model` is the official train.py's name).",
    )
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
        "--cfg_prob", type=float, default=0.1, help="Label dropout (null class) of a new model, for guidance."
    )
    model.add_argument(
        "--legacy",
        action="store_true",
        help="Also drop labels before the model (with its own `token_drop`, which then drops again): the authors' "
        "early runs (effective null rate about 0.19).",
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
    repa.add_argument("--weighting", choices=["uniform", "lognormal"], default="uniform", help="Time sampling.")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="Hub id or local folder (e.g. prepare_latents.py output).")
    data.add_argument("--train_data_dir", default=None, help="Image folder with one sub-folder per class.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--dataset_split", default="train")
    data.add_argument("--cache_dir", default=None, help="`datasets` / Hub cache folder.")
    data.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="Image side (ADM center crop): 256 or 512 for ImageNet, 32 in the demo.",
    )
    data.add_argument("--dataloader_num_workers", "--num_workers", type=int, default=4)
    data.add_argument(
        "--vae",
        default="stabilityai/sd-vae-ft-ema",
        help="VAE that decodes samples, for latent datasets (the official sampler decodes with sd-vae-ft-ema).",
    )
    data.add_argument("--vae_subfolder", default=None)
    data.add_argument("--latent_scale", type=float, default=SD_VAE_LATENT_SCALE, help="Latents are z * scale + shift.")
    data.add_argument("--latent_shift", type=float, default=0.0)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--batch_size", type=int, default=256, help="Global batch: images per optimizer step over all processes."
    )
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_train_steps", type=int, default=400_000)
    optim.add_argument("--num_train_epochs", "--epochs", type=int, default=None, help="Optional bound on epochs.")
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument(
        "--lr_scheduler", default="constant", choices=LR_SCHEDULERS, help="diffusers `get_scheduler` name."
    )
    optim.add_argument(
        "--lr_warmup_steps", type=int, default=0, help="Warm-up steps (of a schedule that has them, not `constant`)."
    )
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; <= 0 disables it.")
    optim.add_argument(
        "--ema_decay", type=float, default=0.9999, help="Constant EMA decay (the first update copies the weights)."
    )
    optim.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Autocast precision (default: accelerate's, or bf16 with --fast on CUDA). A resume may change it, "
        "except to fp16 (the checkpoint would lack its loss-scaler state).",
    )
    optim.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls and convolutions on Ampere+.")
    optim.add_argument("--gradient_checkpointing", action="store_true", help="Recompute activations in backward.")
    optim.add_argument(
        "--gradient_checkpointing_blocks",
        type=int,
        default=None,
        help="Checkpoint only the first N SiT blocks (implies --gradient_checkpointing): memory and time scale with N, "
        "so a batch that almost fits pays part of the slow-down (SiT-XL/2 at batch 256 in 80 GB: see README).",
    )
    optim.add_argument(
        "--torch_compile",
        action="store_true",
        default=None,
        help="Compile each transformer block (compile_repeated_blocks); --fast turns it on where CUDA runs.",
    )
    optim.add_argument(
        "--no_torch_compile",
        dest="torch_compile",
        action="store_false",
        help="Keep the model eager, also with --fast (e.g. where compiling fails).",
    )
    optim.add_argument(
        "--fast",
        action="store_true",
        help="The measured fast path. On CUDA: bf16 mixed precision (unless --mixed_precision or accelerate launch's "
        "precision is given), TF32 matmuls and --torch_compile; on every device: validation grids, the final grid and "
        "FID samples in the pipeline's fast mode (fast=True). On other devices (CPU) only the sampling: bf16 is 2-3.5x "
        "slower there and compiling costs more than short runs gain. What it turned on is recorded in "
        "training_args.json; a resume may add or remove it.",
    )
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
    output.add_argument(
        "--logging_steps", type=int, default=10, help="Log the means of the last N steps (reading them syncs the GPU)."
    )
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

    evaluation = parser.add_argument_group("evaluation while training (EMA weights; needs the `eval` extra)")
    evaluation.add_argument("--fid_steps", type=int, default=0, help="FID/sFID/precision/recall every N steps; 0: off.")
    evaluation.add_argument("--fid_num_samples", type=int, default=5000, help="Class-balanced samples per FID.")
    evaluation.add_argument(
        "--fid_reference",
        default=None,
        help="An ADM reference .npz, or a dataset (Hub id, folder) to build one from, cached in --output_dir.",
    )
    evaluation.add_argument("--fid_reference_split", default="train", help="Split of a --fid_reference dataset.")
    evaluation.add_argument(
        "--fid_reference_num_images", type=int, default=None, help="Random subset of the reference split (all: none)."
    )
    evaluation.add_argument("--fid_num_inference_steps", type=int, default=50, help="Euler ODE steps per sample.")
    evaluation.add_argument("--fid_guidance_scale", type=float, default=1.0, help="1: no classifier-free guidance.")
    evaluation.add_argument("--fid_batch_size", type=int, default=64, help="Images per sampling/Inception batch.")
    evaluation.add_argument(
        "--cknna_steps", type=int, default=0, help="CKNNA at the alignment layer every N steps; 0: off."
    )
    evaluation.add_argument("--cknna_num_images", type=int, default=512, help="Fixed training images for CKNNA.")

    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final folder and card.")
    hub.add_argument("--push_checkpoints_to_hub", action="store_true", help="Also upload checkpoints, in background.")
    hub.add_argument("--hub_model_id", default=None, help="Default: the output folder's name.")
    hub.add_argument("--hub_token", default=None)
    hub.add_argument("--hub_private_repo", action="store_true")

    config_args, _ = parser.parse_known_args(argv)
    if config_args.config:
        parser.set_defaults(**read_config_file(parser, config_args.config))
    args = parser.parse_args(argv)

    check_option_ranges(parser, args)
    if (args.dataset_name is None) == (args.train_data_dir is None):
        parser.error("pass exactly one of --dataset_name and --train_data_dir.")
    if args.proj_coeff > 0 and not encoder_names(args.encoder):
        parser.error("--proj_coeff > 0 needs an alignment --encoder (or pass --proj_coeff 0 for a plain SiT).")
    if args.lora_rank is not None and args.pretrained_model_name_or_path is None:
        parser.error("--lora_rank fine-tunes a pretrained SiT: pass --pretrained_model_name_or_path.")
    if args.push_checkpoints_to_hub and not args.push_to_hub:
        parser.error("--push_checkpoints_to_hub needs --push_to_hub.")
    if args.overwrite_output_dir and args.resume_from_checkpoint is not None:
        parser.error("--overwrite_output_dir starts a new run: it cannot be combined with --resume_from_checkpoint.")
    if args.lr_warmup_steps and args.lr_scheduler == "constant":  # diffusers' constant schedule ignores it
        parser.error("--lr_warmup_steps needs a schedule with warm-up: pass --lr_scheduler constant_with_warmup.")
    if args.fid_steps and args.fid_reference is None:
        parser.error("--fid_steps needs --fid_reference (an ADM reference .npz, or a dataset to build one from).")
    if args.cknna_steps and args.proj_coeff == 0:
        parser.error("--cknna_steps measures the alignment with the --encoder's features: it needs --proj_coeff > 0.")
    guided = [name for name in ("validation_guidance_scale", "fid_guidance_scale") if getattr(args, name) > 1]
    guided = [name for name in guided if name != "fid_guidance_scale" or args.fid_steps]
    if args.cfg_prob == 0 and guided:  # no null class to guide with: it failed at the first validation
        parser.error(
            f"--cfg_prob 0 trains no null class, which classifier-free guidance needs ({', '.join(guided)} > 1): "
            "pass --cfg_prob > 0, or 1 for the guidance scale(s)."
        )
    return args


def load_vae(args: argparse.Namespace, data: DatasetInfo, device: torch.device) -> AutoencoderKL | None:
    """The VAE that decodes a latent-space model's samples (None in pixel space), checked against the data."""
    if not data.latent:
        return None
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder, cache_dir=args.cache_dir)
    side = data.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    if side != args.resolution:
        raise ValueError(
            f"The dataset's latents are {data.sample_size}x{data.sample_size}, which {args.vae} decodes to {side} px, "
            f"but --resolution is {args.resolution}."
        )
    return vae.to(device).eval().requires_grad_(False)


def build_transformer(args: argparse.Namespace, data: DatasetInfo) -> SiTTransformer2DModel:
    """A new SiT from the preset (with --model_kwargs), or the pretrained one, checked against the data."""
    if not args.pretrained_model_name_or_path:
        config = SiTTransformer2DModel.preset_config(
            args.model,
            sample_size=data.sample_size,
            in_channels=data.in_channels,
            num_classes=data.num_classes,
            class_dropout_prob=args.cfg_prob,
            qk_norm=args.qk_norm,
            alignment_depth=8 if args.alignment_depth is None else args.alignment_depth,
        )
        return check_checkpointed_blocks(args, SiTTransformer2DModel(**{**config, **args.model_kwargs}))
    transformer = SiTTransformer2DModel.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="transformer", revision=args.revision, cache_dir=args.cache_dir
    )
    expected = {"sample_size": data.sample_size, "in_channels": data.in_channels, "num_classes": data.num_classes}
    wrong = {key: transformer.config[key] for key, value in expected.items() if transformer.config[key] != value}
    if wrong:
        raise ValueError(f"The pretrained transformer has {wrong} but the data needs {expected}.")
    # Options of a new model that a pretrained one fixes: refused when they differ, so that training_args.json and the
    # model card never record a value the run did not train with.
    other = {key: value for key, value in args.model_kwargs.items() if transformer.config.get(key) != value}
    if other:
        raise ValueError(
            f"--model_kwargs {other} configures a new model, but the pretrained transformer has "
            f"{ {key: transformer.config.get(key) for key in other} }: drop them, or pass its values."
        )
    fixed = {"cfg_prob": ("class_dropout_prob", args.cfg_prob), "qk_norm": ("qk_norm", args.qk_norm)}
    for option, (key, value) in fixed.items():
        if transformer.config[key] != value:
            if option == "qk_norm":
                fix = "--qk_norm" if transformer.config[key] else "no --qk_norm"
            else:
                fix = f"--cfg_prob {transformer.config[key]}"
            raise ValueError(
                f"The pretrained transformer has {key}={transformer.config[key]}, but --{option} is {value}: it sets a "
                f"new model's value and cannot change a pretrained one. Pass {fix}."
            )
    if args.alignment_depth is not None and args.alignment_depth != transformer.config.alignment_depth:
        if not 1 <= args.alignment_depth <= transformer.config.num_layers:
            raise ValueError(
                f"--alignment_depth must be in [1, {transformer.config.num_layers}], got {args.alignment_depth}."
            )
        transformer.register_to_config(alignment_depth=args.alignment_depth)
    return check_checkpointed_blocks(args, transformer)


def check_checkpointed_blocks(args: argparse.Namespace, transformer: SiTTransformer2DModel) -> SiTTransformer2DModel:
    """Refuse a --gradient_checkpointing_blocks the SiT does not have, before any training."""
    blocks, depth = args.gradient_checkpointing_blocks, transformer.config.num_layers
    if blocks is not None and not 1 <= blocks <= depth:
        raise ValueError(f"--gradient_checkpointing_blocks must be in [1, {depth}] (the SiT's blocks), got {blocks}.")
    return transformer


def build_alignment(
    args: argparse.Namespace, transformer: SiTTransformer2DModel, dataset, device: torch.device
) -> tuple[REPAProjector | None, AlignmentTargets | None]:
    """The projector and the alignment targets (encoders, or the dataset's stored features); None without REPA."""
    if args.proj_coeff == 0:
        return None, None
    side = transformer.config.sample_size // transformer.config.patch_size
    encoders = [
        AlignmentEncoder.from_pretrained(name, resolution=args.resolution, num_tokens=side**2, cache_dir=args.cache_dir)
        for name in encoder_names(args.encoder)
    ]
    projector = REPAProjector(transformer.hidden_size, args.projector_dim, [encoder.embed_dim for encoder in encoders])
    if args.pretrained_model_name_or_path:
        try:
            projector = REPAProjector.from_pretrained(
                args.pretrained_model_name_or_path, subfolder="projector", revision=args.revision,
                cache_dir=args.cache_dir,
            )  # fmt: skip
        except OSError:
            logger.info("The pretrained model has no projector: training a new one.")
        if projector.config.projector_dim != args.projector_dim:  # recorded, so never silently another width
            raise ValueError(
                f"The pretrained projector is {projector.config.projector_dim} wide, but --projector_dim is "
                f"{args.projector_dim}: pass --projector_dim {projector.config.projector_dim}."
            )
    check_compatibility(encoders, transformer, projector)
    return projector, AlignmentTargets.for_dataset(encoders, dataset).to(device)


def prepare_for_training(
    args: argparse.Namespace, transformer: SiTTransformer2DModel, projector: REPAProjector | None, accelerator
) -> tuple[EMAModel | None, list[torch.nn.Parameter], torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """LoRA, gradient checkpointing and compilation of the transformer; its EMA; AdamW and the learning-rate
    schedule over the trainable parameters (the LoRA adapter or the whole SiT, and the projector)."""
    if args.lora_rank is not None:
        transformer.requires_grad_(False)
        alpha, modules = args.lora_alpha or args.lora_rank, args.lora_target_modules.split(",")
        transformer.add_adapter(
            LoraConfig(r=args.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=modules)
        )
    if args.gradient_checkpointing or args.gradient_checkpointing_blocks is not None:
        transformer.enable_gradient_checkpointing(num_blocks=args.gradient_checkpointing_blocks)
    if args.torch_compile:  # each SiT block (compile_repeated_blocks), as the measured fast path
        compile_blocks(transformer)
    transformer.train()
    ema = None
    if args.lora_rank is None:  # constant decay (diffusers' default warms up over ~90k steps); update 1 copies W_1
        ema = EMAModel(transformer.parameters(), decay=args.ema_decay, min_decay=args.ema_decay, foreach=True,
                       model_cls=SiTTransformer2DModel, model_config=transformer.config)  # fmt: skip
        ema.to(accelerator.device)
    trainable = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    trainable += list(projector.parameters()) if projector is not None else []
    optimizer = torch.optim.AdamW(
        trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=use_fused_optimizer(accelerator.device),
    )  # fmt: skip
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )  # fmt: skip
    return ema, trainable, optimizer, lr_scheduler


def run_uses_cuda() -> bool:
    """
    Whether the run's `Accelerator` will be on CUDA, asked before it is built (for `--fast`): accelerate's own choice
    of device, made once for the process (`PartialState`, which the `Accelerator` then reuses), with
    `ACCELERATE_USE_CPU` (`accelerate launch --cpu`) read as the `Accelerator` reads it. So a CPU launch on a GPU
    machine counts as the CPU, which `torch.cuda.is_available()` alone would get wrong.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device.type == "cuda"


def main(args: argparse.Namespace) -> None:
    """Train as the options say. SIGTERM, SIGINT and SIGUSR1 stop the run after the current step, with a checkpoint."""
    with StopSignal() as stop, OutputDirLock() as lock:
        train(args, stop, lock)


def train(args: argparse.Namespace, stop: StopSignal, lock: OutputDirLock | None = None) -> None:
    output_dir = Path(args.output_dir)
    # --fast decides the mixed precision, so it is resolved before the Accelerator is built; the values the run uses
    # replace the options, so that training_args.json, the trackers and the model card record them.
    fast = resolve_fast_settings(
        args, cuda=run_uses_cuda(), compile_supported=torch._dynamo.is_dynamo_supported(),
        launcher_precision=os.environ.get("ACCELERATE_MIXED_PRECISION"),
    )  # fmt: skip
    args = argparse.Namespace(**{**vars(args), **fast.as_args()})
    accumulation = GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False)
    accelerator = Accelerator(
        gradient_accumulation_plugin=accumulation,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    check_data_parallel(accelerator)
    if lock is not None:  # one run at a time in --output_dir, until this one ends
        lock.acquire(accelerator, output_dir)
    args.mixed_precision = accelerator.mixed_precision  # recorded as used: accelerate launch's choice included
    configure_logging(accelerator)
    logger.info(accelerator.state, main_process_only=False)
    if fast.notes:
        logger.info(" ".join(fast.notes))
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- Set-up: everything that can fail does so here, before the first step ----
    local_batch_size = per_process_batch_size(
        args.batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    lora = args.lora_rank is not None
    run_args = public_args(args)  # the options as given, saved in training_args.json and in every checkpoint
    resume_path = prepare_training_run(
        accelerator, output_dir, args.resume_from_checkpoint, args.overwrite_output_dir,
        required=checkpoint_contents(lora, alignment=args.proj_coeff > 0), run_outputs=[*RUN_OUTPUTS, args.logging_dir],
    )  # fmt: skip
    dataset, data = load_training_data(
        args.dataset_name, args.train_data_dir, args.image_column, args.label_column, args.dataset_split,
        args.cache_dir, args.resolution, args.num_classes,
    )  # fmt: skip
    # Recorded and compared like an option: other data under the same name would shift every resumed epoch's order.
    run_args["dataset_num_examples"] = len(dataset)
    changes = {}
    if resume_path is not None:
        run_args, changes = resume_options(run_args, resume_path, RESUME_CAN_CHANGE, RESUME_NOT_COMPARED)
    elif args.resume_from_checkpoint is not None:  # no checkpoint yet: a restart, of the folder's run only
        restart_options(run_args, output_dir, RESUME_CAN_CHANGE, RESUME_NOT_COMPARED)
    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        repo_id = create_repo(
            args.hub_model_id or output_dir.name, exist_ok=True, private=args.hub_private_repo, token=args.hub_token
        ).repo_id

    vae = load_vae(args, data, accelerator.device)
    set_seed(args.seed)  # the same initial weights on every process
    transformer = build_transformer(args, data)
    projector, targets = build_alignment(args, transformer, dataset, accelerator.device)
    set_seed(args.seed + accelerator.process_index)  # the training randomness differs per process, as officially
    spec = PipelineSpec(vae, data.id2label, args.latent_scale if data.latent else 1.0,
                        args.latent_shift if data.latent else 0.0, args.path_type)  # fmt: skip
    validation = ValidationSettings.from_args(args, data.num_classes)
    evaluation = TrainingEvaluation.from_args(args, data, dataset, targets, accelerator)
    ema, trainable, optimizer, lr_scheduler = prepare_for_training(args, transformer, projector, accelerator)
    register_checkpoint_hooks(accelerator, ema, lora)
    train_dataloader = training_dataloader(
        dataset, args.resolution, args.image_column, args.label_column,
        ([MOMENTS_COLUMN] if data.latent else []) + (targets.columns if targets else []),
        local_batch_size, args.seed, args.dataloader_num_workers, accelerator.num_processes,
    )  # fmt: skip
    models = [transformer] if projector is None else [transformer, projector]
    *models, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        *models, optimizer, train_dataloader, lr_scheduler
    )
    transformer, projector = models[0], (models[1] if projector is not None else None)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))
    state = TrainState()
    if resume_path is not None:
        state = load_training_state(accelerator, resume_path, lr_scheduler)
        apply_resume_changes(changes, optimizer, lr_scheduler, ema, args)
        evaluation.resume(state.global_step)
    if accelerator.is_main_process:
        write_json_atomically(output_dir / TRAINING_ARGS, run_args)
    loss_fn = REPALoss(path_type=args.path_type, weighting=args.weighting, proj_coeff=args.proj_coeff)
    stop_step = args.max_train_steps if args.alignment_stop_step is None else args.alignment_stop_step
    proj_coeff_at = ProjCoeffSchedule(args.proj_coeff, args.proj_coeff_schedule, stop_step)
    fused = optimizer.optimizer.defaults.get("fused") is True
    guard = NonFiniteGuard(
        optimizer, deferred=fused, check_gradients=accelerator.scaler is None, last_checkpoint=resume_path
    )
    metrics, skipped = StepMetrics(accelerator.device), SkippedImages()
    unwrapped = accelerator.unwrap_model(transformer)
    uploads = CheckpointUploads(upload_folder, repo_id, args.hub_token)

    def checkpoint(push: bool) -> Path:
        """Save `checkpoint-<global_step>` (and push it to the Hub in the background if asked)."""
        guard.raise_if_any(state.global_step)  # never a checkpoint after a non-finite step
        uploads.wait()  # the previous upload must not race the pruning of its folder
        guard.last_checkpoint = save_checkpoint(
            accelerator, output_dir, state.as_dict(), args.checkpoints_total_limit, run_args
        )
        if push and args.push_checkpoints_to_hub and accelerator.is_main_process:
            uploads.push(guard.last_checkpoint, state.global_step)
        return guard.last_checkpoint

    def log_metrics(proj_coeff: float) -> None:
        """The means since the last logging step to the trackers (reading them is the loop's only host sync)."""
        guard.raise_if_any(state.global_step)
        logs = {**metrics.pop(args.batch_size), "lr": lr_scheduler.get_last_lr()[0], "proj_coeff": proj_coeff}
        accelerator.log({**logs, **skipped.as_dict()} if skipped.total else logs, step=state.global_step)
        progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", proj=f"{logs['projection_loss']:.4f}")

    logger.info("***** Running training *****")
    logger.info(f"  Examples = {len(dataset)}, batches per epoch and process = {len(train_dataloader)}")
    logger.info(f"  Global batch = {args.batch_size} ({local_batch_size} per process and micro-step)")
    logger.info(f"  Optimizer steps = {args.max_train_steps}, starting at {state.global_step}")
    progress_bar = tqdm(range(args.max_train_steps), initial=state.global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)  # fmt: skip
    epoch = state.batches_seen // len(train_dataloader)
    stopping = stop.should_stop(accelerator)  # a signal during the set-up: nothing to save yet
    while state.global_step < args.max_train_steps and epoch < (args.num_train_epochs or math.inf) and not stopping:
        train_dataloader.set_epoch(epoch)
        offset = state.batches_seen % len(train_dataloader)
        for batch in accelerator.skip_first_batches(train_dataloader, offset) if offset else train_dataloader:
            state.batches_seen += 1
            if batch_is_empty(accelerator, batch, skipped, can_drop_images=not data.prepared):
                continue
            step, proj_coeff = state.global_step + 1, proj_coeff_at(state.global_step)
            with accelerator.accumulate(*models):
                # 1. The batch: clean inputs x_0 (a fresh draw from the VAE posterior, or pixels) and class labels.
                clean = clean_sample(batch, data.latent, args.latent_scale, args.latent_shift)
                class_labels = batch["class_labels"]
                if args.legacy:
                    class_labels = unwrapped.class_embedder.token_drop(class_labels)
                # 2. The alignment targets: the encoders' patch features of the clean images (or stored ones).
                target_features = None
                if proj_coeff > 0:
                    with torch.inference_mode(), accelerator.autocast():
                        target_features = targets(batch)
                # 3. The REPA loss: velocity regression + proj_coeff * (-cosine similarity of projected states).
                output = loss_fn(transformer, projector, clean, class_labels, target_features, proj_coeff=proj_coeff)
                losses = torch.stack([output.loss, output.denoising_loss, output.projection_loss]).detach()
                losses = accelerator.reduce(losses, "mean")
                guard.check_loss(losses, step)
                metrics.add_micro_step(losses, args.gradient_accumulation_steps)
                # 4. Backward, clip, optimizer step (a non-finite step never reaches the weights).
                accelerator.backward(output.loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(
                        trainable, args.max_grad_norm if args.max_grad_norm > 0 else math.inf
                    )
                    guard.check_grad_norm(grad_norm, step)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            # 5. The EMA of the weights after this step.
            if ema is not None:
                update_ema(ema, unwrapped.parameters())
            state.global_step += 1
            metrics.add_step(grad_norm)
            progress_bar.update(1)
            # 6. Log, checkpoint, validate, evaluate.
            stopping = stop.should_stop(accelerator)  # the same answer on every process
            if state.global_step % args.logging_steps == 0:
                log_metrics(proj_coeff)
            with metrics.paused():
                if state.global_step % args.checkpointing_steps == 0:
                    checkpoint(push=True)
                if not stopping and state.global_step % args.validation_steps == 0:
                    guard.raise_if_any(state.global_step)
                    log_validation(accelerator, transformer, ema, spec, validation, output_dir, state.global_step)
                if not stopping and any(evaluation.due(state.global_step)):
                    guard.raise_if_any(state.global_step)
                    evaluation.run(accelerator, transformer, ema, spec, state.global_step)
            if stopping or state.global_step >= args.max_train_steps:
                break
        if stopping:
            break
        epoch += 1
    progress_bar.close()
    if metrics.steps:  # the steps since the last logging step
        log_metrics(proj_coeff_at(state.global_step - 1))
    # The last step is saved, unless it just was: on a signal (SIGTERM/SIGINT/SIGUSR1), so that a re-queued job loses
    # nothing, and before the final evaluation and outputs, which can take long: a kill or a signal there loses no
    # training, and the same command with `--resume_from_checkpoint latest` redoes only them.
    last = guard.last_checkpoint
    if state.global_step > 0 and (
        last is None or last.resolve() != (output_dir / f"checkpoint-{state.global_step}").resolve()
    ):
        last = checkpoint(push=not stopping)
    if not stopping:
        if skipped.total:
            logger.warning(f"Images skipped on this process: {skipped}", main_process_only=False)
        evaluation.run(accelerator, transformer, ema, spec, state.global_step, final=True)  # what is not measured yet
        stopping = stop.should_stop(accelerator)  # a signal during the final evaluation
    if stopping:
        accelerator.print(
            f"Stopped by {stop.received or 'a signal to another process'} at step {state.global_step}; "
            f"{f'saved {last}' if last else 'nothing to save'}. Run the same command with --resume_from_checkpoint "
            "latest to continue."
        )
        accelerator.end_training()
        return

    # ---- Final outputs: the EMA weights as a pipeline folder, the projector, a sample grid, the model card ----
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final_outputs(
            accelerator, args, transformer, projector, ema, spec, validation, data, state.global_step,
            repo_id=repo_id, run_args=run_args, evaluation=evaluation, uploads=uploads, upload=upload_folder,
        )  # fmt: skip
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main(parse_args())
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint (the first one saves one)
        print("Interrupted: nothing saved since the last checkpoint.", file=sys.stderr)
        sys.exit(130)
