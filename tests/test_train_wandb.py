"""`train_repa.py --report_to wandb`, run offline: the metrics and the validation grid reach the run's files.

wandb (>= 0.31) writes an offline run as `wandb/offline-run-*/run-<id>.wandb`, a log of protobuf `Record`s (no
`wandb-summary.json` until a sync), plus the logged media under `files/media/`. Nothing is sent over the network.
"""

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from .train_fixtures import build_workspace, latent_args, run_training

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK_SIZE = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of chunks with 7-byte headers
HEADER_SIZE = 7  # ":W&B", a 2-byte magic and a 1-byte version at the start; crc32c, length, type before each chunk
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """The protobuf records of a `.wandb` file (checksums not verified)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb log"
    records, pending, position = [], b"", HEADER_SIZE
    while position + HEADER_SIZE <= len(data):
        left = BLOCK_SIZE - position % BLOCK_SIZE
        if left < HEADER_SIZE:  # a block's tail too short for a header is zero padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER_SIZE])
        position += HEADER_SIZE
        if kind == 0:
            break
        pending += data[position : position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records: list) -> list[dict]:
    """Each `run.log` row as {key: value}, nested keys joined with "/"."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows


def test_wandb_offline_run_logs_metrics_and_validation_grid(tmp_path, monkeypatch):
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    ws = build_workspace(tmp_path)
    output_dir = tmp_path / "run"
    try:
        run_training(
            latent_args(ws, output_dir, "--report_to", "wandb", "--max_train_steps", "3", "--validation_steps", "2")
        )
    finally:
        # `run.finish()` returns before the wandb-core service has flushed the offline log (under load the file can
        # still be empty); stopping the service waits for it, and leaves no service process behind.
        wandb.teardown()

    runs = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log_file,) = runs[0].glob("run-*.wandb")
    records = read_records(log_file)
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit", kinds

    config = {
        item.key: json.loads(item.value_json)
        for record in records
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }
    assert config["max_train_steps"] == 3 and config["report_to"] == "wandb"
    assert "hub_token" not in config

    rows = history_rows(records)
    assert [row["_step"] for row in rows] == [1, 2, 3]
    for row in rows:
        for key in ("loss", "denoising_loss", "projection_loss", "grad_norm", "lr", "images_per_second"):
            assert isinstance(row[key], float), (key, row)
        assert row["images_per_second"] > 0 and row["grad_norm"] >= 0

    images = [row for row in rows if "validation/_type" in row]
    assert [row["_step"] for row in images] == [2]
    image = images[0]
    assert image["validation/_type"] == "image-file" and image["validation/format"] == "png"
    media = runs[0] / "files" / image["validation/path"]
    assert media.is_file() and media.stat().st_size == image["validation/size"]
    assert media.parent == runs[0] / "files" / "media" / "images"
    with Image.open(media) as grid:
        assert grid.size == (image["validation/width"], image["validation/height"])
    # the grid that was logged is the one saved in the output folder
    with Image.open(output_dir / "samples" / "step-0000002.png") as saved, Image.open(media) as logged:
        assert saved.size == logged.size and saved.tobytes() == logged.convert(saved.mode).tobytes()
