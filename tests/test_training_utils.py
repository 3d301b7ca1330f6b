"""`diffusers_repa.training_utils`: atomic checkpoints with a manifest, pruning that keeps the newest save, whole-
checkpoint verification and the `latest` fallback, the one-run-per-folder guard, the resume comparison and its
history, and the stop signals (agreed by all processes, ignored by data-loader workers)."""

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusers_repa.training_utils import (
    MANIFEST,
    TRAINING_ARGS,
    TRAINING_STATE,
    CheckpointError,
    StopSignal,
    check_output_dir,
    checkpoints_after,
    compare_resume_args,
    find_resume_checkpoint,
    ignore_stop_signals,
    list_checkpoints,
    move_aside,
    on_main_process,
    prepare_run_folder,
    prune_checkpoints,
    remove_incomplete_checkpoints,
    remove_run_outputs,
    save_checkpoint,
    value_history,
    verify_checkpoint,
    with_resume_history,
)


class FakeAccelerator:
    """One process; `save_state` writes files shaped like accelerate's (torch zip files, safetensors, JSON)."""

    is_main_process, num_processes, process_index, device = True, 1, 0, torch.device("cpu")

    def __init__(self, reduced_flag: float | None = None):
        self.reduced_flag = reduced_flag

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        folder = os.fspath(folder)
        os.makedirs(os.path.join(folder, "transformer"))
        save_file({"weight": torch.arange(64.0)}, os.path.join(folder, "transformer", "model.safetensors"))
        with open(os.path.join(folder, "transformer", "config.json"), "w") as file:
            json.dump({"num_layers": 2}, file)
        torch.save(
            {"state": {0: {"exp_avg": torch.ones(256)}}, "param_groups": [{"lr": 1e-3}]}, f"{folder}/optimizer.bin"
        )
        torch.save({"base_lrs": [1e-3], "last_epoch": 2}, os.path.join(folder, "scheduler.bin"))
        states = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state()}
        torch.save(states | {"torch_manual_seed": torch.get_rng_state()}, os.path.join(folder, "random_states_0.pkl"))

    def reduce(self, tensor, reduction):  # another process got the signal: the maximum over processes is 1
        assert reduction == "max"
        return torch.maximum(tensor, torch.tensor([self.reduced_flag]))


def save(output_dir, step, limit=None, args=None):
    return save_checkpoint(FakeAccelerator(), output_dir, {"global_step": step, "batches_seen": step}, limit, args)


def test_save_is_complete_with_manifest_and_args(tmp_path):
    path = save(tmp_path, 3, args={"learning_rate": 1e-3})
    assert path == tmp_path / "checkpoint-3" and not list(tmp_path.glob(".checkpoint-*"))
    assert json.loads((path / TRAINING_STATE).read_text()) == {"global_step": 3, "batches_seen": 3}
    assert json.loads((path / TRAINING_ARGS).read_text()) == {"learning_rate": 1e-3}
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["num_processes"] == 1
    assert manifest["files"]["optimizer.bin"] == (path / "optimizer.bin").stat().st_size
    assert set(manifest["files"]) >= {"transformer/model.safetensors", "random_states_0.pkl", TRAINING_ARGS}
    assert verify_checkpoint(path) == {"global_step": 3, "batches_seen": 3}


def test_pruning_keeps_the_newest_save_and_refuses_a_limit_below_one(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step, limit=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]
    # A rewind wrote checkpoint-3 while checkpoint-4 and -6 exist: the limit never removes the checkpoint just saved.
    save(tmp_path, 3, limit=1)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]
    with pytest.raises(ValueError, match="must be >= 1"):
        prune_checkpoints(tmp_path, 0, keep=tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match="must be >= 1"):
        prune_checkpoints(tmp_path, -1, keep=tmp_path / "checkpoint-3")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "name",
    [
        "random_states_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "transformer/model.safetensors",
        "transformer/config.json",
    ],
)
@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "no-manifest"])
def test_a_truncated_file_is_named(tmp_path, name, with_manifest):
    path = save(tmp_path, 2)
    if not with_manifest:  # a checkpoint written before manifests: the loaders must catch it
        (path / MANIFEST).unlink()
    truncate(path / name)
    with pytest.raises(CheckpointError) as error:
        verify_checkpoint(path)
    assert error.value.file == path / name and str(path / name) in str(error.value)


