"""Faults in `training/train_repa.py`: kill -9 during a checkpoint save and during a step, a non-finite loss, unusable
images, and settings that do not fit together (all reported before the first step)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusers_repa import SiTTransformer2DModel, training_utils
from diffusers_repa.data import load_image_dataset

from .train_fixtures import (
    COMMON_ARGS,
    REPO_ROOT,
    TINY_SIT,
    TRAINING_DIR,
    assert_same_tensors,
    build_workspace,
    latent_args,
    make_image_folder,
    run_prepare,
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
    assert [step for step, _ in training_utils.list_checkpoints(output)] == [2]
    partial = output / ".checkpoint-4.tmp"
    assert (partial / "transformer").is_dir() and not (partial / "training_state.json").exists()

    # 2. "latest" picks checkpoint-2, not the partial save; this run saves checkpoint-4, then dies in step 5.
    result = run_killed(workspace, tmp_path, "--kill_at_call", 3, argv + ["--resume_from_checkpoint", "latest"])
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert f"Resuming from {output / 'checkpoint-2'}" in result.stdout
    assert [step for step, _ in training_utils.list_checkpoints(output)] == [2, 4]
    assert not list(output.glob(".checkpoint-*"))

    # 3. Resuming again loses at most the interval since checkpoint-4, and ends where an uninterrupted run ends.
    run_training(argv + ["--resume_from_checkpoint", "latest"])
    reference = tmp_path / "reference"
    run_training(latent_args(workspace, reference, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert_same_tensors(reference / "checkpoint-6", output / "checkpoint-6")
    assert_same_tensors(reference / "transformer", output / "transformer")


def poison_loss(monkeypatch, call: int) -> None:
    """Make the loss of the `call`-th `REPALoss` call NaN."""
    original_call, calls = train_repa.REPALoss.__call__, []

    def poisoned(self, *args, **kwargs):
        output = original_call(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(train_repa.REPALoss, "__call__", poisoned)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(workspace, tmp_path, monkeypatch):
    poison_loss(monkeypatch, call=3)
    output = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"The loss is nan .* at step 3; .*Last checkpoint: .*checkpoint-2"):
        run_training(latent_args(workspace, output, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert [step for step, _ in training_utils.list_checkpoints(output)] == [2]
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


def test_with_a_fused_optimizer_a_non_finite_step_is_skipped_on_the_device_and_stops_at_the_next_check(
    workspace, tmp_path, monkeypatch
):
    """The GPU path (fused AdamW, no per-step host sync), forced on the CPU: the poisoned step 3 never reaches the
    weights or the EMA, nothing is saved after it, and the run stops at the next logging step with the step named."""
    original_update_ema, finite = train_repa.update_ema, []

    def update_ema(ema, parameters):
        parameters = list(parameters)
        finite.append(all(torch.isfinite(parameter).all() for parameter in parameters))
        original_update_ema(ema, parameters)
        finite[-1] &= all(torch.isfinite(shadow).all() for shadow in ema.shadow_params)

    monkeypatch.setattr(train_repa, "use_fused_optimizer", lambda device: True)
    poison_loss(monkeypatch, call=3)
    monkeypatch.setattr(train_repa, "update_ema", update_ema)
    output = tmp_path / "run"
    argv = latent_args(
        workspace, output, "--max_train_steps", "8", "--checkpointing_steps", "2", "--logging_steps", "4"
    )
    with pytest.raises(FloatingPointError) as error:
        run_training(argv)
    message = str(error.value)
    assert message.startswith("The loss is nan (denoising ") and " at step 3; its update" in message, message
    assert "training stopped at step 4" in message and f"Last checkpoint: {output / 'checkpoint-2'}" in message
    assert finite == [True] * 4  # weights and EMA finite after every step, the skipped one included
    assert [step for step, _ in training_utils.list_checkpoints(output)] == [2]  # no checkpoint-4 after the NaN
    assert not (output / "model_index.json").exists()


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
        (["--validation_class_labels", "0", "3"], r"--validation_class_labels \[3\] are not class ids in \[0, 2\]"),
        (["--gradient_checkpointing_blocks", "3"], r"--gradient_checkpointing_blocks must be in \[1, 2\] \(the SiT"),
    ],
    ids=["depth", "resolution", "encoder-tokens", "batch", "validation-labels", "checkpointed-blocks"],
)
def test_mismatches_fail_before_the_first_step(workspace, tmp_path, monkeypatch, extra, message):
    def first_step(*args, **kwargs):
        raise AssertionError("a training step ran before the error")

    monkeypatch.setattr(train_repa.REPALoss, "__call__", first_step)
    with pytest.raises(ValueError, match=message):
        run_training(latent_args(workspace, tmp_path / "run", "--max_train_steps", "2", *extra))


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_sharded_accelerate_configurations_are_refused_before_any_work(workspace, tmp_path, monkeypatch, kind):
    """DeepSpeed/FSDP shard the weights, which the EMA and the diffusers-format checkpoints cannot follow."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType[kind]))
    output = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"accelerate is configured for {kind}, which shards the weights"):
        run_training(latent_args(workspace, output, "--max_train_steps", "2"))
    assert not output.exists() or not any(output.iterdir())  # nothing written


