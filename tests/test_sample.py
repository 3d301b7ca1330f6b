"""The sampling CLI: labelled grids and resumable, batch-independent ADM `.npz` files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
from safetensors.torch import load_file, save_file

from diffusers_repa.sample import main, parse_args, sample_labels

# Runs `sample` in a subprocess with every batch slowed down, so that a signal reliably lands mid-run; each process
# writes its pid to `pid-<rank>` in the working directory.
SLOW_SAMPLE = """
import os, sys, time
import diffusers_repa.sample as sample
open(f"pid-{os.environ.get('RANK', '0')}", "w").write(str(os.getpid()))
original = sample.generate
def slow(*args, **kwargs):
    time.sleep(1.0)
    return original(*args, **kwargs)
sample.generate = slow
sys.exit(sample.main(sys.argv[1:]))
"""


def test_grid(repa_tiny_pipeline_dir, tmp_path):
    output = tmp_path / "grid.png"
    argv = ["grid", "--model", str(repa_tiny_pipeline_dir), "--classes", "tench", "3", "--output", str(output)]
    assert main([*argv, "--steps", "2"]) == 0
    grid = PIL.Image.open(output)
    assert grid.size == (2 * 16, 16 + 14)


def test_grid_unknown_class_writes_nothing(repa_tiny_pipeline_dir, tmp_path, capsys):
    output = tmp_path / "grid.png"
    argv = ["grid", "--model", str(repa_tiny_pipeline_dir), "--classes", "golden retreiver", "--output", str(output)]
    assert main(argv) == 2
    assert "golden retriever" in capsys.readouterr().err
    assert not output.exists()


def npz_argv(model_dir, output, *extra):
    return [
        "npz",
        "--pretrained_model_name_or_path",
        str(model_dir),
        "--output",
        str(output),
        "--scheduler",
        "heun",
        "--num_inference_steps",
        "2",
        *extra,
    ]


def test_old_flag_names_are_aliases_of_the_diffusers_vocabulary(repa_tiny_pipeline_dir, tmp_path):
    common = ["--classes", "3", "--output", str(tmp_path / "g.png"), "--guidance_scale", "2.5"]
    new = parse_args(["grid", "--pretrained_model_name_or_path", "m", "--num_inference_steps", "7", *common])
    old = parse_args(["grid", "--model", "m", "--steps", "7", *common])
    assert vars(new) == vars(old)
    assert (new.pretrained_model_name_or_path, new.num_inference_steps, new.guidance_scale) == ("m", 7, 2.5)
    assert parse_args(["npz", "--model", "m", "--output", "s", "--scheduler", "heun"]).num_inference_steps == 50


def test_a_run_recorded_with_the_old_setting_names_resumes(repa_tiny_pipeline_dir, tmp_path):
    output = tmp_path / "s.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, output, "--num_images", "4", "--batch_size", "2")) == 0
    settings_file = tmp_path / "s.npz.parts" / "settings.json"
    settings = json.loads(settings_file.read_text())
    renamed = {"pretrained_model_name_or_path": "model", "num_inference_steps": "steps"}
    settings_file.write_text(json.dumps({renamed.get(key, key): value for key, value in settings.items()}))
    reference = np.load(output)["arr_0"]
    output.unlink()
    (tmp_path / "s.npz.parts" / "batch_000001.npz").unlink()
    assert main(npz_argv(repa_tiny_pipeline_dir, output, "--num_images", "4", "--batch_size", "2")) == 0
    np.testing.assert_array_equal(np.load(output)["arr_0"], reference)


def test_npz_layout_batching_and_resume(repa_tiny_pipeline_dir, tmp_path):
    first = tmp_path / "a.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, first, "--num_images", "5", "--batch_size", "2")) == 0
    data = np.load(first)
    assert data["arr_0"].shape == (5, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [0, 1, 2, 3, 4]
    # Per-image seeds: another batch size gives the same images.
    other = tmp_path / "b.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, other, "--num_images", "5", "--batch_size", "3")) == 0
    np.testing.assert_array_equal(np.load(other)["arr_0"], data["arr_0"])
    # Resume: only the missing batch is made again, and the result is unchanged.
    parts = tmp_path / "a.npz.parts"
    kept = {path.name: path.stat().st_mtime_ns for path in parts.glob("batch_*.npz") if path.name != "batch_000001.npz"}
    (parts / "batch_000001.npz").unlink()
    first.unlink()
    assert main(npz_argv(repa_tiny_pipeline_dir, first, "--num_images", "5", "--batch_size", "2")) == 0
    assert {name: (parts / name).stat().st_mtime_ns for name in kept} == kept
    np.testing.assert_array_equal(np.load(first)["arr_0"], data["arr_0"])
    # Resuming with other settings is refused.
    assert main(npz_argv(repa_tiny_pipeline_dir, first, "--num_images", "5", "--batch_size", "2", "--seed", "1")) == 2


def test_grid_negative_class_id_is_out_of_range(repa_tiny_pipeline_dir, tmp_path, capsys):
    argv = ["grid", "--model", str(repa_tiny_pipeline_dir), "--classes", "-5", "--output", str(tmp_path / "g.png")]
    assert main(argv) == 2
    assert "Class id -5 is outside [0, 1000]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model, message",
    [
        ("{tmp}/no/such/folder", "does not exist"),
        ("./no_such_folder", "does not exist"),
        ("{tmp}", "not a pipeline folder"),
        ("no-such-org/no-such-repo", "There is no folder 'no-such-org/no-such-repo'"),
        ("SiT-XL/2", "is a SiT preset name"),
    ],
)
def test_a_bad_model_is_one_sentence(model, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv = ["grid", "--pretrained_model_name_or_path", model.format(tmp=tmp_path), "--classes", "3"]
    assert main([*argv, "--output", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_bad_argument_writes_nothing(repa_tiny_pipeline_dir, tmp_path, capsys):
    output = tmp_path / "s.npz"
    parts = tmp_path / "s.npz.parts"
    assert main(npz_argv(tmp_path / "no-such-model", output, "--num_images", "2")) == 2
    assert not parts.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(npz_argv(repa_tiny_pipeline_dir, output, "--num_images", "2", "--guidance_interval", "0.9", "0.1"))
    assert exit_info.value.code == 2 and not parts.exists()
    # The corrected command runs: no settings were recorded by the mistyped ones.
    assert main(npz_argv(repa_tiny_pipeline_dir, output, "--num_images", "2")) == 0
    assert output.exists()


def test_output_without_the_suffix_is_reported_as_written(repa_tiny_pipeline_dir, tmp_path, capsys):
    assert main(npz_argv(repa_tiny_pipeline_dir, tmp_path / "samples", "--num_images", "2")) == 0
    assert f"Wrote {tmp_path / 'samples.npz'}:" in capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["samples.npz", "samples.npz.parts"]


def run_until_signal(argv, parts, at_least, signum, tmp_path):
    """Start `sample` in a subprocess, send `signum` once `parts` holds `at_least` batches, return the result."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAMPLE, *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(list(parts.glob("batch_*.npz"))) < at_least and process.poll() is None:
        assert time.monotonic() < deadline, "no batch was written in time"
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=240)
    return process.returncode, out, err