def test_damage_that_keeps_the_size_is_caught_by_the_loaders(tmp_path):
    path = save(tmp_path, 2)
    data = bytearray((path / "random_states_0.pkl").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte: the zip record's checksum fails
    (path / "random_states_0.pkl").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"random_states_0\.pkl"):
        verify_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is damaged"),
        ('{"global_step": 2}', "is damaged"),
        ('{"global_step": 5, "batches_seen": 5}', "says step 5"),
    ],
)
def test_a_bad_training_state_is_named(tmp_path, content, message):
    path = save(tmp_path, 2)
    (path / TRAINING_STATE).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)


def test_missing_files_are_named(tmp_path):
    path = save(tmp_path, 2)
    (path / "scheduler.bin").unlink()
    with pytest.raises(CheckpointError, match=r"scheduler\.bin is missing"):
        verify_checkpoint(path)
    (path / MANIFEST).unlink()  # without a manifest, the caller's required list decides
    verify_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"projector is missing"):
        verify_checkpoint(path, required=["projector"])


def test_latest_falls_back_past_damaged_checkpoints_and_an_explicit_one_stops(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step)
    truncate(tmp_path / "checkpoint-6" / "random_states_0.pkl")
    (tmp_path / "checkpoint-4" / "optimizer.bin").unlink()
    path, skipped = find_resume_checkpoint("latest", tmp_path)
    assert path == tmp_path / "checkpoint-2"
    assert [(error.checkpoint.name, error.file.name) for error in skipped] == [
        ("checkpoint-6", "random_states_0.pkl"),
        ("checkpoint-4", "optimizer.bin"),
    ]
    assert checkpoints_after(tmp_path, 2) == [tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"]
    with pytest.raises(CheckpointError, match=r"checkpoint-6/random_states_0\.pkl"):
        find_resume_checkpoint("checkpoint-6", tmp_path)  # relative to the output folder
    with pytest.raises(CheckpointError, match="nowhere is not a folder"):
        find_resume_checkpoint(str(tmp_path / "nowhere"), tmp_path)
    assert find_resume_checkpoint(None, tmp_path) == (None, [])
    assert find_resume_checkpoint("latest", tmp_path / "empty") == (None, [])

    moved = move_aside(tmp_path / "checkpoint-6", "damaged")
    assert moved.name == "checkpoint-6.damaged" and [step for step, _ in list_checkpoints(tmp_path)] == [2, 4]
    save(tmp_path, 6)
    assert move_aside(tmp_path / "checkpoint-6", "damaged").name == "checkpoint-6.damaged-2"


def test_incomplete_saves_are_removed(tmp_path):
    (tmp_path / ".checkpoint-4.tmp" / "transformer").mkdir(parents=True)
    (tmp_path / ".checkpoint-2.deleting").mkdir()
    assert [path.name for path in remove_incomplete_checkpoints(tmp_path)] == [
        ".checkpoint-2.deleting",
        ".checkpoint-4.tmp",
    ]
    assert not list(tmp_path.iterdir())


def test_one_run_per_output_folder(tmp_path):
    assert check_output_dir(tmp_path / "new", resume=False, overwrite=False) == []
    save(tmp_path, 2)
    (tmp_path / TRAINING_ARGS).write_text("{}")
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as error:
        check_output_dir(tmp_path, resume=False, overwrite=False)
    message = str(error.value)
    assert "checkpoint-2" in message and "--resume_from_checkpoint latest" in message
    assert "--overwrite_output_dir" in message
    assert check_output_dir(tmp_path, resume=True, overwrite=False) == []
    assert len(check_output_dir(tmp_path, resume=False, overwrite=True)) == 2
    removed = remove_run_outputs(tmp_path, ["model_index.json", "logs", "/etc", ".."])
    assert sorted(path.name for path in removed) == ["checkpoint-2", "model_index.json", TRAINING_ARGS]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]  # what the trainer did not write stays
    assert check_output_dir(tmp_path, resume=False, overwrite=False) == []


