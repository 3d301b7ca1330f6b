"""`train_repa.py --fast`: what it resolves to on CUDA and elsewhere (explicit options win), fast-mode sampling for
the validation grids, the final grid and the FID samples, what training_args.json records, and resumes that add or
remove it."""

import argparse
import json
import logging
import types

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from diffusers_repa import REPAPipeline, SiTTransformer2DModel
from diffusers_repa.evaluation.monitor import FIDMonitor
from diffusers_repa.training_utils import TRAINING_ARGS, TRAINING_STATE, resolve_fast_settings, resume_options

from .train_fixtures import build_workspace, latent_args, run_training, training_module

train_repa = training_module("train_repa")


def options(fast=True, mixed_precision=None, allow_tf32=False, torch_compile=None) -> argparse.Namespace:
    return argparse.Namespace(
        fast=fast, mixed_precision=mixed_precision, allow_tf32=allow_tf32, torch_compile=torch_compile
    )


def test_fast_on_cuda_is_bf16_tf32_and_compile_unless_chosen_otherwise():
    fast = resolve_fast_settings(options(), cuda=True)
    assert fast.as_args() == {"mixed_precision": "bf16", "allow_tf32": True, "torch_compile": True}
    assert fast.notes == ()
    # accelerate launch's default precision ("no") is not a choice: --fast still picks bf16.
    assert resolve_fast_settings(options(), cuda=True, launcher_precision="no").mixed_precision == "bf16"
    # An explicit --mixed_precision wins, and the log says so.
    for explicit in ("no", "fp16", "bf16"):
        fast = resolve_fast_settings(options(mixed_precision=explicit), cuda=True)
        assert fast.as_args() == {"mixed_precision": explicit, "allow_tf32": True, "torch_compile": True}
        if explicit != "bf16":
            assert fast.notes == (f"--fast keeps --mixed_precision {explicit} (given explicitly) instead of bf16.",)
    # So does the precision `accelerate launch --mixed_precision fp16` chose (None: the Accelerator reads it).
    fast = resolve_fast_settings(options(), cuda=True, launcher_precision="fp16")
    assert fast.mixed_precision is None and "accelerate launch chose (fp16)" in fast.notes[0]
    # Where torch.compile does not work, --fast does not compile (an explicit --torch_compile is left to fail).
    fast = resolve_fast_settings(options(), cuda=True, compile_supported=False)
    assert not fast.torch_compile and fast.allow_tf32 and "does not compile" in fast.notes[0]
    assert resolve_fast_settings(options(torch_compile=True), cuda=True, compile_supported=False).torch_compile
    # --no_torch_compile keeps the model eager under --fast, and the log says so.
    fast = resolve_fast_settings(options(torch_compile=False), cuda=True)
    assert fast.as_args() == {"mixed_precision": "bf16", "allow_tf32": True, "torch_compile": False}
    assert fast.notes == ("--fast keeps the model eager (--no_torch_compile given).",)
    for flags, expected in (([], None), (["--torch_compile"], True), (["--no_torch_compile"], False)):
        assert train_repa.parse_args(["--train_data_dir", "images", *flags]).torch_compile is expected
    # Without --fast, nothing changes.
    given = options(fast=False, mixed_precision="fp16", torch_compile=True)
    assert resolve_fast_settings(given, cuda=True).as_args() == {
        "mixed_precision": "fp16", "allow_tf32": False, "torch_compile": True
    }  # fmt: skip
    assert resolve_fast_settings(given, cuda=True).notes == ()


def test_fast_elsewhere_only_samples_fast_and_says_what_it_left_off():
    fast = resolve_fast_settings(options(), cuda=False)
    assert fast.as_args() == {"mixed_precision": None, "allow_tf32": False, "torch_compile": False}
    (note,) = fast.notes
    assert "validation and FID samples run in fast mode" in note
    for skipped in ("bf16 mixed precision (2-3.5x slower", "TF32", "--torch_compile (compiling costs more"):
        assert skipped in note, note
    # Explicit options are kept, and the note names only what was left off.
    fast = resolve_fast_settings(options(mixed_precision="bf16", torch_compile=True), cuda=False)
    assert fast.as_args() == {"mixed_precision": "bf16", "allow_tf32": False, "torch_compile": True}
    assert "TF32" in fast.notes[0] and "bf16" not in fast.notes[0] and "compil" not in fast.notes[0]
    every = options(mixed_precision="no", allow_tf32=True, torch_compile=True)
    assert resolve_fast_settings(every, cuda=False).notes == (
        "--fast on a device other than CUDA: the validation and FID samples run in fast mode.",
    )
    assert resolve_fast_settings(options(fast=False), cuda=False).notes == ()


