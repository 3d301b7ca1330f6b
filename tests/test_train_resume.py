"""Resuming `training/train_repa.py` safely: one run per output folder, what a resume may change (applied and
recorded) or not (refused before the first step), damaged checkpoints, and preemption by SIGTERM (one process and
two) that loses nothing."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from diffusers_repa import training_utils

from .train_fixtures import (
    REPO_ROOT,
    TINY_SIT,
    TRAINING_DIR,
    assert_same_tensors,
    build_workspace,
    latent_args,
    run_training,
    subprocess_env,
    training_module,
)

train_repa = training_module("train_repa")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("resume"))


def without_steps(patch: pytest.MonkeyPatch) -> None:
    """Make any training step fail the test: the errors under test must come before the first step."""
    patch.setattr(train_repa.REPALoss, "__call__", lambda *args, **kwargs: pytest.fail("a training step ran"))


def steps(output) -> list[int]:
    return [step for step, _ in training_utils.list_checkpoints(output)]


def test_a_fresh_run_into_another_runs_folder_stops_or_overwrites(workspace, tmp_path, monkeypatch):
    output = tmp_path / "run"
    run_training(latent_args(workspace, output, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    (output / "notes.txt").write_text("mine")
    rerun = latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "2", "--seed", "1")
    with monkeypatch.context() as patch:
        without_steps(patch)
        with pytest.raises(ValueError) as error:
            run_training(rerun)
    message = str(error.value)
    assert "holds another training run" in message and "checkpoint-4" in message
    assert "--resume_from_checkpoint latest" in message and "--overwrite_output_dir" in message
    assert steps(output) == [2, 4] and json.loads((output / "training_args.json").read_text())["seed"] == 0

    run_training(rerun + ["--overwrite_output_dir"])  # deletes the old run first: no stale checkpoint-4 is left
    assert steps(output) == [2] and (output / "notes.txt").read_text() == "mine"
    assert json.loads((output / "training_args.json").read_text())["seed"] == 1
    fresh = tmp_path / "fresh"
    run_training(latent_args(workspace, fresh, "--max_train_steps", "2", "--checkpointing_steps", "2", "--seed", "1"))
    assert_same_tensors(fresh / "checkpoint-2", output / "checkpoint-2")
    assert_same_tensors(fresh / "transformer", output / "transformer")


def test_a_resume_refuses_every_change_it_cannot_honour_in_one_error(workspace, tmp_path, monkeypatch):
    output = tmp_path / "run"
    run_training(latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    recorded = (output / "training_args.json").read_text()
    changed = latent_args(
        workspace, output, "--max_train_steps", "4", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest",
        "--batch_size", "8", "--seed", "1", "--path_type", "cosine", "--learning_rate", "1e-3", "--proj_coeff", "0",
        "--encoder", "none", "--model_kwargs", TINY_SIT.replace('"num_layers": 2', '"num_layers": 3'),
    )  # fmt: skip
    with monkeypatch.context() as patch:
        without_steps(patch)
        with pytest.raises(ValueError) as error:
            run_training(changed)
    message = str(error.value)
    assert f"Cannot resume from {output / 'checkpoint-2'}" in message
    for expected in (
        "--batch_size: 4 -> 8", "--seed: 0 -> 1", "--path_type: 'linear' -> 'cosine'", "'num_layers': 3",
        "--proj_coeff: 0.5 -> 0.0", "--encoder: ",
    ):  # fmt: skip
        assert expected in message, message
    assert "learning_rate" not in message  # a change a resume applies is not refused
    assert (output / "training_args.json").read_text() == recorded  # nothing recorded for a run that did not run
    # Stopping the alignment at a step is a schedule change, not a model change: it may change on resume.
    assert "alignment_stop_step" in train_repa.RESUME_CAN_CHANGE and "batch_size" not in train_repa.RESUME_CAN_CHANGE


def test_latest_without_a_checkpoint_restarts_only_the_folders_own_run(workspace, tmp_path, monkeypatch):
    """A run that stopped before its first checkpoint leaves its options, logs and grids: `latest` (no checkpoint)
    restarts it with its options, but refuses other ones instead of mixing a second run into the folder."""
    output = tmp_path / "run"
    first = latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "100")
    run_training(first + ["--validation_steps", "1"])
    # A finished run saves its last step; without it, the folder is that of a run killed before its first checkpoint.
    shutil.rmtree(output / "checkpoint-2")
    assert steps(output) == [] and (output / "samples" / "step-0000001.png").is_file()
    with monkeypatch.context() as patch:
        without_steps(patch)
        with pytest.raises(ValueError) as error:
            run_training(first + ["--seed", "1", "--batch_size", "8", "--resume_from_checkpoint", "latest"])
    message = str(error.value)
    assert "stopped before its first checkpoint" in message and "--overwrite_output_dir" in message, message
    assert "--seed: 0 -> 1" in message and "--batch_size: 4 -> 8" in message, message
    assert json.loads((output / "training_args.json").read_text())["seed"] == 0
    run_training(first + ["--resume_from_checkpoint", "latest", "--logging_steps", "2"])  # its own run: restarts


def test_the_last_step_is_saved_before_the_final_evaluation_and_a_signal_there_stops_before_the_outputs(
    workspace, tmp_path, monkeypatch, capsys
):
    """A run ending between checkpoints saves its last step before the final evaluation and outputs (long at real
    sizes): a SIGTERM during them stops with that checkpoint and no final outputs, and `latest` then writes the outputs
    without training a step."""
    output = tmp_path / "run"
    argv = latent_args(workspace, output, "--max_train_steps", "3", "--checkpointing_steps", "2")
    final_evaluation = training_utils.TrainingEvaluation.run

    def run(self, *args, final=False, **kwargs):
        if final:
            os.kill(os.getpid(), signal.SIGTERM)  # the job's preemption notice arrives during the final evaluation
        return final_evaluation(self, *args, final=final, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training_utils.TrainingEvaluation, "run", run)
        run_training(argv)
    assert steps(output) == [2, 3]
    assert "Stopped by SIGTERM at step 3; saved" in capsys.readouterr().out
    assert not (output / "model_index.json").exists() and not (output / "README.md").exists()
    with monkeypatch.context() as patch:
        without_steps(patch)
        run_training(argv + ["--resume_from_checkpoint", "latest"])
    assert (output / "model_index.json").is_file() and (output / "sample_grid.png").is_file()
    assert steps(output) == [2, 3]


def test_a_resume_refuses_other_data_under_the_same_name(workspace, tmp_path, monkeypatch):
    """The dataset's size is recorded with the options: a resume on a dataset folder that now holds other rows (e.g.
    shards added by a preparation that was still running) would silently shift the order of every resumed epoch."""
    data = tmp_path / "data"
    shutil.copytree(workspace.data, data)
    moved = types.SimpleNamespace(**{**vars(workspace), "data": data})
    output = tmp_path / "run"
    argv = latent_args(moved, output, "--max_train_steps", "4", "--checkpointing_steps", "2")
    run_training(argv)
    assert json.loads((output / "checkpoint-2" / "training_args.json").read_text())["dataset_num_examples"] == 24
    (data / "data" / "train-00002.parquet").unlink()  # 4 of the 24 rows
    with monkeypatch.context() as patch:
        without_steps(patch)
        with pytest.raises(ValueError, match=r"--dataset_num_examples: 24 -> 20"):
            run_training(argv + ["--max_train_steps", "6", "--resume_from_checkpoint", "latest"])


def test_a_second_run_is_kept_out_of_a_folder_in_use(workspace, tmp_path, monkeypatch):
    """While a run holds --output_dir (e.g. a preempted job still saving when its replacement starts), another run
    stops before touching it; the lock goes with the run, also when the run fails."""
    import fcntl

    output = tmp_path / "run"
    argv = latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "2")
    output.mkdir()
    (output / ".checkpoint-4.tmp").mkdir()  # the save in progress of the run holding the folder
    with open(output / training_utils.RUN_LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("process 123 on node-7\n")
        held.flush()
        with monkeypatch.context() as patch:
            without_steps(patch)
            with pytest.raises(ValueError, match=r"in use by another training run \(process 123 on node-7\)"):
                run_training(argv + ["--resume_from_checkpoint", "latest"])
        assert (output / ".checkpoint-4.tmp").is_dir()
    (output / ".checkpoint-4.tmp").rmdir()
    with pytest.raises(ValueError, match="is not a folder"):  # a failed run releases the folder ...
        run_training(argv + ["--resume_from_checkpoint", str(output / "checkpoint-2")])
    run_training(argv)  # ... for the next one
    assert steps(output) == [2]


def edit_checkpoint(checkpoint, learning_rate: float, ema_decay: float) -> None:
    """Write new values into a checkpoint's optimizer, LR schedule, EMA and options, as if trained with them."""
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    for group in optimizer["param_groups"]:
        group["lr"] = group["initial_lr"] = learning_rate
    torch.save(optimizer, checkpoint / "optimizer.bin")
    schedule = torch.load(checkpoint / "scheduler.bin", weights_only=False)
    schedule["base_lrs"] = schedule["_last_lr"] = [learning_rate]
    torch.save(schedule, checkpoint / "scheduler.bin")
    config = json.loads((checkpoint / "transformer_ema" / "config.json").read_text())
    config["decay"] = config["min_decay"] = ema_decay
    (checkpoint / "transformer_ema" / "config.json").write_text(json.dumps(config))
    if (checkpoint / "training_args.json").is_file():
        options = json.loads((checkpoint / "training_args.json").read_text())
        options.update(learning_rate=learning_rate, ema_decay=ema_decay)
        (checkpoint / "training_args.json").write_text(json.dumps(options))
    training_utils.write_manifest(checkpoint, num_processes=1)