def test_resume_comparison_and_history():
    saved = {"learning_rate": 1e-4, "ema_decay": 0.9999, "batch_size": 256, "seed": 0, "model_kwargs": {"a": 1},
             "output_dir": "x", "validation_class_labels": [1, 2]}  # fmt: skip
    current = {"learning_rate": 5e-5, "ema_decay": 0.9999, "batch_size": 128, "seed": 1, "model_kwargs": {"a": 1},
               "output_dir": "y", "validation_class_labels": (1, 2), "new_flag": 3}  # fmt: skip
    diff = compare_resume_args(saved, current, applicable=["learning_rate", "ema_decay"], ignored=["output_dir"])
    assert diff.applied == {"learning_rate": (1e-4, 5e-5)}
    assert diff.refused == {"batch_size": (256, 128), "seed": (0, 1)}  # a tuple equals the saved JSON list
    message = diff.refusal("run/checkpoint-6")
    assert "--batch_size: 256 -> 128" in message and "--seed: 0 -> 1" in message and "learning_rate" not in message

    first = with_resume_history(saved, current, diff.applied, step=6)
    assert first["resume_history"] == [{"step": 6, "changed": {"learning_rate": [1e-4, 5e-5]}}]
    second = with_resume_history(first, {**current, "learning_rate": 1e-5}, {"learning_rate": (5e-5, 1e-5)}, step=9)
    assert len(second["resume_history"]) == 2
    assert with_resume_history(second, current, {}, step=12)["resume_history"] == second["resume_history"]
    assert value_history("learning_rate", 1e-5, second["resume_history"]) == (
        "0.0001 (steps 1-6), 5e-05 (steps 7-9), 1e-05 (steps 10-)"
    )
    assert value_history("seed", 1, second["resume_history"]) == 1


def test_on_main_process_returns_or_raises_everywhere():
    accelerator = FakeAccelerator()
    assert on_main_process(accelerator, lambda: 3) == 3
    with pytest.raises(ValueError, match="boom"):
        on_main_process(accelerator, lambda: (_ for _ in ()).throw(ValueError("boom")))


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGINT", "SIGUSR1")}
    with StopSignal() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the handler
        assert stop.received == "SIGTERM" and stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == "SIGTERM"  # the first signal is the one reported
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C after a stop request: stop at once
            os.kill(os.getpid(), signal.SIGINT)
    assert {name: signal.getsignal(getattr(signal, name)) for name in before} == before
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks for a stop, like SIGTERM
        assert stop.received == "SIGINT"


def test_all_processes_agree_to_stop():
    accelerator = FakeAccelerator(reduced_flag=1.0)
    accelerator.num_processes = 2
    with StopSignal() as stop:  # this process got no signal, another one did
        assert stop.received is None and stop.should_stop(accelerator)
    accelerator.reduced_flag = 0.0
    assert not StopSignal().should_stop(accelerator)


