"""`training/prepare_latents.py`: ADM crops, VAE posterior moments and stored encoder features as a `datasets`
dataset, in resumable shards, with unusable images skipped and counted, and the Hub upload it makes."""

import types

import datasets
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from diffusers_repa.alignment import AlignmentEncoder
from diffusers_repa.data import load_image_dataset, load_rgb_image

from .train_fixtures import make_image_folder, run_prepare, save_tiny_dinov2, save_tiny_vae, training_module

prepare_latents = training_module("prepare_latents")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_models")
    return types.SimpleNamespace(vae=save_tiny_vae(root / "vae"), dino=save_tiny_dinov2(root / "dino"))


def image_folder_with_bad_files(root):
    make_image_folder(root, num_classes=3, per_class=4)
    (root / "class_0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    from PIL import Image

    Image.new("RGB", (2, 2), "red").save(root / "class_1" / "tiny.png")  # 16x upscaling to 32 px: too small
    return root


def test_latents_features_skips_and_resume(tmp_path, models):
    source = image_folder_with_bad_files(tmp_path / "images")
    output = tmp_path / "prepared"
    argv = [
        "--train_data_dir", str(source), "--resolution", "32", "--vae", str(models.vae), "--encoder",
        str(models.dino), "--encoder_num_tokens", "16", "--output_dir", str(output), "--shard_size", "5",
        "--batch_size", "3", "--dataloader_num_workers", "0", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    run_prepare(argv)

    shards = sorted((output / "data").glob("train-*.parquet"))
    assert [path.name for path in shards] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    prepared = load_image_dataset(dataset_name=str(output), cache_dir=str(tmp_path / "cache"))
    column = prepare_latents.features_column(str(models.dino))
    assert column == "features_dino"
    assert prepared.features["label"].names == ["class_0", "class_1", "class_2"]
    assert prepared.features["moments"].shape == (8, 16, 16)
    assert prepared.features[column].shape == (16, 16)
    assert len(prepared) == 12  # 14 files, the corrupt and the tiny one left out
    assert sorted(prepared["label"]) == [0] * 4 + [1] * 4 + [2] * 4
    card = (output / "README.md").read_text()
    assert "12 images; skipped 1 too_small, 1 unreadable." in card

    # The stored moments and features are the VAE's and the encoder's outputs on the stored crop.
    vae = AutoencoderKL.from_pretrained(models.vae).eval()
    encoder = AlignmentEncoder.from_pretrained(str(models.dino), resolution=32, num_tokens=16)
    rows = prepared.with_format("torch", columns=["moments", column], output_all_columns=True)[:3]
    images = torch.stack(
        [torch.from_numpy(np.array(load_rgb_image(image))).permute(2, 0, 1) for image in rows["image"]]
    )
    assert images.shape == (3, 3, 32, 32)
    with torch.no_grad():
        posterior = vae.encode(images.float() / 127.5 - 1).latent_dist
        features = encoder(images)
    torch.testing.assert_close(rows["moments"], torch.cat([posterior.mean, posterior.std], dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[column], features.half().float(), atol=2e-3, rtol=2e-3)

    # Resume: only the missing shard is encoded again, and it comes back the same.
    before = {path.name: path.stat().st_mtime_ns for path in shards}
    reference = datasets.Dataset.from_parquet(str(shards[1]))
    shards[1].unlink()
    run_prepare(argv)
    after = {path.name: path.stat().st_mtime_ns for path in sorted((output / "data").glob("train-*.parquet"))}
    assert after.keys() == before.keys()
    assert after["train-00000.parquet"] == before["train-00000.parquet"]
    assert after["train-00002.parquet"] == before["train-00002.parquet"]
    assert datasets.Dataset.from_parquet(str(shards[1])).to_dict() == reference.to_dict()
    assert not list((output / "data").glob(".*.tmp"))
    with pytest.raises(ValueError, match="prepared with other settings"):
        run_prepare([*argv[: argv.index("--shard_size") + 1], "7", *argv[argv.index("--shard_size") + 2 :]])


@pytest.mark.parametrize("streaming", [False, True])
def test_source_shards_cover_every_row_once_across_processes(streaming):
    rows = {"image": [f"img{i}" for i in range(23)], "label": list(range(23))}
    dataset = datasets.Dataset.from_dict(rows)
    if streaming:
        dataset = dataset.to_iterable_dataset(num_shards=3)
    seen = []
    for rank in range(2):
        shards = list(
            prepare_latents.iter_source_shards(dataset, 5, lambda shard, rank=rank: shard % 2 == rank, max_samples=21)
        )
        assert [shard for shard, _ in shards] == [shard for shard in range(5) if shard % 2 == rank]
        for shard, table in shards:
            labels = table["label"]
            assert labels == list(range(shard * 5, min(shard * 5 + 5, 21)))
            seen += labels
    assert sorted(seen) == list(range(21))


def test_pixel_space_dataset_and_hub_upload(tmp_path, monkeypatch):
    calls = []

    def fake_create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return types.SimpleNamespace(repo_id=f"me/{repo_id}")

    def fake_upload_folder(**kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(prepare_latents, "create_repo", fake_create_repo)
    monkeypatch.setattr(prepare_latents, "upload_folder", fake_upload_folder)
    source = make_image_folder(tmp_path / "images", num_classes=2, per_class=3)
    output = tmp_path / "pixels"
    run_prepare([
        "--train_data_dir", str(source), "--resolution", "32", "--vae", "none", "--output_dir", str(output),
        "--dataloader_num_workers", "0", "--push_to_hub", "--hub_dataset_id", "pixels-32", "--hub_private_repo",
        "--cache_dir", str(tmp_path / "cache"),
    ])  # fmt: skip

    prepared = load_image_dataset(dataset_name=str(output), cache_dir=str(tmp_path / "cache"))
    assert prepared.column_names == ["image", "label"] and len(prepared) == 6
    assert load_rgb_image(prepared[0]["image"]).size == (32, 32)
    (_, repo, create_kwargs), (_, upload_repo, upload_kwargs) = calls
    assert repo == "pixels-32" and create_kwargs["repo_type"] == "dataset" and create_kwargs["private"] is True
    assert upload_repo == "me/pixels-32"
    assert upload_kwargs["repo_type"] == "dataset" and upload_kwargs["folder_path"] == output
    assert ".stats/*" in upload_kwargs["ignore_patterns"]


def test_a_shard_with_no_usable_image_is_written_empty(tmp_path, models):
    """Every image of a shard unusable: the shard is written with no rows (and counted), instead of failing the run at
    that shard on every rerun (`datasets` refused a table without the moments and feature columns)."""
    source = tmp_path / "images"
    make_image_folder(source, num_classes=2, per_class=2)
    (source / "class_0" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (source / "class_0" / "001.png").write_bytes(b"")
    output = tmp_path / "prepared"
    run_prepare([
        "--train_data_dir", str(source), "--resolution", "32", "--vae", str(models.vae), "--encoder",
        str(models.dino), "--encoder_num_tokens", "16", "--output_dir", str(output), "--shard_size", "2",
        "--dataloader_num_workers", "0", "--cache_dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert len(list((output / "data").glob("train-*.parquet"))) == 2
    prepared = load_image_dataset(dataset_name=str(output), cache_dir=str(tmp_path / "cache"))
    assert prepared["label"] == [1, 1] and prepared.features["moments"].shape == (8, 16, 16)
    assert "2 images; skipped 2 unreadable." in (output / "README.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_samples", "-1"], "--max_samples must be positive, got -1"),  # was a silent empty dataset
        (["--max_samples", "0"], "--max_samples must be positive, got 0"),
        (["--encoder_num_tokens", "0"], "--encoder_num_tokens must be positive, got 0"),
        (["--dataloader_num_workers", "-2"], "--dataloader_num_workers must be >= 0, got -2"),
    ],
)
def test_bad_option_values_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        prepare_latents.parse_args(["--train_data_dir", "x", "--output_dir", "y", *flags])
    assert message in capsys.readouterr().err


def test_a_resume_refuses_a_source_that_changed_since_its_first_shards(tmp_path, models):
    """Shard i holds rows i * shard_size, ...: images removed from (or added to) the source between a stopped run and
    its resume would make the remaining shards repeat or skip rows, so the resume stops instead."""
    source = make_image_folder(tmp_path / "images", num_classes=2, per_class=6)
    output = tmp_path / "prepared"
    argv = [
        "--train_data_dir", str(source), "--resolution", "32", "--vae", str(models.vae), "--output_dir", str(output),
        "--shard_size", "4", "--dataloader_num_workers", "0", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    run_prepare(argv)
    for name in ("train-00001.parquet", "train-00002.parquet"):  # as if stopped after the first shard
        (output / "data" / name).unlink()
    (output / "README.md").unlink()
    (source / "class_0" / "001.png").unlink()  # 11 images: shard 1 would now start at the old row 5
    with pytest.raises(ValueError, match=r"has changed \(num_rows: 12 -> 11\).* repeat or skip rows"):
        run_prepare(argv)
    assert sorted(path.name for path in (output / "data").glob("*.parquet")) == ["train-00000.parquet"]