def test_a_resume_applies_a_new_learning_rate_and_ema_decay_and_records_them(workspace, tmp_path, caplog):
    output, edited = tmp_path / "run", tmp_path / "edited"
    run_training(latent_args(workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    shutil.copytree(output / "checkpoint-2", edited / "checkpoint-2")
    edit_checkpoint(edited / "checkpoint-2", learning_rate=1e-3, ema_decay=0.5)
    resume = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest",
              "--learning_rate", "1e-3", "--ema_decay", "0.5"]  # fmt: skip

    with caplog.at_level(logging.WARNING):
        run_training(latent_args(workspace, output, *resume))
    assert "learning_rate changed 0.002 -> 0.001 on resume (from step 3)" in caplog.text
    assert "ema_decay changed 0.9 -> 0.5 on resume" in caplog.text
    caplog.clear()
    run_training(latent_args(workspace, edited, *resume))  # the checkpoint already holds the new values
    assert "learning_rate changed" not in caplog.text and "ema_decay changed" not in caplog.text
    # The new values were used from the first resumed step: the same weights, EMA and optimizer state.
    assert_same_tensors(edited / "checkpoint-4", output / "checkpoint-4")
    first, second = (torch.load(run / "checkpoint-4" / "optimizer.bin", weights_only=True) for run in (output, edited))
    assert first["param_groups"] == second["param_groups"]
    for state_a, state_b in zip(first["state"].values(), second["state"].values(), strict=True):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    learning_rates = {event.step: event.value for event in scalars(output, "lr")}  # two runs' event files
    assert [learning_rates[step] for step in (1, 2, 3, 4)] == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3])

    # What was used is what is recorded: the options, their history, and the model card.
    options = json.loads((output / "training_args.json").read_text())
    assert options["learning_rate"] == 1e-3 and options["ema_decay"] == 0.5
    changed = {"max_train_steps": [2, 4], "learning_rate": [2e-3, 1e-3], "ema_decay": [0.9, 0.5]}
    assert options["resume_history"] == [{"step": 2, "changed": changed}]
    assert json.loads((output / "checkpoint-4" / "training_args.json").read_text()) == options
    card = (output / "README.md").read_text()
    assert "| `learning_rate` | `0.002 (steps 1-2), 0.001 (steps 3-)` |" in card
    assert "| `ema_decay` | `0.9 (steps 1-2), 0.5 (steps 3-)` |" in card


