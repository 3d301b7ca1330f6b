"""`prepare_latents.py --png_compress_level`: the level changes the stored bytes, never the pixels; a bad level fails
before any work; each shard's level is recorded, and a resumed run may use another level."""

import json

import datasets
import numpy as np
import pytest
import torch

from diffusers_repa.data import load_image_dataset, load_rgb_image

from .train_fixtures import make_image_folder, run_prepare, training_module

prepare_latents = training_module("prepare_latents")


def test_png_bytes_level_changes_bytes_not_pixels():
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=generator) * 255, size=64)[0]
    image = (smooth + torch.randint(-4, 5, smooth.shape, generator=generator)).clamp(0, 255).to(torch.uint8)
    stored = {level: prepare_latents.png_bytes(image, level) for level in (0, 1, 6, 9)}

    assert prepare_latents.DEFAULT_PNG_COMPRESS_LEVEL == 0
    assert prepare_latents.png_bytes(image) == stored[0]
    assert len(stored[0]) > 3 * 64 * 64  # uncompressed: every pixel byte is stored
    assert len(stored[9]) < 0.8 * len(stored[0])
    for data in stored.values():
        decoded = torch.from_numpy(np.array(load_rgb_image(data))).permute(2, 0, 1)
        assert torch.equal(decoded, image)


@pytest.mark.parametrize("level", ["10", "-1"])
def test_bad_level_fails_before_any_work(tmp_path, capsys, level):
    output = tmp_path / "prepared"
    argv = ["--train_data_dir", str(tmp_path), "--output_dir", str(output), "--png_compress_level", level]
    with pytest.raises(SystemExit) as error:
        prepare_latents.parse_args(argv)
    assert error.value.code == 2
    assert f"--png_compress_level must be a zlib level from 0 (uncompressed, fastest to decode) to 9, got {level}" in (
        capsys.readouterr().err
    )
    assert not output.exists()


def test_levels_per_shard_recorded_and_resume_with_another_level(tmp_path):
    source = make_image_folder(tmp_path / "images", num_classes=2, per_class=3, size=32)
    output = tmp_path / "pixels"
    argv = [
        "--train_data_dir", str(source), "--resolution", "32", "--vae", "none", "--output_dir", str(output),
        "--shard_size", "3", "--dataloader_num_workers", "0", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    run_prepare([*argv, "--png_compress_level", "9"])
    shards = sorted((output / "data").glob("train-*.parquet"))
    assert len(shards) == 2
    compressed = datasets.Dataset.from_parquet(str(shards[1]))

    shards[1].unlink()  # resume with the default level: only the missing shard is written, uncompressed
    run_prepare(argv)
    uncompressed = datasets.Dataset.from_parquet(str(shards[1]))

    def stored(table):
        return [row["bytes"] for row in table.cast_column("image", datasets.Image(decode=False))["image"]]

    assert all(len(big) > len(small) for big, small in zip(stored(uncompressed), stored(compressed)))
    for big, small in zip(stored(uncompressed), stored(compressed)):
        assert np.array_equal(np.array(load_rgb_image(big)), np.array(load_rgb_image(small)))
    assert uncompressed["label"] == compressed["label"]

    levels = [json.loads((output / ".stats" / f"shard-{i:05d}.json").read_text())["png_compress_level"] for i in (0, 1)]
    assert levels == [9, 0]
    assert "PNG crops at zlib level (0 = uncompressed)\n0 (1 shard), 9 (1 shard)." in (output / "README.md").read_text()
    assert len(load_image_dataset(dataset_name=str(output), cache_dir=str(tmp_path / "cache"))) == 6