def test_resolution_the_encoder_cannot_use_fails_before_the_first_step(workspace, tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        run_training(
            COMMON_ARGS
            + ["--train_data_dir", str(workspace.images), "--encoder", str(workspace.dino), "--resolution", "40",
               "--model", "SiT-S/8", "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")]
        )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be a positive integer, got 0"),
        (["--checkpoints_total_limit", "-1"], "--checkpoints_total_limit must be a positive integer, got -1"),
        (["--ema_decay", "1.5"], r"--ema_decay must be in \[0, 1\)"),
        (["--ema_decay", "1"], r"--ema_decay must be in \[0, 1\)"),
        (["--learning_rate=-1e-4"], "--learning_rate must be a positive number"),
        (["--learning_rate", "nan"], "--learning_rate must be a positive number, got nan"),
        (["--batch_size", "0"], "--batch_size must be a positive integer"),
        (["--cfg_prob", "1.0"], r"--cfg_prob must be in \[0, 1\)"),
        (["--adam_beta2", "1"], r"--adam_beta2 must be in \[0, 1\)"),
        (["--lr_warmup_steps", "-5"], "--lr_warmup_steps must be >= 0"),
        (["--proj_coeff", "-0.5"], "--proj_coeff must be >= 0"),
        (["--latent_scale", "0"], "--latent_scale must be a finite non-zero number"),
        (["--max_grad_norm", "nan"], "--max_grad_norm must be a number"),
        (["--validation_steps", "0"], "--validation_steps must be a positive integer"),
        (["--gradient_checkpointing_blocks", "0"], "--gradient_checkpointing_blocks must be a positive integer"),
        (["--model_kwargs", "[1, 2]"], "expected a JSON object"),
        (["--model_kwargs", "{num_layers: 2}"], "not valid JSON"),
        (["--overwrite_output_dir", "--resume_from_checkpoint", "latest"], "cannot be combined"),
        (["--lr_warmup_steps", "10"], "--lr_warmup_steps needs a schedule with warm-up"),  # was no warm-up
        (["--lr_scheduler", "cosinus"], "argument --lr_scheduler: invalid choice"),  # was a traceback after set-up
        (["--cfg_prob", "0"], "--cfg_prob 0 trains no null class"),  # the default guidance 4.0 failed mid-run
    ],
)
def test_bad_option_values_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        train_repa.parse_args(["--train_data_dir", "images", *flags])
    assert re.search(message, capsys.readouterr().err)


def test_validation_samples_in_eval_mode_and_training_goes_on_in_train_mode(workspace, tmp_path, monkeypatch):
    """In train mode the model drops 10% of the class labels: sampling must never run in it."""
    calls, validating = [], []
    original_forward, original_grid = SiTTransformer2DModel.forward, training_utils.sample_grid

    def forward(self, *args, **kwargs):
        calls.append((bool(validating), self.training))
        return original_forward(self, *args, **kwargs)

    def sample_grid(*args, **kwargs):
        validating.append(True)
        try:
            return original_grid(*args, **kwargs)
        finally:
            validating.clear()

    monkeypatch.setattr(SiTTransformer2DModel, "forward", forward)
    monkeypatch.setattr(training_utils, "sample_grid", sample_grid)
    argv = latent_args(workspace, tmp_path / "run", "--max_train_steps", "4", "--checkpointing_steps", "4")
    run_training(argv + ["--validation_steps", "2"])  # grids after steps 2 and 4, and the final one
    sampling = [training for in_validation, training in calls if in_validation]
    training = [training for in_validation, training in calls if not in_validation]
    assert len(sampling) == 3 * 2 and not any(sampling)  # 3 grids x 2 steps (one call each: CFG is batched) ...
    assert len(training) == 4 and all(training)  # ... and every training step after a validation in train mode


def prepare_argv(workspace, output, *extra: str, workers: int = 0) -> list[str]:
    return [
        "--train_data_dir", str(workspace.images), "--resolution", "32", "--vae", str(workspace.vae),
        "--output_dir", str(output), "--cache_dir", str(workspace.cache), "--dataloader_num_workers", str(workers),
        *extra,
    ]  # fmt: skip