def scalars(output, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(output / "logs" / "repa")).Reload().Scalars(tag)


def test_a_damaged_checkpoint_is_named_and_latest_falls_back(workspace, tmp_path, monkeypatch, capsys, caplog):
    output = tmp_path / "run"
    run_training(latent_args(workspace, output, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    damaged = output / "checkpoint-4" / "random_states_0.pkl"
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated: accelerate would only log INFO and go on
    resume = latent_args(workspace, output, "--max_train_steps", "6", "--checkpointing_steps", "2")

    with monkeypatch.context() as patch:  # an explicit checkpoint that is damaged: stop, naming the file
        without_steps(patch)
        with pytest.raises(ValueError, match=r"checkpoint-4/random_states_0\.pkl has 100 bytes instead of"):
            run_training(resume + ["--resume_from_checkpoint", str(output / "checkpoint-4")])
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        run_training(resume + ["--resume_from_checkpoint", "latest"])
    assert f"Resuming from {output / 'checkpoint-2'}" in capsys.readouterr().out
    assert re.search(r"Not resuming from checkpoint-4: .*checkpoint-4/random_states_0\.pkl", caplog.text)
    assert (output / "checkpoint-4.damaged" / "random_states_0.pkl").stat().st_size == 100  # kept aside
    assert steps(output) == [2, 4, 6]

    reference = tmp_path / "reference"
    run_training(latent_args(workspace, reference, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert_same_tensors(reference / "checkpoint-4", output / "checkpoint-4")
    assert_same_tensors(reference / "checkpoint-6", output / "checkpoint-6")


def run_and_signal(argv: list[str], log, total: int, after_step: int) -> subprocess.Popen:
    """Run `train_repa.py` as a script in its own process group and send the group SIGTERM (as SLURM does) once the
    progress bar shows step `after_step` of `total`."""
    command = [sys.executable, str(TRAINING_DIR / "train_repa.py"), *argv]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=subprocess_env() | {"PYTHONUNBUFFERED": "1"}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        done = [int(step) for step in re.findall(rf"\b(\d+)/{total}\b", log.read_text(errors="replace"))]
        if done and max(done) >= after_step:
            os.killpg(process.pid, signal.SIGTERM)  # the main process and its data-loader worker
            break
        time.sleep(0.05)
    process.wait(timeout=300)
    return process


def test_sigterm_saves_the_step_reached_and_resuming_matches_an_uninterrupted_run(workspace, tmp_path):
    output, log = tmp_path / "run", tmp_path / "log.txt"
    argv = latent_args(
        workspace, output, "--max_train_steps", "20", "--checkpointing_steps", "5", "--dataloader_num_workers", "1"
    )
    process = run_and_signal(argv, log, total=20, after_step=7)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "Received SIGTERM: stopping after the current step" in text
    stopped = re.search(r"Stopped by SIGTERM at step (\d+); saved (.+?)\. Run the same command", text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert 7 <= step < 20 and stopped.group(2) == str(output / f"checkpoint-{step}")
    assert steps(output)[-1] == step  # mid-interval: checkpoint-5 and the step it reached
    assert json.loads((output / f"checkpoint-{step}" / "training_state.json").read_text())["global_step"] == step
    assert not (output / "model_index.json").exists()  # the run is not finished: no final outputs yet

    run_training(argv + ["--resume_from_checkpoint", "latest"])  # the re-queued job
    reference = tmp_path / "reference"
    run_training(
        latent_args(
            workspace,
            reference,
            "--max_train_steps",
            "20",
            "--checkpointing_steps",
            "5",
            "--dataloader_num_workers",
            "1",
        )
    )
    assert_same_tensors(reference / "checkpoint-20", output / "checkpoint-20")
    assert_same_tensors(reference / "transformer", output / "transformer")


# Runs train_repa.py where only process 1 receives SIGTERM, during its third training step.
SIGNAL_ONE_RANK = """
import os, signal, sys
import train_repa
original, calls = train_repa.REPALoss.__call__, []
def call(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args, **kwargs)
train_repa.REPALoss.__call__ = call
train_repa.main(train_repa.parse_args(sys.argv[1:]))
"""


def test_two_processes_stop_at_the_same_step_when_one_is_signalled(workspace, tmp_path):
    script = tmp_path / "signal_one_rank.py"
    script.write_text(SIGNAL_ONE_RANK)
    output = tmp_path / "run"
    argv = latent_args(workspace, output, "--max_train_steps", "10", "--checkpointing_steps", "100")
    port = str(29500 + (hash(str(tmp_path)) + 500) % 1000)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
        str(script), *argv,
    ]  # fmt: skip
    env = subprocess_env() | {"ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Stopped by a signal to another process at step 3" in result.stdout, result.stdout[-2000:]
    assert steps(output) == [3]  # both processes saved the same step together
    assert {path.name for path in (output / "checkpoint-3").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    assert not (output / "model_index.json").exists()


def test_checkpoint_and_validation_cadence_do_not_change_the_numbers(workspace, tmp_path):
    """Saving and validating leave the training's random stream alone, so a resume may change their cadence and a
    stop on SIGTERM may save an extra checkpoint without changing the result."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_training(latent_args(workspace, first, "--max_train_steps", "6", "--checkpointing_steps", "6"))
    run_training(
        latent_args(
            workspace, second, "--max_train_steps", "6", "--checkpointing_steps", "1", "--validation_steps", "2"
        )
    )
    assert steps(second) == [1, 2, 3, 4, 5, 6] and (second / "samples" / "step-0000004.png").is_file()
    assert_same_tensors(first / "checkpoint-6", second / "checkpoint-6")
