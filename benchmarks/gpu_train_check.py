"""End-to-end check of the training script on a GPU: bf16, torch.compile, TF32, checkpoint/resume, pipeline output.

Runs the real `training/prepare_latents.py` and `training/train_repa.py` (through `accelerate launch`) on a
synthetic image folder with random models of the real architectures (SiT-B/2, a DINOv2-B-sized encoder, an
SD-VAE-sized AutoencoderKL), then loads the saved pipeline on the GPU and samples a grid. Nothing is downloaded.

    python benchmarks/gpu_train_check.py --tiny --out /tmp/gpu_train   # CPU dry run with tiny models
    python benchmarks/gpu_train_check.py --out $OUT                    # on the GPU machine
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_images(root: Path, num_classes: int, per_class: int, size: int) -> None:
    rng = np.random.RandomState(0)
    for label in range(num_classes):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.randint(30, 225, 3)
        for index in range(per_class):
            pixels = colour + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:04d}.png")


def make_models(work: Path, tiny: bool) -> None:
    from diffusers import AutoencoderKL
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    if tiny:
        dino = Dinov2Config(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            patch_size=8,
            image_size=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            norm_num_groups=4,
        )
    else:  # DINOv2-B and sd-vae-ft-mse shapes, random weights
        dino = Dinov2Config(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            patch_size=14,
            image_size=518,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=256,
        )
    Dinov2Model(dino).save_pretrained(work / "dino")
    vae.save_pretrained(work / "vae")


def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(log.read_text()[-6000:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu_train_check")
    work.mkdir(parents=True, exist_ok=True)
    log = args.out / "train_log.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    resolution = 32 if args.tiny else 256
    results: dict[str, object] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}

    make_images(work / "images", num_classes=4, per_class=8 if args.tiny else 64, size=resolution + 8)
    make_models(work, args.tiny)
    results["prepare_s"] = round(run([
        sys.executable, "training/prepare_latents.py", "--train_data_dir", str(work / "images"), "--resolution",
        str(resolution), "--vae", str(work / "vae"), "--output_dir", str(work / "prepared"),
        "--dataloader_num_workers", "2",
    ], log, env), 1)  # fmt: skip

    model = (
        [
            "--model",
            "SiT-S/4",
            "--model_kwargs",
            '{"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16}',
            "--alignment_depth",
            "1",
            "--projector_dim",
            "32",
        ]
        if args.tiny
        else ["--model", "SiT-B/2", "--alignment_depth", "4"]
    )
    precision = [] if args.tiny else ["--mixed_precision", "bf16", "--allow_tf32"]
    train = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--dynamo_backend", "no", *(["--mixed_precision", "bf16"] if not args.tiny else []),
        "training/train_repa.py", *model, "--encoder", str(work / "dino"), "--vae", str(work / "vae"),
        "--dataset_name", str(work / "prepared"), "--resolution", str(resolution), "--output_dir",
        str(work / "run"), "--batch_size", "8" if args.tiny else "64", "--dataloader_num_workers", "2",
        "--checkpointing_steps", "20", "--validation_steps", "20", "--validation_num_inference_steps", "10",
        "--torch_compile", "--report_to", "tensorboard", *precision,
    ]  # fmt: skip
    results["train_40_steps_s"] = round(run([*train, "--max_train_steps", "40"], log, env), 1)
    results["resume_to_60_steps_s"] = round(
        run([*train, "--max_train_steps", "60", "--resume_from_checkpoint", "latest"], log, env), 1
    )
    results["checkpoints"] = sorted(p.name for p in (work / "run").glob("checkpoint-*"))

    from diffusers_repa import REPAPipeline, SiTHeunScheduler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = REPAPipeline.from_pretrained(work / "run").to(device)
    pipe.scheduler = SiTHeunScheduler.from_config(pipe.scheduler.config)
    if device == "cuda":
        pipe.transformer.to(torch.bfloat16)
    images = pipe([0, 1, 2, 3], num_inference_steps=20, generator=torch.manual_seed(0)).images
    grid = Image.new("RGB", (images[0].width * 4, images[0].height))
    for index, image in enumerate(images):
        grid.paste(image, (index * image.width, 0))
    grid.save(args.out / "samples.png")
    results["pipeline_loaded_and_sampled"] = True
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
