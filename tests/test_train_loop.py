"""The arithmetic of `training/train_repa.py`'s loop, observed from outside on the CPU with the tiny workspace: the EMA
recurrence, gradient accumulation (images per loss call, steps per epoch, logged means), the order in which a
checkpoint is written, and that a checkpoint without its state is never resumed.

One run (module fixture) provides most observations: 24 images, global batch 4, 2 accumulation steps (so 2 images per
`REPALoss` call and 6 optimizer steps per epoch), one epoch, a checkpoint after every step, and a non-zero latent
shift. `REPALoss.__call__`, `os.replace`/`os.rename` and `os.fsync` are wrapped to record what the script does.
"""

import json
import os
import re
import shutil
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusers_repa.alignment import REPALoss

from .train_fixtures import assert_same_tensors, build_workspace, latent_args, load_tensors, run_training

EMA_DECAY = 0.9
ACCUMULATION = 2
BATCH = 4  # COMMON_ARGS' global batch
STEPS_PER_EPOCH = 24 // BATCH  # build_workspace: 3 classes x 8 images
RUN_ARGS = [
    "--ema_decay", str(EMA_DECAY), "--gradient_accumulation_steps", str(ACCUMULATION), "--checkpointing_steps", "1",
    "--num_train_epochs", "1", "--max_train_steps", "100", "--latent_scale", "0.5", "--latent_shift", "0.25",
]  # fmt: skip
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("train_loop"))


class Recorder:
    """Wraps `REPALoss.__call__` (images and losses of each call), renames and fsyncs, in call order."""

    def __init__(self):
        self.loss_calls: list[dict] = []
        self.events: list[tuple] = []  # ("fsync", path) or ("rename", source, destination, state text or None)

    def install(self, patch: pytest.MonkeyPatch) -> None:
        original_call, original_replace, original_rename, original_fsync = (
            REPALoss.__call__, os.replace, os.rename, os.fsync
        )  # fmt: skip

        def call(loss_fn, transformer, projector, latents, *args, **kwargs):
            output = original_call(loss_fn, transformer, projector, latents, *args, **kwargs)
            self.loss_calls.append(
                {
                    "images": latents.shape[0],
                    "loss": output.loss.item(),
                    "denoising_loss": output.denoising_loss.item(),
                    "projection_loss": output.projection_loss.item(),
                }
            )
            return output

        def renamer(original):
            def rename(source, destination, *args, **kwargs):
                source, destination = Path(source), Path(destination)
                if CHECKPOINT_NAME.match(destination.name):
                    state = source / "training_state.json"
                    self.events.append(("rename", source, destination, state.read_text() if state.is_file() else None))
                return original(source, destination, *args, **kwargs)

            return rename

        def fsync(descriptor):
            self.events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
            return original_fsync(descriptor)

        patch.setattr(REPALoss, "__call__", call)
        patch.setattr(os, "replace", renamer(original_replace))
        patch.setattr(os, "rename", renamer(original_rename))
        patch.setattr(os, "fsync", fsync)


@pytest.fixture(scope="module")
def run(workspace):
    output = workspace.root / "run"
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        recorder.install(patch)
        run_training(latent_args(workspace, output, *RUN_ARGS))
    return types.SimpleNamespace(output=output, recorder=recorder)


