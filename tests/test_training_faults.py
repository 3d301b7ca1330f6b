"""Faults in `training/train_repa.py`: kill -9 during a checkpoint save and during a step, a non-finite loss, unusable
images, and settings that do not fit together (all reported before the first step)."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .train_fixtures import (
    COMMON_ARGS,
    REPO_ROOT,
    TINY_SIT,
    assert_same_tensors,
    build_workspace,
    latent_args,
    make_image_folder,
    run_training,
    subprocess_env,
    training_module,
)

train_repa = training_module("train_repa")

# Runs train_repa.py after arming one kill -9: during the save of checkpoint `--kill_in_save`, or in the loss of the
# `--kill_at_call`-th training step of this process.
KILLER = """
import os, signal, sys
import train_repa
from diffusers.training_utils import EMAModel

mode, value, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "--kill_in_save":
    original_save = EMAModel.save_pretrained
    def save_pretrained(self, path, *args, **kwargs):
        if f"checkpoint-{value}" in str(path):  # transformer and projector are written, the rest is not
            os.kill(os.getpid(), signal.SIGKILL)
        return original_save(self, path, *args, **kwargs)
    EMAModel.save_pretrained = save_pretrained
else:
    original_call, calls = train_repa.REPALoss.__call__, []
    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == int(value):
            os.kill(os.getpid(), signal.SIGKILL)
        return original_call(self, *args, **kwargs)
    train_repa.REPALoss.__call__ = call