@pytest.mark.parametrize(
    "saved, new, scaler, refused",
    [
        (None, "bf16", False, False),
        ("bf16", None, False, False),
        ("fp16", "bf16", True, False),
        ("no", "fp16", False, True),
        (None, "fp16", False, True),
        (None, "fp16", True, False),  # a run that `accelerate launch` put in fp16 before the precision was recorded
    ],
)
def test_a_resume_may_change_the_mixed_precision_except_to_fp16(tmp_path, saved, new, scaler, refused):
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    if scaler:
        (checkpoint / "scaler.pt").write_bytes(b"")
    (checkpoint / TRAINING_ARGS).write_text(json.dumps({"mixed_precision": saved, "fast": False, "seed": 0}))
    (checkpoint / TRAINING_STATE).write_text(json.dumps({"global_step": 2, "batches_seen": 2}))
    current = {"mixed_precision": new, "fast": True, "seed": 0}
    if refused:
        with pytest.raises(ValueError, match=rf"--mixed_precision: {saved!r} -> 'fp16'"):
            resume_options(current, checkpoint, train_repa.RESUME_CAN_CHANGE, ())
        return
    recorded, changes = resume_options(current, checkpoint, train_repa.RESUME_CAN_CHANGE, ())
    assert changes == {"mixed_precision": (saved, new), "fast": (False, True)}
    assert recorded["resume_history"] == [
        {"step": 2, "changed": {"mixed_precision": [saved, new], "fast": [False, True]}}
    ]


def test_the_run_uses_cuda_when_accelerate_puts_it_there(monkeypatch):
    """The device is accelerate's choice, with `accelerate launch --cpu` (ACCELERATE_USE_CPU) honoured: the state is
    the one the trainer's Accelerator then reuses (a different cpu flag made two processes train apart)."""
    asked = []
    state = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setattr(train_repa, "PartialState", lambda cpu: asked.append(cpu) or state)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert train_repa.run_uses_cuda() and asked == [True]
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert train_repa.run_uses_cuda() and asked == [True, False]
    state.device = torch.device("cpu")
    assert not train_repa.run_uses_cuda()


class FakePipeline:
    """Records the keyword arguments of each call; returns grey images."""

    def __init__(self):
        self.calls = []

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, labels, **kwargs):
        self.calls.append(kwargs)
        return types.SimpleNamespace(images=np.full((len(labels), 8, 8, 3), 0.5, np.float32))


@pytest.mark.parametrize("fast", [False, True])
def test_fid_monitor_samples_in_the_mode_asked_and_says_so(fast):
    monitor = FIDMonitor(None, None, num_samples=6, num_classes=3, num_inference_steps=2, batch_size=4, fast=fast)
    pipeline = FakePipeline()
    assert monitor.sample(pipeline).shape == (6, 8, 8, 3)
    assert [call["fast"] for call in pipeline.calls] == [fast, fast]
    monitor.reference, monitor.network = [None] * 10, types.SimpleNamespace(name="Inception")  # for describe() only
    assert ("fixed noise, fast mode)" in monitor.describe()) == fast


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("train_fast"))