def logged(output: Path, tag: str) -> list[tuple[int, float]]:
    """`(step, value)` of a tensorboard scalar of the run."""
    accumulator = EventAccumulator(str(output / "logs" / "repa")).Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a `save_pretrained` folder, by parameter name."""
    return {name.split(":")[1]: tensor for name, tensor in load_tensors(folder).items()}


def test_ema_follows_the_constant_decay_recurrence_of_the_trained_weights(run):
    """EMA_1 = W_1 (diffusers' first update copies the weights: our documented start), then
    EMA_k = decay * EMA_{k-1} + (1 - decay) * W_k with W_k the weights *after* optimizer step k, at a constant decay
    (no warm-up). A warm-up schedule, an update before the optimizer step (a one-step lag) or a skipped update fail."""
    expected = None
    for step in range(1, STEPS_PER_EPOCH + 1):
        trained = weights(run.output / f"checkpoint-{step}" / "transformer")
        ema = weights(run.output / f"checkpoint-{step}" / "transformer_ema")
        assert ema.keys() == trained.keys()
        if expected is None:
            expected = trained
        else:
            expected = {name: EMA_DECAY * expected[name] + (1 - EMA_DECAY) * trained[name] for name in trained}
            moved = [name for name in trained if not torch.equal(trained[name], ema[name])]
            assert moved, f"step {step}: the EMA equals the trained weights"
        for name in trained:
            torch.testing.assert_close(ema[name], expected[name], rtol=1e-5, atol=1e-6, msg=f"step {step}: {name}")
    # The final pipeline holds the last EMA, not the trained weights.
    final = weights(run.output / "transformer")
    assert all(torch.equal(final[name], ema[name]) for name in ema)
    assert not all(torch.equal(final[name], trained[name]) for name in trained)


def test_accumulation_splits_the_global_batch_and_logs_micro_batch_means(run):
    calls = run.recorder.loss_calls
    # batch_size / (processes x accumulation_steps) images per loss call, 24 / 4 optimizer steps in the one epoch.
    assert [call["images"] for call in calls] == [BATCH // ACCUMULATION] * (STEPS_PER_EPOCH * ACCUMULATION)
    last = json.loads((run.output / f"checkpoint-{STEPS_PER_EPOCH}" / "training_state.json").read_text())
    assert last == {"global_step": STEPS_PER_EPOCH, "batches_seen": STEPS_PER_EPOCH * ACCUMULATION}
    steps = sorted(int(path.name.split("-")[1]) for path in run.output.glob("checkpoint-*"))
    assert steps == list(range(1, STEPS_PER_EPOCH + 1))
    # Each logged loss is the mean over its step's micro-batches (not their sum, nor the last one).
    for tag in ("loss", "denoising_loss", "projection_loss"):
        values = logged(run.output, tag)
        assert [step for step, _ in values] == list(range(1, STEPS_PER_EPOCH + 1)), tag
        micro = [call[tag] for call in calls]
        means = [sum(micro[i : i + ACCUMULATION]) / ACCUMULATION for i in range(0, len(micro), ACCUMULATION)]
        assert [value for _, value in values] == pytest.approx(means, rel=1e-5), tag
    assert all(call["projection_loss"] != 0 for call in calls)  # the alignment ran in every call


def test_checkpoint_state_is_written_and_synced_before_the_rename(run):
    events = run.recorder.events
    renames = [(index, event) for index, event in enumerate(events) if event[0] == "rename"]
    assert [event[2].name for _, event in renames] == [f"checkpoint-{step}" for step in range(1, STEPS_PER_EPOCH + 1)]
    for index, (_, source, destination, state) in renames:
        step = int(destination.name.split("-")[1])
        assert source.parent == destination.parent and source.name.startswith("."), source  # a hidden temporary
        assert state is not None, f"{destination.name}: renamed into place without training_state.json"
        assert json.loads(state) == {"global_step": step, "batches_seen": step * ACCUMULATION}
        synced_before = {event[1] for event in events[:index] if event[0] == "fsync"}
        files = [path.relative_to(destination) for path in destination.rglob("*") if path.is_file()]
        unsynced = sorted(str(path) for path in files if source / path not in synced_before)
        assert not unsynced, f"{destination.name}: not flushed before the rename: {unsynced}"
        # The rename itself is made durable: the parent folder is flushed after it.
        assert ("fsync", destination.parent) in events[index + 1 :], destination.name


def test_checkpoint_without_state_is_never_resumed(run, workspace, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(run.output, output)
    newest = output / f"checkpoint-{STEPS_PER_EPOCH}"
    (newest / "training_state.json").unlink()
    args = latent_args(workspace, output, *RUN_ARGS)

    with pytest.raises(ValueError, match=r"not a complete checkpoint|checkpoint is incomplete"):
        run_training(args + ["--resume_from_checkpoint", str(newest)])
    capsys.readouterr()
    run_training(args + ["--resume_from_checkpoint", "latest"])
    assert f"Resuming from {output / f'checkpoint-{STEPS_PER_EPOCH - 1}'}\n" in capsys.readouterr().out
    # The last step was trained again from the previous checkpoint, exactly as in the uninterrupted run.
    assert (newest / "training_state.json").is_file()
    assert_same_tensors(run.output / newest.name, newest)


def test_trainer_pipeline_keeps_the_latent_scale_and_shift(run):
    config = json.loads((run.output / "model_index.json").read_text())
    # The model saw z * 0.5 + 0.25; the pipeline decodes x / 0.5 + shift_factor (diffusers' convention).
    assert (config["latent_scale"], config["shift_factor"]) == (0.5, -0.5)


def test_logging_steps_log_the_means_of_their_window(workspace, tmp_path):
    """With --logging_steps 4 over the 6 steps of the epoch, the losses are read twice (steps 4 and 6, the end): each
    logged value is the mean over its window's steps of the per-step means over micro-batches."""
    recorder = Recorder()
    output = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        recorder.install(patch)
        run_training(latent_args(workspace, output, *RUN_ARGS, "--logging_steps", "4", "--checkpointing_steps", "100"))
    for tag in ("loss", "denoising_loss", "projection_loss"):
        micro = [call[tag] for call in recorder.loss_calls]
        per_step = [sum(micro[i : i + ACCUMULATION]) / ACCUMULATION for i in range(0, len(micro), ACCUMULATION)]
        assert len(per_step) == STEPS_PER_EPOCH
        expected = [(4, sum(per_step[:4]) / 4), (6, sum(per_step[4:]) / 2)]
        assert [step for step, _ in logged(output, tag)] == [4, 6], tag
        assert [value for _, value in logged(output, tag)] == pytest.approx([value for _, value in expected], rel=1e-5)
    assert [step for step, _ in logged(output, "images_per_second")] == [4, 6]