def check_stopped_cleanly(code, err, signal_name, output, parts, num_batches):
    assert code == 0, err[-3000:]
    assert f"Stopped by {signal_name}" in err and "Rerun the same command" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    names = sorted(path.name for path in parts.iterdir())
    assert not output.exists() and 1 <= len(names) - 1 < num_batches  # settings.json + finished batches, no tmp
    assert all(name == "settings.json" or name.startswith("batch_") and name.endswith(".npz") for name in names)
    return len(names) - 1


def assert_same_npz(path, reference):
    with np.load(path) as resumed, np.load(reference) as expected:
        assert resumed.files == expected.files
        for key in expected.files:
            np.testing.assert_array_equal(resumed[key], expected[key], strict=True)


def test_sigterm_then_sigint_stop_cleanly_and_a_rerun_resumes_to_the_same_npz(repa_tiny_pipeline_dir, tmp_path):
    extra = ("--num_images", "6", "--batch_size", "1")
    reference = tmp_path / "reference.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, reference, *extra)) == 0
    output, parts = tmp_path / "interrupted.npz", tmp_path / "interrupted.npz.parts"
    argv = npz_argv(repa_tiny_pipeline_dir, output, *extra)
    # A preemption (SIGTERM) mid-run, then Ctrl-C (SIGINT) in the re-queued run: each keeps the finished batches.
    code, _, err = run_until_signal(argv, parts, 1, signal.SIGTERM, tmp_path)
    first = check_stopped_cleanly(code, err, "SIGTERM", output, parts, 6)
    code, _, err = run_until_signal(argv, parts, first + 1, signal.SIGINT, tmp_path)
    assert check_stopped_cleanly(code, err, "SIGINT", output, parts, 6) > first
    # The rerun makes only the missing batches and assembles the uninterrupted run's file, bit for bit.
    assert main(argv) == 0
    assert_same_npz(output, reference)