def record_runs(monkeypatch) -> types.SimpleNamespace:
    """Record the `fast` of every pipeline call, the compilations and the Accelerator's mixed precision."""
    record = types.SimpleNamespace(fast=[], compiled=[], precision=[])
    original_call, original_accelerator = REPAPipeline.__call__, train_repa.Accelerator

    def call(self, *args, **kwargs):
        record.fast.append(kwargs.get("fast", False))
        return original_call(self, *args, **kwargs)

    def accelerator(*args, **kwargs):
        built = original_accelerator(*args, **kwargs)
        record.precision.append(built.mixed_precision)
        return built

    monkeypatch.setattr(REPAPipeline, "__call__", call)
    monkeypatch.setattr(train_repa, "Accelerator", accelerator)
    monkeypatch.setattr(
        SiTTransformer2DModel, "compile_repeated_blocks", lambda self, **kwargs: record.compiled.append(kwargs)
    )
    return record


@pytest.fixture
def restore_tf32():
    """Put the process-wide TF32 switches back as they were (the trainer turns them on)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fast_training_on_the_cpu_and_resumes_that_remove_or_add_it(
    workspace, tmp_path, monkeypatch, caplog, restore_tf32
):
    output = tmp_path / "run"
    record = record_runs(monkeypatch)
    # 1. --fast on the CPU: fast sampling only (validation at steps 1 and 2, and the final grid), no compile, fp32.
    with caplog.at_level(logging.INFO):
        run_training(latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "1",
                                 "--validation_steps", "1", "--fast"))  # fmt: skip
    assert record.fast == [True, True, True] and record.compiled == [] and record.precision == ["no"]
    notes = [record.getMessage() for record in caplog.records if "--fast on a device other than" in record.getMessage()]
    assert len(notes) == 1 and "anyway): bf16 mixed precision" in notes[0]  # logged once
    assert (output / "samples" / "step-0000002.png").is_file()
    recorded = json.loads((output / TRAINING_ARGS).read_text())
    assert recorded["fast"] is True and recorded["mixed_precision"] == "no"  # as used
    assert recorded["torch_compile"] is False and recorded["allow_tf32"] is False

    # 2. Resumed without --fast: allowed, exact sampling again, the change recorded.
    record.fast.clear()
    run_training(latent_args(workspace, output, "--max_train_steps", "3", "--checkpointing_steps", "1",
                             "--validation_steps", "1", "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert record.fast == [False, False]  # validation at step 3, the final grid
    recorded = json.loads((output / TRAINING_ARGS).read_text())
    assert recorded["fast"] is False
    assert recorded["resume_history"] == [{"step": 2, "changed": {"max_train_steps": [2, 3], "fast": [True, False]}}]

    # 3. Resumed with --fast where the run uses CUDA (simulated: the Accelerator stays on the CPU): bf16, TF32 and
    # the compiled blocks; the changed options are recorded and the model card shows the precision's history.
    record.fast.clear()
    cuda = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setattr(train_repa, "PartialState", lambda cpu: cuda)
    torch.backends.cuda.matmul.allow_tf32 = False  # restored by the `restore_tf32` fixture
    run_training(latent_args(workspace, output, "--max_train_steps", "4", "--checkpointing_steps", "1",
                             "--validation_steps", "1", "--resume_from_checkpoint", "latest", "--fast"))  # fmt: skip
    assert record.fast == [True, True] and record.compiled == [{"fullgraph": True}] and record.precision[-1] == "bf16"
    assert torch.backends.cuda.matmul.allow_tf32
    recorded = json.loads((output / TRAINING_ARGS).read_text())
    assert recorded["resume_history"][-1] == {
        "step": 3,
        "changed": {"max_train_steps": [3, 4], "mixed_precision": ["no", "bf16"], "allow_tf32": [False, True],
                    "torch_compile": [False, True], "fast": [False, True]},
    }  # fmt: skip
    card = ModelCard.load(output / "README.md").text
    assert "| `mixed_precision` | `no (steps 1-3), bf16 (steps 4-)` |" in card, card


def test_the_precision_accelerate_launch_chose_is_recorded_as_used(workspace, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (the ACCELERATE_MIXED_PRECISION it sets) without --mixed_precision:
    training_args.json records bf16, the precision the run used, not the unset option."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    output = tmp_path / "run"
    run_training(latent_args(workspace, output, "--max_train_steps", "1", "--checkpointing_steps", "1"))
    assert json.loads((output / TRAINING_ARGS).read_text())["mixed_precision"] == "bf16"
