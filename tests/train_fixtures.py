"""Helpers of the training-script tests: tiny random models and images saved to folders, and in-process runs.

Every model is tiny and random (no Hub access): a 2-block SiT, a 2-layer DINOv2 with 8-pixel patches (4x4 tokens
at 32 px) and the 2-level AutoencoderKL of `conftest.make_tiny_vae` (32 px images <-> 16x16x4 latents).
"""

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import load_file

from .conftest import make_tiny_vae

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_DIR = REPO_ROOT / "training"
# A SiT-S/4-shaped model cut down to 2 blocks of width 32: on 16x16 latents or 32x32 pixels (patch 8) it has 16
# tokens, the 4x4 grid of the tiny DINOv2 at 32 px.
TINY_SIT = '{"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16}'
COMMON_ARGS = [
    "--model", "SiT-S/4", "--model_kwargs", TINY_SIT, "--alignment_depth", "1", "--projector_dim", "32",
    "--resolution", "32", "--batch_size", "4", "--learning_rate", "2e-3", "--ema_decay", "0.9",
    "--dataloader_num_workers", "0", "--validation_num_inference_steps", "2", "--validation_steps", "1000",
    "--report_to", "tensorboard", "--seed", "0", "--logging_steps", "1",
]  # fmt: skip


def training_module(name: str):
    """Import `training/<name>.py` (train_repa, prepare_latents, prepare_demo_encoder) as a module."""
    if str(TRAINING_DIR) not in sys.path:
        sys.path.insert(0, str(TRAINING_DIR))
    return importlib.import_module(name)


def reset_accelerate() -> None:
    """Forget the accelerate singletons between in-process runs (each run builds its own `Accelerator`)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_training(argv: list[str]) -> None:
    """Run `train_repa.py` in this process with `argv`."""
    train_repa = training_module("train_repa")
    try:
        train_repa.main(train_repa.parse_args(argv))
    finally:
        reset_accelerate()


def run_prepare(argv: list[str]) -> None:
    """Run `prepare_latents.py` in this process with `argv`."""
    prepare_latents = training_module("prepare_latents")
    try:
        prepare_latents.main(prepare_latents.parse_args(argv))
    finally:
        reset_accelerate()


def build_workspace(root: Path, *prepare_args: str) -> types.SimpleNamespace:
    """An image folder (3 classes x 8), the tiny VAE and DINOv2 folders, and latents prepared from them (with
    `prepare_args` added to the `prepare_latents.py` command)."""
    ws = types.SimpleNamespace(
        root=root,
        images=make_image_folder(root / "images"),
        vae=save_tiny_vae(root / "vae"),
        dino=save_tiny_dinov2(root / "dino"),
        data=root / "prepared",
        cache=root / "cache",
    )
    run_prepare([
        "--train_data_dir", str(ws.images), "--resolution", "32", "--vae", str(ws.vae), "--output_dir", str(ws.data),
        "--shard_size", "10", "--dataloader_num_workers", "0", "--cache_dir", str(ws.cache), *prepare_args,
    ])  # fmt: skip
    return ws


def latent_args(ws: types.SimpleNamespace, output_dir: Path, *extra: str) -> list[str]:
    """`train_repa.py` arguments for the tiny SiT on the workspace's prepared latents."""
    return COMMON_ARGS + [
        "--dataset_name", str(ws.data), "--encoder", str(ws.dino), "--vae", str(ws.vae),
        "--output_dir", str(output_dir), "--cache_dir", str(ws.cache), *extra,
    ]  # fmt: skip


def make_image_folder(root: Path, num_classes: int = 3, per_class: int = 8, size: int = 40) -> Path:
    """An imagefolder of RGB PNGs: one colour and stripe direction per class plus mild noise (learnable, fixed)."""
    rng = np.random.RandomState(0)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [200, 200, 40]], dtype=np.float64)
    for label in range(num_classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            stripes = (np.arange(size) // 5 % 2)[:, None] * np.ones((1, size))
            stripes = stripes if label % 2 else stripes.T
            pixels = colours[label] * (0.5 + 0.5 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root


def save_tiny_dinov2(path: Path) -> Path:
    """A random 2-layer DINOv2 (width 16, 8 px patches) saved with `save_pretrained`."""
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=8,
        image_size=32,
    )
    transformers.Dinov2Model(config).save_pretrained(path)
    return path


def save_tiny_vae(path: Path) -> Path:
    """The conftest's tiny AutoencoderKL saved with `save_pretrained`."""
    make_tiny_vae().save_pretrained(path)
    return path


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files under `folder`, keyed by relative file and tensor name."""
    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, tensor in load_file(path).items():
            tensors[f"{path.relative_to(folder)}:{name}"] = tensor
    return tensors


def assert_same_tensors(left: Path, right: Path) -> None:
    """Bit-for-bit equality of every safetensors tensor in two folders."""
    first, second = load_tensors(left), load_tensors(right)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"tensors differ: {different[:5]}"


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: offline, the package and the tests importable, few threads."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(TRAINING_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env