def test_sigusr1_stops_and_a_second_ctrl_c_interrupts_at_once(repa_tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    import diffusers_repa.sample as sample

    extra = ("--num_images", "4", "--batch_size", "1")
    reference = tmp_path / "reference.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, reference, *extra)) == 0
    original, sent = sample.generate, []

    def signalling(*args, **kwargs):  # the signals arrive as the second batch starts
        if not sent and len(list(parts.glob("batch_*.npz"))) == 1:
            sent.extend(to_send)
            for signum in to_send:
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(sample, "generate", signalling)
    output, parts = tmp_path / "out.npz", tmp_path / "out.npz.parts"
    argv = npz_argv(repa_tiny_pipeline_dir, output, *extra)
    capsys.readouterr()
    to_send = [signal.SIGUSR1]
    assert main(argv) == 0
    check_stopped_cleanly(0, capsys.readouterr().err, "SIGUSR1", output, parts, 4)
    # Two Ctrl-C: the second interrupts at once, with exit code 130 and no traceback; nothing partial is kept.
    for path in parts.glob("batch_*.npz"):
        path.unlink()
    sent.clear()
    to_send = [signal.SIGINT, signal.SIGINT]
    handler = signal.getsignal(signal.SIGINT)
    assert main(argv) == 130
    assert "Interrupted" in capsys.readouterr().err
    assert sorted(path.name for path in parts.iterdir()) == ["batch_000000.npz", "settings.json"]
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are given back
    monkeypatch.setattr(sample, "generate", original)
    assert main(argv) == 0
    assert_same_npz(output, reference)


def test_labels():
    assert sample_labels(2500, 1000, "balanced", 0).tolist().count(7) == 3
    random = sample_labels(50, 10, "random", 0)
    assert random.min() >= 0 and random.max() < 10
    np.testing.assert_array_equal(random, sample_labels(50, 10, "random", 0))


def test_two_processes_share_the_work_and_stop_together(repa_tiny_pipeline_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): SIGTERM to one worker stops both; a single process then resumes."""
    extra = ("--num_images", "12", "--batch_size", "1")
    reference = tmp_path / "reference.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, reference, *extra)) == 0
    script = tmp_path / "slow_sample.py"
    script.write_text(SLOW_SAMPLE)
    output, parts = tmp_path / "two.npz", tmp_path / "two.npz.parts"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *npz_argv(repa_tiny_pipeline_dir, output, *extra),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while len(list(parts.glob("batch_*.npz"))) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no batch was written in time"
        time.sleep(0.05)
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGTERM)  # rank 1 only, rank 0 must follow
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    assert "/6 [" in err  # 12 batches shared by 2 processes: 6 each
    assert "Stopped by a signal to another process" in err and "Traceback" not in err
    assert not output.exists() and len(list(parts.glob("batch_*.npz"))) < 12
    assert main(npz_argv(repa_tiny_pipeline_dir, output, *extra)) == 0
    assert_same_npz(output, reference)


def test_a_model_changed_in_place_does_not_resume(repa_tiny_pipeline_dir, tmp_path, capsys):
    """The same flags on a pipeline folder retrained or re-converted in place (or a Hub repo with new commits) would
    mix two models' images in one FID file: the model's fingerprint is part of the recorded settings."""
    model = tmp_path / "model"
    shutil.copytree(repa_tiny_pipeline_dir, model)
    output = tmp_path / "s.npz"
    argv = npz_argv(model, output, "--num_images", "4", "--batch_size", "2")
    assert main(argv) == 0
    parts = tmp_path / "s.npz.parts"
    (parts / "batch_000001.npz").unlink()
    output.unlink()
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    original_weights = weights.read_bytes()
    state_dict = load_file(weights)
    state_dict["proj_out_2.bias"] = state_dict["proj_out_2.bias"] + 0.25
    save_file(state_dict, weights)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "changed: the model (its weights or configs)" in err and not output.exists()
    assert sorted(path.name for path in parts.iterdir()) == ["batch_000000.npz", "settings.json"]
    # So is another scheduler config (e.g. the path the SDE's score assumes) under the same flags.
    weights.write_bytes(original_weights)
    scheduler_config = model / "scheduler" / "scheduler_config.json"
    original = scheduler_config.read_text()
    scheduler_config.write_text(json.dumps({**json.loads(original), "path_type": "cosine"}))
    assert main(argv) == 2 and "changed: the model" in capsys.readouterr().err
    # The original model resumes; a settings.json written before the fingerprint was recorded resumes too.
    scheduler_config.write_text(original)
    settings_file = parts / "settings.json"
    settings = json.loads(settings_file.read_text())
    assert main(argv) == 0
    reference = np.load(output)["arr_0"]
    del settings["model_fingerprint"]
    settings_file.write_text(json.dumps(settings))
    (parts / "batch_000001.npz").unlink()
    output.unlink()
    assert main(argv) == 0
    np.testing.assert_array_equal(np.load(output)["arr_0"], reference)
