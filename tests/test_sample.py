"""The sampling CLI: labelled grids and resumable, batch-independent ADM `.npz` files."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image

from diffusers_repa.sample import main, sample_labels


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
    return ["npz", "--model", str(model_dir), "--output", str(output), "--scheduler", "heun", "--steps", "2", *extra]


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


def test_labels():
    assert sample_labels(2500, 1000, "balanced", 0).tolist().count(7) == 3
    random = sample_labels(50, 10, "random", 0)
    assert random.min() >= 0 and random.max() < 10
    np.testing.assert_array_equal(random, sample_labels(50, 10, "random", 0))


def test_accelerate_launch_two_processes(repa_tiny_pipeline_dir, tmp_path):
    single = tmp_path / "single.npz"
    assert main(npz_argv(repa_tiny_pipeline_dir, single, "--num_images", "3", "--batch_size", "1")) == 0
    output = tmp_path / "two.npz"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "diffusers_repa.sample",
        *npz_argv(repa_tiny_pipeline_dir, output, "--num_images", "3", "--batch_size", "1"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(output)["arr_0"], np.load(single)["arr_0"])