train_repa.main(train_repa.parse_args(argv))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared latents with the tiny DINOv2's features stored (16 tokens, the tiny SiT's count)."""
    root = tmp_path_factory.mktemp("faults")
    return build_workspace(root, "--encoder", str(root / "dino"), "--encoder_num_tokens", "16")


def run_killed(workspace, tmp_path, mode: str, value: int, argv: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    command = [sys.executable, str(script), mode, str(value), *argv]
    return subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_kill_9_during_save_and_during_step_then_resume_latest(workspace, tmp_path):
    argv = latent_args(workspace, tmp_path / "run", "--max_train_steps", "6", "--checkpointing_steps", "2")
    output = tmp_path / "run"

    # 1. Killed while writing checkpoint-4: only a hidden temporary folder is left, checkpoint-2 is intact.
    result = run_killed(workspace, tmp_path, "--kill_in_save", 4, argv)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [step for step, _ in train_repa.list_checkpoints(output)] == [2]
    partial = output / ".checkpoint-4.tmp"
    assert (partial / "transformer").is_dir() and not (partial / "training_state.json").exists()

    # 2. "latest" picks checkpoint-2, not the partial save; this run saves checkpoint-4, then dies in step 5.
    result = run_killed(workspace, tmp_path, "--kill_at_call", 3, argv + ["--resume_from_checkpoint", "latest"])
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert f"Resuming from {output / 'checkpoint-2'}" in result.stdout
    assert [step for step, _ in train_repa.list_checkpoints(output)] == [2, 4]
    assert not list(output.glob(".checkpoint-*"))

    # 3. Resuming again loses at most the interval since checkpoint-4, and ends where an uninterrupted run ends.
    run_training(argv + ["--resume_from_checkpoint", "latest"])
    reference = tmp_path / "reference"
    run_training(latent_args(workspace, reference, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert_same_tensors(reference / "checkpoint-6", output / "checkpoint-6")
    assert_same_tensors(reference / "transformer", output / "transformer")


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(workspace, tmp_path, monkeypatch):
    original_call, calls = train_repa.REPALoss.__call__, []

    def poisoned(self, *args, **kwargs):
        output = original_call(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(train_repa.REPALoss, "__call__", poisoned)
    output = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"The loss is nan .* at step 3; .*Last checkpoint: .*checkpoint-2"):
        run_training(latent_args(workspace, output, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert [step for step, _ in train_repa.list_checkpoints(output)] == [2]
    assert not list(output.glob(".checkpoint-*")) and not (output / "model_index.json").exists()


def test_non_finite_gradient_stops_before_the_update(workspace, tmp_path, monkeypatch):
    original_call, calls = train_repa.REPALoss.__call__, []

    def poisoned(self, transformer, *args, **kwargs):
        output = original_call(self, transformer, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # a finite loss whose gradient is infinite
            weight = next(parameter for parameter in transformer.parameters() if parameter.requires_grad).flatten()[0]
            output.loss = output.loss + torch.sqrt(weight - weight.detach())  # + sqrt(0): d/dw = inf
        return output

    monkeypatch.setattr(train_repa.REPALoss, "__call__", poisoned)
    with pytest.raises(FloatingPointError, match=r"The gradient norm is (nan|inf) at step 2;"):
        run_training(latent_args(workspace, tmp_path / "run", "--max_train_steps", "4", "--checkpointing_steps", "4"))


def write_bad_images(folder) -> None:
    """One of each: corrupt bytes, a truncated PNG, grayscale, CMYK, palette, RGBA, 16-bit, and a 2x2 image."""
    good = Image.open(next(folder.glob("*.png"))).convert("RGB")
    (folder / "corrupt.png").write_bytes(b"this is not an image")
    good.save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "full.png").unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    good.convert("L").save(folder / "gray.png")
    good.convert("CMYK").save(folder / "cmyk.jpg")
    good.convert("P").save(folder / "palette.png")
    good.convert("RGBA").save(folder / "rgba.png")
    good.convert("I;16").save(folder / "sixteen.png")
    good.resize((2, 2)).save(folder / "tiny.png")


def test_bad_images_are_converted_or_skipped_and_counted(tmp_path, workspace):
    images = make_image_folder(tmp_path / "images", num_classes=2, per_class=4)
    write_bad_images(images / "class_0")  # 16 files: 13 usable, 2 unreadable, 1 too small
    output = tmp_path / "run"
    argv = COMMON_ARGS + [
        "--train_data_dir", str(images), "--encoder", str(workspace.dino), "--output_dir", str(output),
        "--cache_dir", str(tmp_path / "cache"), "--model", "SiT-S/8", "--batch_size", "4", "--max_train_steps", "4",
        "--checkpointing_steps", "4",
    ]  # fmt: skip
    run_training(argv)  # pixel space, straight from the image folder: one epoch of 4 batches
    accumulator = EventAccumulator(str(output / "logs" / "repa")).Reload()
    assert accumulator.Scalars("skipped_images/unreadable")[-1].value == 2
    assert accumulator.Scalars("skipped_images/too_small")[-1].value == 1
    assert (output / "model_index.json").is_file()

    # Batches with no usable image at all are skipped (by every process alike), not trained on.
    sparse = make_image_folder(tmp_path / "sparse", num_classes=2, per_class=1)
    (sparse / "class_1" / "000.png").write_bytes(b"broken")
    for name in ("a", "b", "c", "d"):
        (sparse / "class_1" / f"{name}.png").write_bytes(b"broken")
    run_training(
        COMMON_ARGS
        + ["--train_data_dir", str(sparse), "--proj_coeff", "0", "--encoder", "none",
           "--output_dir", str(tmp_path / "sparse_run"), "--cache_dir", str(tmp_path / "cache"), "--model", "SiT-S/8",
           "--batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2"]
    )  # fmt: skip
    state = json.loads((tmp_path / "sparse_run" / "checkpoint-2" / "training_state.json").read_text())
    # Each epoch has 3 batches and one usable image, so step 2 comes in the second epoch after >= 2 empty batches.
    assert state["global_step"] == 2 and 4 <= state["batches_seen"] <= 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alignment_depth", "3"], r"alignment_depth.*\[1, num_layers=2\]"),
        (["--resolution", "64"], r"prepared at 32x32 but --resolution is 64"),
        (
            ["--model_kwargs", TINY_SIT.replace("}", ', "patch_size": 2}')],
            r"stored features 'features_dino' are \(16, 16\)",
        ),
        (["--batch_size", "6", "--gradient_accumulation_steps", "4"], r"--batch_size 6 .* divisible"),
    ],
    ids=["depth", "resolution", "encoder-tokens", "batch"],
)
def test_mismatches_fail_before_the_first_step(workspace, tmp_path, monkeypatch, extra, message):
    def first_step(*args, **kwargs):
        raise AssertionError("a training step ran before the error")

    monkeypatch.setattr(train_repa.REPALoss, "__call__", first_step)
    with pytest.raises(ValueError, match=message):
        run_training(latent_args(workspace, tmp_path / "run", "--max_train_steps", "2", *extra))


def test_resolution_the_encoder_cannot_use_fails_before_the_first_step(workspace, tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        run_training(
            COMMON_ARGS
            + ["--train_data_dir", str(workspace.images), "--encoder", str(workspace.dino), "--resolution", "40",
               "--model", "SiT-S/8", "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")]
        )  # fmt: skip
