# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""
Small file helpers shared by the package, the trainer and the CLIs: write a file so that readers see the old or the
new content, never a partial one ([`atomic_write`], [`write_json_atomically`]), and refuse to resume work in a folder
made with other settings ([`check_recorded_settings`]).

Example:

```py
>>> import json, tempfile
>>> from pathlib import Path
>>> from diffusers_repa.utils import atomic_write, check_recorded_settings, write_json_atomically
>>> folder = Path(tempfile.mkdtemp())
>>> with atomic_write(folder / "numbers.txt", "w") as file:
...     _ = file.write("1 2 3")
>>> (folder / "numbers.txt").read_text()
'1 2 3'
>>> check_recorded_settings(folder / "settings.json", {"resolution": 32}, hint="use another folder") is None
True
>>> write_json_atomically(folder / "settings.json", {"resolution": 32})
>>> check_recorded_settings(folder / "settings.json", {"resolution": 32}, hint="use another folder")
{'resolution': 32}

```
"""

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    r"""
    Open a temporary file beside `path` for writing; when the block ends without an error, flush it to disk and
    rename it to `path` (an atomic replace on POSIX), so `path` is either its old content or the complete new one,
    even after a crash or a kill. On an error (or `KeyboardInterrupt`) the temporary file is removed and `path` is
    left as it was.

    Args:
        path (`str` or `os.PathLike`): The file to write; its folder must exist.
        mode (`str`, defaults to `"wb"`): `"wb"` or `"w"`.
        encoding (`str`, *optional*): Text encoding for `mode="w"` (defaults to UTF-8).

    Example:

    ```py
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from diffusers_repa.utils import atomic_write
    >>> path = Path(tempfile.mkdtemp()) / "batch.npz"
    >>> with atomic_write(path) as file:  # a file object: np.savez adds no suffix
    ...     np.savez(file, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    >>> np.load(path)["arr_0"].shape
    (2, 8, 8, 3)

    ```
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomically(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON with [`atomic_write`]: readers see the old file or the new one."""
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=2, default=str)


def check_recorded_settings(
    settings_file: str | os.PathLike,
    settings: Mapping[str, Any],
    hint: str,
    what: str = "work made",
    folder: str | os.PathLike | None = None,
) -> dict | None:
    r"""
    Guard for resumable work in a folder (prepared shards, sample batches): compare the settings that made the folder's
    content, recorded in `settings_file`, with this run's, and refuse to mix them.

    Args:
        settings_file (`str` or `os.PathLike`): JSON file of the recorded settings (written by the caller with
            [`write_json_atomically`] once its own set-up succeeded, so that a run that failed on a mistyped option
            does not block the corrected one).
        settings (`dict`): This run's settings (JSON-able values).
        hint (`str`): What the user should do, appended to the error (e.g. "use a new --output_dir, or the same
            settings to resume").
        what (`str`, defaults to `"work made"`): What the folder holds, for the message (`"shards prepared"`, ...).
        folder (`str` or `os.PathLike`, *optional*): The folder to name in the message (default: the file's).

    Returns:
        `dict` or `None`: the recorded settings when they equal `settings`; `None` when nothing is recorded yet.

    Raises:
        `ValueError`: the file is unreadable, or it records other settings (the message lists the differences).
    """
    settings_file = Path(settings_file)
    if not settings_file.is_file():
        return None
    try:
        recorded = json.loads(settings_file.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"{settings_file} is unreadable: delete it (and the work it describes), or {hint}.") from None
    current = json.loads(json.dumps(dict(settings), default=str))
    if recorded != current:
        names = sorted(set(recorded) | set(current))
        changes = ", ".join(
            f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}"
            for name in names
            if recorded.get(name) != current.get(name)
        )
        raise ValueError(
            f"{folder or settings_file.parent} holds {what} with other settings (recorded -> now: {changes}): {hint}."
        )
    return recorded