def test_prepare_latents_stops_on_sigint_after_a_whole_shard_and_resumes(workspace, tmp_path):
    output, log = tmp_path / "prepared", tmp_path / "log.txt"
    argv = prepare_argv(workspace, output, "--shard_size", "2", "--batch_size", "2", workers=1)
    command = [sys.executable, str(TRAINING_DIR / "prepare_latents.py"), *argv]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list((output / "data").glob("train-*.parquet")):
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the main process and its data-loader worker
            break
        time.sleep(0.02)
    process.wait(timeout=300)
    text = log.read_text(errors="replace")
    assert process.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert re.search(r"Stopped by SIGINT: \d+ shards are complete .* Run the same command again", text), text[-2000:]
    shards = sorted((output / "data").glob("train-*.parquet"))
    assert 1 <= len(shards) < 12 and not list(output.rglob(".*.tmp")) and not (output / "README.md").exists()
    assert len(list((output / ".stats").glob("shard-*.json"))) >= len(shards)

    run_prepare(prepare_argv(workspace, output, "--shard_size", "2"))  # the rest: the same rows as a run in one go
    resumed = load_image_dataset(dataset_name=str(output), cache_dir=str(tmp_path / "cache"))
    reference = load_image_dataset(dataset_name=str(workspace.data), cache_dir=str(tmp_path / "cache"))
    assert len(resumed) == len(reference) == 24 and resumed["label"] == reference["label"]
    # (batches of 2 instead of 10 change the VAE's float rounding, nothing else)
    torch.testing.assert_close(torch.tensor(resumed["moments"]), torch.tensor(reference["moments"]), rtol=0, atol=1e-5)
    assert "24 images" in (output / "README.md").read_text()


def test_prepare_latents_a_failed_start_does_not_block_the_corrected_command(workspace, tmp_path):
    output = tmp_path / "prepared"
    argv = prepare_argv(workspace, output, "--shard_size", "12")
    wrong = argv[:]
    wrong[wrong.index("--vae") + 1] = str(tmp_path / "no-such-vae")
    with pytest.raises(OSError):
        run_prepare(wrong)
    run_prepare(argv)  # was refused: "holds shards prepared with other settings"
    assert len(list((output / "data").glob("train-*.parquet"))) == 2
    changed = prepare_argv(workspace, output, "--shard_size", "5")
    with pytest.raises(ValueError, match="holds shards prepared with other settings"):  # once shards exist
        run_prepare(changed)


def test_training_on_an_unfinished_prepared_dataset_stops_before_any_work(workspace, tmp_path, monkeypatch):
    """prepare_latents.py writes its dataset card only when every shard is written: a folder without it (stopped, or
    still running) would train on a subset of the rows, and a later resume on the finished folder would see others."""
    data = tmp_path / "prepared"
    shutil.copytree(workspace.data, data)
    (data / "README.md").unlink()
    (data / "data" / "train-00002.parquet").unlink()
    argv = latent_args(workspace, tmp_path / "run", "--max_train_steps", "2")
    argv[argv.index("--dataset_name") + 1] = str(data)
    monkeypatch.setattr(train_repa.REPALoss, "__call__", lambda *args, **kwargs: pytest.fail("a training step ran"))
    with pytest.raises(ValueError, match="prepare_latents.py has not finished .* Run the same prepare_latents.py"):
        run_training(argv)


def test_prepare_latents_card_counts_only_the_shards_written(workspace, tmp_path):
    """A kill between a shard's stats file and its shard, in an attempt with other settings, leaves a stats file no
    shard matches: the dataset card does not count its rows."""
    output = tmp_path / "prepared"
    (output / ".stats").mkdir(parents=True)
    stale = {"rows": 1000, "skipped": {"corrupt": 3}, "png_compress_level": 0}
    (output / ".stats" / "shard-00007.json").write_text(json.dumps(stale))
    run_prepare(prepare_argv(workspace, output, "--shard_size", "10"))
    card = (output / "README.md").read_text()
    assert "24 images; skipped none" in card and "0 (3 shards)" in card, card


@pytest.mark.parametrize("case", ["unlabelled", "null-class"])
def test_labels_outside_the_classes_fail_before_the_first_step(workspace, tmp_path, monkeypatch, case):
    """-1 (an unlabelled split) would stop at the first batch holding it, mid-run; a label equal to --num_classes is
    the null class, which would silently train those images unconditionally."""
    import datasets

    rows = datasets.load_dataset(str(workspace.data), split="train", cache_dir=str(tmp_path / "cache"))
    if case == "unlabelled":
        rows = rows.map(lambda row, index: {"label": -1 if index == 20 else row["label"]}, with_indices=True)
        extra, message = [], r"values in \[-1, 2\].* train on a labelled split"
    else:  # integer labels 0-2 without class names, and --num_classes 2
        rows = rows.cast_column("label", datasets.Value("int64"))
        extra, message = ["--num_classes", "2"], r"values in \[0, 2\].*2 is the null class.*pass --num_classes 3"
    (tmp_path / "data" / "data").mkdir(parents=True)
    rows.to_parquet(str(tmp_path / "data" / "data" / "train-00000.parquet"))
    argv = latent_args(workspace, tmp_path / "run", "--max_train_steps", "2", *extra)
    argv[argv.index("--dataset_name") + 1] = str(tmp_path / "data")
    monkeypatch.setattr(train_repa.REPALoss, "__call__", lambda *args, **kwargs: pytest.fail("a training step ran"))
    with pytest.raises(ValueError, match=message):
        run_training(argv)