class SignalsItself(torch.utils.data.Dataset):
    """Each item sends SIGTERM and SIGINT to the process that loads it: a data-loader worker must ignore them."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        return index


def test_data_loader_workers_leave_signals_to_the_main_process():
    loader = torch.utils.data.DataLoader(SignalsItself(), num_workers=1, worker_init_fn=ignore_stop_signals)
    assert [batch.item() for batch in loader] == [0, 1, 2, 3]


def test_module_docstring_examples():
    import doctest

    import diffusers_repa.training_utils as module

    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_checkpoint_errors_survive_the_trip_to_other_processes(tmp_path):
    import pickle

    error = pickle.loads(pickle.dumps(CheckpointError(tmp_path, tmp_path / "optimizer.bin", "is missing")))
    assert isinstance(error, CheckpointError) and error.file == tmp_path / "optimizer.bin"
    assert str(error) == f"{tmp_path / 'optimizer.bin'} is missing"


def test_prepare_run_folder_rewinds_falls_back_and_stops_when_nothing_is_complete(tmp_path, caplog):
    accelerator = FakeAccelerator()
    for step in (2, 4, 6):
        save(tmp_path, step)
    # An explicit rewind to checkpoint-2: the later ones belong to the abandoned run and are renamed aside.
    assert prepare_run_folder(accelerator, tmp_path, "checkpoint-2") == tmp_path / "checkpoint-2"
    assert steps_of(tmp_path) == [2] and (tmp_path / "checkpoint-6.superseded").is_dir()
    assert "Renamed checkpoint-4 to checkpoint-4.superseded" in caplog.text

    truncate(tmp_path / "checkpoint-2" / "optimizer.bin")
    with pytest.raises(
        ValueError, match=r"No complete checkpoint .*checkpoint-2/optimizer\.bin.*--overwrite_output_dir"
    ):
        prepare_run_folder(accelerator, tmp_path, "latest")
    assert steps_of(tmp_path) == [2]  # nothing renamed or deleted when the run stops
    with pytest.raises(ValueError, match="holds another training run"):
        prepare_run_folder(accelerator, tmp_path, None)
    assert prepare_run_folder(accelerator, tmp_path, None, overwrite=True) is None
    assert list(tmp_path.iterdir()) == []
    assert prepare_run_folder(accelerator, tmp_path, "latest") is None  # nothing to resume: a new run


def steps_of(output_dir) -> list[int]:
    return [step for step, _ in list_checkpoints(output_dir)]


# ---------------------------------------------------------------------------------------------------- file helpers


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from diffusers_repa.utils import atomic_write, write_json_atomically

    path = tmp_path / "state.json"
    write_json_atomically(path, {"step": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path, "w") as file:
            file.write('{"step": 2, "trunc')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"step": 1}  # the old content, and no temporary file left
    assert sorted(item.name for item in tmp_path.iterdir()) == ["state.json"]
    with atomic_write(path) as file:  # binary by default
        file.write(b'{"step": 3}')
    assert json.loads(path.read_text()) == {"step": 3}
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(path, "a"):
            pass


def test_recorded_settings_guard(tmp_path):
    from diffusers_repa.utils import check_recorded_settings, write_json_atomically

    settings_file = tmp_path / "settings.json"
    assert check_recorded_settings(settings_file, {"resolution": 32}, hint="use another folder") is None
    write_json_atomically(settings_file, {"resolution": 32, "vae": None})
    assert check_recorded_settings(settings_file, {"resolution": 32, "vae": None}, hint="x") == {
        "resolution": 32,
        "vae": None,
    }
    with pytest.raises(ValueError) as error:
        check_recorded_settings(settings_file, {"resolution": 64, "vae": None}, "use another folder", "shards prepared")
    assert str(error.value) == (
        f"{tmp_path} holds shards prepared with other settings (recorded -> now: resolution: 32 -> 64): use another "
        "folder."
    )
    settings_file.write_text("{broken")
    with pytest.raises(ValueError, match="is unreadable"):
        check_recorded_settings(settings_file, {"resolution": 32}, hint="x")


# ---------------------------------------------------------------------------------------------------- loop helpers


def fused_setup(weight_decay: float = 0.01):
    """A parameter and a fused AdamW (fused runs on the CPU too), with a deferred guard."""
    from diffusers_repa.training_utils import NonFiniteGuard

    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter], lr=0.1, weight_decay=weight_decay, fused=True)
    return parameter, optimizer, NonFiniteGuard(optimizer, deferred=True, last_checkpoint="checkpoint-2")


def guarded_step(parameter, optimizer, guard, step: int, loss: float, grad: float) -> None:
    guard.check_loss(torch.tensor([loss, loss, 0.0]), step)
    parameter.grad = torch.full((3,), grad)
    guard.check_grad_norm(parameter.grad.norm(), step)
    optimizer.step()
    optimizer.zero_grad()


def test_deferred_guard_skips_non_finite_updates_without_a_sync_and_raises_later():
    parameter, optimizer, guard = fused_setup()
    guarded_step(parameter, optimizer, guard, 1, loss=1.0, grad=1.0)
    after_one = parameter.detach().clone()
    guard.raise_if_any(1)  # nothing wrong yet
    guarded_step(parameter, optimizer, guard, 2, loss=float("nan"), grad=float("nan"))  # a NaN loss and gradient
    guarded_step(parameter, optimizer, guard, 3, loss=2.0, grad=float("inf"))  # a finite loss, infinite gradient
    assert torch.equal(parameter.detach(), after_one)  # both updates skipped: no weight, moment or step change
    assert (
        optimizer.state[parameter]["step"].item() == 1 and torch.isfinite(optimizer.state[parameter]["exp_avg"]).all()
    )
    guarded_step(parameter, optimizer, guard, 4, loss=1.0, grad=1.0)  # finite steps go on until the check
    assert not torch.equal(parameter.detach(), after_one) and torch.isfinite(parameter).all()
    with pytest.raises(FloatingPointError) as error:
        guard.raise_if_any(4)
    message = str(error.value)
    assert message.startswith("The loss is nan (denoising nan, projection 0.0) at step 2; its update")  # the first
    assert "training stopped at step 4" in message and "Last checkpoint: checkpoint-2" in message


def test_deferred_guard_names_a_gradient_and_the_immediate_guard_raises_at_once():
    from diffusers_repa.training_utils import NonFiniteGuard

    parameter, optimizer, guard = fused_setup()
    guarded_step(parameter, optimizer, guard, 1, loss=1.0, grad=float("inf"))
    with pytest.raises(FloatingPointError, match=r"The gradient norm is inf at step 1; its update"):
        guard.raise_if_any(1)

    immediate = NonFiniteGuard(optimizer)
    with pytest.raises(FloatingPointError, match=r"The loss is nan .* at step 7; training stopped before applying"):
        immediate.check_loss(torch.tensor([float("nan"), 1.0, 0.0]), 7)
    with pytest.raises(FloatingPointError, match=r"The gradient norm is inf at step 8;"):
        immediate.check_grad_norm(torch.tensor(float("inf")), 8)
    NonFiniteGuard(optimizer, check_gradients=False).check_grad_norm(torch.tensor(float("inf")), 8)  # fp16's scaler


def test_step_metrics_average_between_logging_steps_and_leave_pauses_out(monkeypatch):
    from diffusers_repa import training_utils
    from diffusers_repa.training_utils import StepMetrics

    clock = iter([0.0, 10.0, 14.0, 20.0])  # start, pause begins, pause ends, pop
    monkeypatch.setattr(training_utils.time, "perf_counter", lambda: next(clock))
    metrics = StepMetrics(torch.device("cpu"))
    for loss, grad_norm in ((1.0, 2.0), (3.0, 4.0)):
        for micro in (loss - 0.5, loss + 0.5):  # two micro-steps
            metrics.add_micro_step(torch.tensor([micro, micro / 2, -0.1]), accumulation_steps=2)
        metrics.add_step(torch.tensor(grad_norm))
    with metrics.paused():
        pass
    logs = metrics.pop(global_batch_size=8)
    assert logs == pytest.approx(
        {"loss": 2.0, "denoising_loss": 1.0, "projection_loss": -0.1, "grad_norm": 3.0, "images_per_second": 1.0}
    )  # 2 steps x 8 images in 20 s minus the 4 s pause
    assert metrics.steps == 0 and torch.equal(metrics.sums, torch.zeros(4))


def test_per_process_batch_size_and_validation_labels():
    from diffusers_repa.training_utils import per_process_batch_size, validation_labels

    assert per_process_batch_size(256, 8, 2) == 16
    with pytest.raises(ValueError, match=r"--batch_size 6 \(global\) must be divisible .* = 4"):
        per_process_batch_size(6, 2, 2)
    assert validation_labels(None, 1000) == (0, 143, 285, 428, 571, 714, 856, 999)
    assert validation_labels(None, 3) == (0, 1, 2) and validation_labels([2, 0], 3) == (2, 0)
    with pytest.raises(ValueError, match=r"\[3\] are not class ids in \[0, 2\]"):
        validation_labels([0, 3], 3)


def test_compile_blocks_compiles_the_repeated_blocks_or_refuses_in_one_sentence(monkeypatch):
    from diffusers_repa import SiTTransformer2DModel
    from diffusers_repa.training_utils import compile_blocks

    calls = []
    monkeypatch.setattr(SiTTransformer2DModel, "compile_repeated_blocks", lambda self, **kwargs: calls.append(kwargs))
    compile_blocks(SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=8, num_classes=2, alignment_depth=1))
    assert calls == [{"fullgraph": True}]
    with pytest.raises(ValueError, match=r"Linear declares none .* run without --torch_compile"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_update_ema_is_diffusers_ema_step_in_place_and_keeps_its_bookkeeping():
    """The one-pass EMA equals `EMAModel.step` over several steps (decay schedule, frozen copy, step count), and the
    trainer's optimizer is fused on the CPU and CUDA only."""
    from diffusers.training_utils import EMAModel

    from diffusers_repa.training_utils import update_ema, use_fused_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].weight.requires_grad_(False)  # a frozen weight is copied, not averaged
    reference = EMAModel(model.parameters(), decay=0.99, min_decay=0.1, foreach=True)
    ours = EMAModel(model.parameters(), decay=0.99, min_decay=0.1, foreach=True)
    shadows = [shadow.data_ptr() for shadow in ours.shadow_params]
    for _ in range(5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        reference.step(model.parameters())
        update_ema(ours, model.parameters())
        assert ours.cur_decay_value == reference.cur_decay_value
        for got, expected in zip(ours.shadow_params, reference.shadow_params):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert ours.optimization_step == reference.optimization_step == 5
    assert 0.1 < ours.cur_decay_value < 0.99  # the warm-up part of the schedule was exercised
    assert torch.equal(ours.shadow_params[2], model[1].weight)  # the frozen weight follows exactly
    assert [shadow.data_ptr() for shadow in ours.shadow_params] == shadows  # updated in place
    assert use_fused_optimizer(torch.device("cpu")) and use_fused_optimizer(torch.device("cuda", 0))
    assert not use_fused_optimizer(torch.device("meta"))


def test_a_resume_with_another_process_count_continues_the_lr_schedule_at_the_same_step(tmp_path, caplog):
    """accelerate steps the schedule once per process and optimizer step: a checkpoint of 2 processes at step 3 holds
    position 6, which a 1-process resume must read as step 3 (not as step 6 of its own warm-up)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from diffusers_repa.training_utils import load_training_state, write_manifest

    from .train_fixtures import reset_accelerate

    def schedule(accelerator, processes):
        weight = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=4 * processes, num_training_steps=8 * processes)
        return accelerator.prepare(optimizer, scheduler)

    try:
        saved = Accelerator(cpu=True)
        optimizer, scheduler = schedule(saved, processes=2)
        for _ in range(3 * 2):  # 3 optimizer steps of a 2-process run
            optimizer.step()
            scheduler.scheduler.step()
        checkpoint = tmp_path / "checkpoint-3"
        saved.save_state(str(checkpoint))
        write_manifest(checkpoint, num_processes=2)
        (checkpoint / TRAINING_STATE).write_text(json.dumps({"global_step": 3, "batches_seen": 3}))

        resumed = Accelerator(cpu=True)
        optimizer, scheduler = schedule(resumed, processes=1)
        with caplog.at_level("WARNING"):
            assert load_training_state(resumed, checkpoint, scheduler).global_step == 3
        assert "saved by 2 processes and this run has 1: the random streams differ" in caplog.text
        optimizer.step()
        scheduler.step()  # step 4 of the warm-up over 4 steps: the full learning rate
        assert scheduler.get_last_lr() == [1.0]
    finally:
        reset_accelerate()
