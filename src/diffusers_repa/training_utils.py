# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""
The plumbing of `training/train_repa.py`, so that the script shows only the training: options and config files, the
training data (columns shared with `prepare_latents.py`, the epoch sampler, whole-batch reads, alignment targets),
the loop's helpers (the `proj_coeff` schedule, the non-finite guard, metrics kept on the device between logging
steps), validation grids from the EMA weights, and runs: checkpoints that are written atomically, verified before
use and pruned safely, the guard that keeps two runs out of one output folder, the comparison of a resumed run's
options with the checkpoint's, checkpoint hooks and uploads, and the signal handling that turns a preemption into a
checkpoint.

A checkpoint `OUTPUT_DIR/checkpoint-N/` holds what `accelerator.save_state` writes (`optimizer.bin`, `scheduler.bin`,
`random_states_<rank>.pkl`, ...) plus the models the trainer's hooks save, then

| file | content |
|---|---|
| `training_args.json` | the options in force when it was written, with the `resume_history` of applied changes |
| `checkpoint_manifest.json` | the size of every other file, and the number of processes that wrote it |
| `training_state.json` | `{"global_step": N, "batches_seen": B}`, written last: it marks a complete checkpoint |

Example:

```py
>>> import tempfile
>>> from pathlib import Path
>>> from diffusers_repa.training_utils import compare_resume_args, list_checkpoints
>>> list_checkpoints(Path(tempfile.mkdtemp()))
[]
>>> saved, current = {"learning_rate": 1e-4, "seed": 0}, {"learning_rate": 5e-5, "seed": 1}
>>> diff = compare_resume_args(saved, current, applicable=["learning_rate"])
>>> diff.applied, diff.refused
({'learning_rate': (0.0001, 5e-05)}, {'seed': (0, 1)})

```
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import ImageTransform, load_image_dataset, load_rgb_image, sample_posterior
from .models import REPAProjector, SiTTransformer2DModel
from .pipeline_repa import HUB_CHECKPOINTS_FOLDER, REPAPipeline, shift_factor_from_latent_shift
from .schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler
from .utils import write_json_atomically

if TYPE_CHECKING:
    import datasets
    from accelerate import Accelerator
    from accelerate.scheduler import AcceleratedScheduler
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel
    from PIL import Image

    from .alignment import AlignmentEncoder
    from .data import SkippedImages
    from .evaluation.monitor import CKNNAProbe, FIDMonitor

try:
    import fcntl  # POSIX only: elsewhere `OutputDirLock` locks nothing
except ImportError:
    fcntl = None

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = "training_state.json"
TRAINING_ARGS = "training_args.json"
MANIFEST = "checkpoint_manifest.json"
RESUME_HISTORY = "resume_history"
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; `file` is the damaged or missing file (or the folder)."""

    def __init__(self, checkpoint: Path, file: Path, reason: str):
        self.checkpoint, self.file, self.reason = Path(checkpoint), Path(file), reason
        super().__init__(f"{self.file} {reason}")

    def __reduce__(self):  # rebuilt from its parts when sent to the other processes
        return type(self), (self.checkpoint, self.file, self.reason)


# ----------------------------------------------------------------------------------------------------------------------
# Writing files and folders atomically
# ----------------------------------------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new, renamed or removed files) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(path: Path) -> None:
    """Flush every file and folder under `path` (and `path` itself) to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                os.fsync(file.fileno())
        fsync_dir(Path(root))


def remove_tree(path: Path) -> None:
    """Delete a folder so that a crash midway never leaves a partial one under its name: rename it away first."""
    doomed = path.with_name(f".{path.name}.deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def move_aside(path: Path, tag: str) -> Path:
    """Rename `checkpoint-N` to `checkpoint-N.<tag>` (or `.<tag>-2`, ...): kept for inspection, never resumed from."""
    target = path.with_name(f"{path.name}.{tag}")
    index = 1
    while target.exists():
        index += 1
        target = path.with_name(f"{path.name}.{tag}-{index}")
    os.replace(path, target)
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: save, list, prune
# ----------------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (`checkpoint-N` with its training state), oldest first, as `(N, path)`."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINING_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(output_dir: Path, total_limit: int, keep: Path) -> list[Path]:
    """
    Remove the oldest complete checkpoints so that at most `total_limit` (>= 1) remain, never removing `keep` (the
    checkpoint just written, even when older ones of a higher step exist). Returns the removed folders.
    """
    if total_limit < 1:
        raise ValueError(f"checkpoints_total_limit must be >= 1, got {total_limit}.")
    others = [path for _, path in list_checkpoints(output_dir) if path.resolve() != Path(keep).resolve()]
    doomed = others[: max(len(others) - (total_limit - 1), 0)]
    for path in doomed:
        remove_tree(path)
    return doomed


def write_manifest(checkpoint: Path, num_processes: int) -> None:
    """Record the size of every file under `checkpoint` (to detect truncation) and the number of processes."""
    files = {
        path.relative_to(checkpoint).as_posix(): path.stat().st_size
        for path in sorted(checkpoint.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST, TRAINING_STATE)
    }
    write_json_atomically(checkpoint / MANIFEST, {"num_processes": num_processes, "files": files})


def save_checkpoint(
    accelerator,
    output_dir: Path,
    state: dict[str, Any],
    total_limit: int | None,
    training_args: Mapping[str, Any] | None = None,
) -> Path:
    """
    `accelerator.save_state` into `.checkpoint-N.tmp`, then the run's options, the manifest and `training_state.json`
    (the completion mark), flushed to disk and renamed to `checkpoint-N`: a crash at any point leaves either the
    complete checkpoint or a hidden temporary folder that is never resumed from. Older checkpoints beyond
    `total_limit` are removed only after the new one is in place, and never the new one. Call on every process.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (its save hooks write the models).
        output_dir (`Path`): the run's output folder.
        state (`dict`): `{"global_step": int, "batches_seen": int}`.
        total_limit (`int`, *optional*): keep at most this many checkpoints (>= 1).
        training_args (`dict`, *optional*): the options in force, saved as `training_args.json` in the checkpoint.

    Returns:
        `Path`: the checkpoint folder.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{state['global_step']}"
    temporary = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if training_args is not None:
            write_json_atomically(temporary / TRAINING_ARGS, dict(training_args))
        write_manifest(temporary, accelerator.num_processes)
        write_json_atomically(temporary / TRAINING_STATE, state)
        fsync_tree(temporary)
        if final.exists():  # the same step saved again after a resume
            remove_tree(final)
        os.replace(temporary, final)
        fsync_dir(output_dir)
        if total_limit is not None:
            for path in prune_checkpoints(output_dir, total_limit, keep=final):
                logger.info(f"Removed {path} (--checkpoints_total_limit {total_limit})")
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


def remove_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Delete what a crash during a save or a deletion left behind (`.checkpoint-N.tmp`, `.checkpoint-N.deleting`)."""
    removed = sorted(Path(output_dir).glob(".checkpoint-*"))
    for path in removed:
        logger.warning(f"Removing {path}, left by an interrupted checkpoint save or deletion.")
        shutil.rmtree(path)
    return removed


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: verify and choose the one to resume from
# ----------------------------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> str | None:
    """Why the file cannot be loaded, or None. Reads it the way the resume will (weights-only for torch files)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:  # checks that the header covers the whole file
                file.keys()
        elif path.suffix in (".bin", ".pkl", ".pt", ".pth"):
            from accelerate.utils import load

            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()  # CRC of every record: catches flipped bytes as well as truncation
                if bad is not None:
                    return f"is corrupt (record {bad} fails its checksum)"
            load(str(path), map_location="cpu", **({"mmap": True} if zipfile.is_zipfile(path) else {}))
    except Exception as error:  # noqa: BLE001 - any reader error means the file is unusable
        return f"cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
    return None


def verify_checkpoint(checkpoint: Path, required: Iterable[str] = ()) -> dict[str, int]:
    """
    Check a whole checkpoint before it is used: `training_state.json` parses and matches the folder's step, every
    file the manifest lists is there with its recorded size, every `required` path (file or non-empty folder,
    relative to the checkpoint) exists, and every file loads (JSON parses, safetensors headers cover their files,
    torch files pass their checksums and load with `weights_only=True`, as accelerate loads them).

    Returns:
        `dict`: the training state. Raises [`CheckpointError`] naming the first bad file.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(checkpoint, checkpoint, "is not a folder")
    state_file = checkpoint / TRAINING_STATE
    if not state_file.is_file():
        raise CheckpointError(checkpoint, state_file, "is missing: the checkpoint is incomplete")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step, seen = state["global_step"], state["batches_seen"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(checkpoint, state_file, f"is damaged ({type(error).__name__}: {error})") from None
    match = CHECKPOINT_PATTERN.match(checkpoint.name)
    if not (isinstance(step, int) and isinstance(seen, int) and 0 <= step <= seen):
        raise CheckpointError(checkpoint, state_file, f"is inconsistent ({state})")
    if match and int(match.group(1)) != step:
        raise CheckpointError(checkpoint, state_file, f"says step {step}, but the folder is {checkpoint.name}")

    manifest_file = checkpoint / MANIFEST
    if manifest_file.is_file():
        try:
            files = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(checkpoint, manifest_file, f"is damaged ({error})") from None
        for name, size in files.items():
            path = checkpoint / name
            if not path.is_file():
                raise CheckpointError(checkpoint, path, "is missing")
            if path.stat().st_size != size:
                raise CheckpointError(checkpoint, path, f"has {path.stat().st_size} bytes instead of {size}")
    for name in required:
        path = checkpoint / name
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            raise CheckpointError(checkpoint, path, "is missing")
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            reason = _check_file(path)
            if reason is not None:
                raise CheckpointError(checkpoint, path, reason)
    return state


def find_resume_checkpoint(
    resume_from_checkpoint: str | None, output_dir: Path, required: Iterable[str] = ()
) -> tuple[Path | None, list[CheckpointError]]:
    """
    The checkpoint `--resume_from_checkpoint` names, verified with [`verify_checkpoint`].

    `"latest"`: the newest complete checkpoint that verifies; newer damaged ones are skipped and returned as errors
    (for a warning). None when there is no checkpoint. An explicit folder (absolute, or relative to the working
    directory or to `output_dir`) that does not verify raises its [`CheckpointError`].

    Returns:
        `(path or None, skipped)`.
    """
    if resume_from_checkpoint is None:
        return None, []
    output_dir = Path(output_dir)
    required = list(required)
    if resume_from_checkpoint == "latest":
        skipped = []
        for _, path in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(path, required)
            except CheckpointError as error:
                skipped.append(error)
                continue
            return path, skipped
        return None, skipped
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = output_dir / path
    verify_checkpoint(path, required)
    return path, []


def checkpoints_after(output_dir: Path, step: int) -> list[Path]:
    """The checkpoint folders (complete or not) of `output_dir` with a step above `step`."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and int(match.group(1)) > step:
            found.append(path)
    return sorted(found, key=lambda path: int(path.name.split("-")[1]))


def load_resume_args(checkpoint: Path) -> dict[str, Any] | None:
    """The options `checkpoint` was trained with: its `training_args.json`, else (older ones) the run folder's."""
    for path in (Path(checkpoint) / TRAINING_ARGS, Path(checkpoint).parent / TRAINING_ARGS):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def prepare_run_folder(
    accelerator,
    output_dir: Path,
    resume_from_checkpoint: str | None,
    overwrite: bool = False,
    required: Iterable[str] = (),
    run_outputs: Iterable[str] = (),
) -> Path | None:
    """
    Make `output_dir` ready on the main process, and return the checkpoint to resume from (or None) on every process.

    A fresh run into a folder holding another run stops ([`check_output_dir`]), unless `overwrite`, which first
    deletes that run (checkpoints, `training_args.json` and the `run_outputs` names). Leftovers of interrupted saves
    are removed. The checkpoint is verified whole ([`verify_checkpoint`], with `required` paths); with `latest` a
    damaged one is skipped, with a warning naming the bad file, for the newest complete one, and if none is complete
    the run stops. Checkpoints newer than the one resumed from (damaged, or from a run that a rewind abandons) are
    renamed `checkpoint-N.damaged` / `checkpoint-N.superseded`, so that a later `latest` never mixes them in.
    """
    output_dir = Path(output_dir)

    def prepare() -> Path | None:
        earlier = check_output_dir(output_dir, resume_from_checkpoint is not None, overwrite)
        if earlier:
            removed = remove_run_outputs(output_dir, run_outputs)
            logger.warning(f"--overwrite_output_dir: deleted {', '.join(path.name for path in removed)}.")
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
        resume_path, skipped = find_resume_checkpoint(resume_from_checkpoint, output_dir, required)
        if skipped and resume_path is None:
            raise ValueError(
                f"No complete checkpoint in {output_dir} to resume from: "
                + "; ".join(str(error) for error in skipped)
                + ". Restore them, or start over with --overwrite_output_dir (without --resume_from_checkpoint)."
            )
        for error in skipped:
            logger.warning(f"Not resuming from {error.checkpoint.name}: {error}. Using {resume_path.name} instead.")
        if resume_from_checkpoint == "latest" and resume_path is None:
            logger.info(f"No checkpoint in {output_dir}: starting a new run.")
        if resume_path is not None:
            step = json.loads((resume_path / TRAINING_STATE).read_text())["global_step"]
            damaged = {error.checkpoint for error in skipped}
            for path in checkpoints_after(output_dir, step):
                moved = move_aside(path, "damaged" if path in damaged else "superseded")
                logger.warning(f"Renamed {path.name} to {moved.name}: it is newer than the step resumed from.")
        return resume_path

    return on_main_process(accelerator, prepare)


# ----------------------------------------------------------------------------------------------------------------------
# One run per output folder
# ----------------------------------------------------------------------------------------------------------------------

RUN_LOCK = ".train.lock"


class OutputDirLock:
    r"""
    Keeps a second training process out of an output folder while a run uses it: the main process holds an
    exclusive `flock` on `OUTPUT_DIR/.train.lock` (which names its holder) until the run ends. The operating system
    drops it when the process dies, even by SIGKILL, so a crash never leaves a stale lock. Without it, a replacement
    job started while the preempted one still saves its checkpoint (Kubernetes starts one as soon as the old pod is
    terminating) would delete the checkpoint being written and resume from an older one. Where the file system has no
    locks (e.g. Lustre mounted without `flock`), a warning says so and the run goes on. Use as a context manager;
    [`acquire`] once the run's `Accelerator` exists.
    """

    def __init__(self):
        self._file = None

    def acquire(self, accelerator: "Accelerator", output_dir: Path) -> None:
        """Lock `output_dir` (created if needed) on the main process; raises on every process when it is in use."""
        on_main_process(accelerator, lambda: self._lock(Path(output_dir)))

    def _lock(self, output_dir: Path) -> None:
        if fcntl is None:  # not POSIX
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        file = open(output_dir / RUN_LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "holder unknown"
            file.close()
            raise ValueError(
                f"{output_dir} is in use by another training run ({holder}): wait for it to end (a preempted run may "
                "still be saving its checkpoint), or choose another --output_dir."
            ) from None
        except OSError as error:
            file.close()
            logger.warning(f"Cannot lock {output_dir} ({error}): nothing keeps a second run out of it meanwhile.")
            return
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        """Unlock the output folder (a no-op when nothing was locked)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "OutputDirLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def run_outputs(output_dir: Path, extra: Iterable[str] = ()) -> list[Path]:
    """
    What an earlier run left in `output_dir`: checkpoints (complete, partial, damaged or superseded),
    `training_args.json`, and the `extra` names the trainer writes (pipeline folders, model card, logs, ...).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = set(output_dir.glob("checkpoint-*")) | set(output_dir.glob(".checkpoint-*"))
    for name in (TRAINING_ARGS, *extra):
        path = output_dir / name
        inside = path.resolve().is_relative_to(output_dir.resolve()) and path.resolve() != output_dir.resolve()
        if path.exists() and inside:  # never the folder itself or something outside it (an absolute --logging_dir)
            found.add(path)
    return sorted(found)


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """
    Refuse to start a fresh run in a folder that holds another run (which it would silently overwrite, leaving that
    run's later checkpoints for a `--resume_from_checkpoint latest` to mix in). Returns the earlier run's outputs:
    with `overwrite`, the caller removes them (see [`remove_run_outputs`]); when resuming, nothing is checked.
    """
    if resume:
        return []
    found = run_outputs(output_dir)
    if found and not overwrite:
        names = ", ".join(path.name for path in found[:6]) + (", ..." if len(found) > 6 else "")
        raise ValueError(
            f"{output_dir} holds another training run ({names}). Pass --resume_from_checkpoint latest to continue "
            "it, or --overwrite_output_dir to delete it and start over (or choose another --output_dir)."
        )
    return found


def remove_run_outputs(output_dir: Path, extra: Iterable[str] = ()) -> list[Path]:
    """Delete an earlier run's outputs (see [`run_outputs`]); anything else in the folder is left alone."""
    removed = run_outputs(output_dir, extra)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


# ----------------------------------------------------------------------------------------------------------------------
# What a resume may change
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ResumeDiff:
    """Options that differ from the checkpoint's: `applied` ones take effect, `refused` ones stop the resume."""

    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    refused: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def listing(self) -> str:
        """One line per refused change: `  --name: old -> new`."""
        return "\n".join(f"  --{name}: {old!r} -> {new!r}" for name, (old, new) in self.refused.items())

    def refusal(self, checkpoint: Path) -> str:
        """The error message listing every refused change."""
        lines = self.listing()
        return (
            f"Cannot resume from {checkpoint} with these options changed (checkpoint's value -> this command's):\n"
            f"{lines}\nA resume cannot change the model, the data, the objective, the batch or the seed: pass the "
            "checkpoint's values, or start a new run in another --output_dir."
        )


def compare_resume_args(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    applicable: Collection[str],
    ignored: Collection[str] = (),
) -> ResumeDiff:
    """
    Compare a resumed run's options with those its checkpoint was trained with. Options in `applicable` may change
    (the caller applies them); `ignored` ones and `resume_history` are not compared; any other difference is refused.
    Options the checkpoint does not record (older versions) are not compared.
    """
    diff = ResumeDiff()
    for name, new in current.items():
        if name in ignored or name == RESUME_HISTORY or name not in saved:
            continue
        old = saved[name]
        if json.loads(json.dumps(old, default=str)) == json.loads(json.dumps(new, default=str)):
            continue
        (diff.applied if name in applicable else diff.refused)[name] = (old, new)
    return diff


def with_resume_history(
    saved: Mapping[str, Any], current: Mapping[str, Any], changes: Mapping[str, tuple[Any, Any]], step: int
) -> dict[str, Any]:
    """`current` plus `resume_history`: the saved history, and this resume's changes (applied from step `step + 1`)."""
    history = list(saved.get(RESUME_HISTORY, []))
    if changes:
        history.append({"step": step, "changed": {name: list(values) for name, values in changes.items()}})
    return {**current, RESUME_HISTORY: history}


def value_history(name: str, value: Any, history: Iterable[Mapping[str, Any]]) -> Any:
    """`value`, or, when a resume changed option `name`, a string like `"0.001 (steps 1-6), 0.0005 (steps 7-)"`."""
    changes = [(entry["step"], entry["changed"][name]) for entry in history if name in entry.get("changed", {})]
    if not changes:
        return value
    parts, start = [], 1
    for step, (old, _) in changes:
        parts.append(f"{old} (steps {start}-{step})")
        start = step + 1
    parts.append(f"{value} (steps {start}-)")
    return ", ".join(parts)


def apply_resume_changes(changes: Mapping[str, Any], optimizer, lr_scheduler, ema, args) -> None:
    """
    Make the options a resume changed take effect on the restored optimizer, learning-rate schedule and EMA, which
    would otherwise keep the checkpoint's values: `learning_rate` (and anything that changes the schedule: the new
    schedule is evaluated at the restored step), `adam_beta1`/`adam_beta2`/`adam_weight_decay`/`adam_epsilon`, and
    `ema_decay` (a constant decay). `args` holds the new values under those names (diffusers' example flags);
    `lr_scheduler` is accelerate's wrapper of a `LambdaLR` (diffusers' `get_scheduler`), `ema` an `EMAModel` or None.
    """
    updates = {}
    if {"adam_beta1", "adam_beta2"} & changes.keys():
        updates["betas"] = (args.adam_beta1, args.adam_beta2)
    if "adam_weight_decay" in changes:
        updates["weight_decay"] = args.adam_weight_decay
    if "adam_epsilon" in changes:
        updates["eps"] = args.adam_epsilon
    for group in optimizer.param_groups:
        group.update(updates)
    if {"learning_rate", "lr_scheduler", "lr_warmup_steps", "max_train_steps"} & changes.keys():
        schedule = lr_scheduler.scheduler  # accelerate's wrapper holds the torch scheduler
        schedule.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
        factors = [factor(schedule.last_epoch) for factor in schedule.lr_lambdas]  # the (new) schedule at this step
        rates = [base * factor for base, factor in zip(schedule.base_lrs, factors, strict=True)]
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["initial_lr"], group["lr"] = args.learning_rate, rate
        schedule._last_lr = rates
    if ema is not None and "ema_decay" in changes:
        ema.decay = ema.min_decay = args.ema_decay


# ----------------------------------------------------------------------------------------------------------------------
# Processes: run on the main process and share the outcome; stop on a signal at the same step everywhere
# ----------------------------------------------------------------------------------------------------------------------


def on_main_process(accelerator, function: Callable[[], Any]) -> Any:
    """
    Run `function` on the main process only and return its result on every process; an exception it raises is raised
    on every process (instead of leaving the others waiting at the next collective).
    """
    from accelerate.utils import broadcast_object_list

    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [function(), None]
        except Exception as error:  # noqa: BLE001 - re-raised below, on every process
            outcome = [None, error]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def ignore_stop_signals(worker_id: int = 0) -> None:
    """`DataLoader` `worker_init_fn`: workers leave SIGTERM/SIGINT/SIGUSR1 to the main process, which stops them."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class StopSignal:
    """
    Turns SIGTERM (what SLURM and Kubernetes send before preemption), SIGINT (Ctrl-C) and SIGUSR1 into a request to
    stop at the next safe point, instead of dying where the signal lands. A second SIGINT interrupts at once
    (`KeyboardInterrupt`). Use as a context manager around the work; the previous handlers come back at the end.

    Example:

    ```py
    >>> import os, signal
    >>> from diffusers_repa.training_utils import StopSignal
    >>> with StopSignal() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.received
    'SIGTERM'

    ```
    """

    def __init__(self, signals: Iterable[str] = STOP_SIGNALS):
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(signum).name
            note = f"\nReceived {self.received}: stopping after the current step (Ctrl-C again stops at once).\n"
            os.write(2, note.encode())

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set from the main thread
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def should_stop(self, accelerator=None) -> bool:
        """
        Whether to stop now. With several processes, every process calls this at the same point (once per optimizer
        step) and they agree: one all-reduce of a flag, so that all stop at the same step if any got the signal.
        """
        flag = self.received is not None
        if accelerator is None or accelerator.num_processes == 1:
            return flag
        flag = torch.tensor([float(flag)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="max").item())


# ----------------------------------------------------------------------------------------------------------------------
# Options: config files and value checks
# ----------------------------------------------------------------------------------------------------------------------


def json_object(text: str) -> dict[str, Any]:
    """argparse `type` of a JSON-object option (`--model_kwargs '{"num_layers": 6}'`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_layers\": 6}}', got {text!r}")
    return value


def read_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """
    Option values from a YAML/JSON file whose keys are option names (not their aliases), converted with each option's
    `type` (YAML reads `1e-4` as a string). An unknown key stops with `parser.error`.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            values = yaml.safe_load(file) or {}
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"--config {path} cannot be read: {error}")
    if not isinstance(values, dict):
        parser.error(f"--config {path} must map option names to values, got a {type(values).__name__}.")
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"{path}: unknown option(s) {', '.join(unknown)}.")
    for name, value in values.items():
        action = actions[name]
        convert = action.type
        try:
            if convert is not None and convert is not json_object and isinstance(value, str):
                value = values[name] = convert(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            parser.error(f"{path}: {name}: {value!r} is not valid ({error}).")
        if convert is int and isinstance(value, float):  # YAML 2.5 for an integer option: not silently 2
            parser.error(f"{path}: {name} must be an integer, got {value!r}.")
        # set_defaults bypasses argparse's own checks of `choices`
        if action.choices is not None and value is not None and value not in action.choices:
            quote = ""
            if isinstance(value, bool):  # YAML 1.1 (PyYAML): `mixed_precision: no` arrives as False
                quote = " (YAML reads an unquoted no, yes, on or off as a boolean: quote the value)"
            parser.error(f"{path}: {name} must be one of {', '.join(map(str, action.choices))}, got {value!r}{quote}.")
    return values


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return 0 <= value < math.inf


def _unit_interval(value: float) -> bool:
    return 0 <= value < 1


_POSITIVE_OPTIONS = (
    "batch_size", "gradient_accumulation_steps", "max_train_steps", "num_train_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "validation_steps", "validation_num_inference_steps", "resolution", "projector_dim",
    "alignment_depth", "num_classes", "lora_rank", "logging_steps", "fid_num_inference_steps", "fid_batch_size",
    "fid_reference_num_images", "gradient_checkpointing_blocks",
)  # fmt: skip
# The valid values of `train_repa.py`'s numeric options (None, where allowed, means "not set"); NaN fails every check.
TRAINING_OPTION_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (_positive, "a positive integer") for name in _POSITIVE_OPTIONS},
    **{
        name: (_non_negative, ">= 0")
        for name in ("lr_warmup_steps", "alignment_stop_step", "dataloader_num_workers", "fid_steps", "cknna_steps")
    },
    **{name: (_unit_interval, "in [0, 1)") for name in ("cfg_prob", "adam_beta1", "adam_beta2")},
    "learning_rate": (lambda value: 0 < value < math.inf, "a positive number"),
    "lora_alpha": (lambda value: 0 < value < math.inf, "a positive number"),
    "ema_decay": (_unit_interval, "in [0, 1) (e.g. 0.9999)"),
    "proj_coeff": (_non_negative, ">= 0"),
    "adam_weight_decay": (_non_negative, ">= 0"),
    "adam_epsilon": (_non_negative, ">= 0"),
    "max_grad_norm": (lambda value: not math.isnan(value), "a number (<= 0 disables clipping)"),
    "latent_scale": (lambda value: math.isfinite(value) and value != 0, "a finite non-zero number"),
    "latent_shift": (math.isfinite, "a finite number"),
    "validation_guidance_scale": (math.isfinite, "a finite number"),
    "fid_guidance_scale": (math.isfinite, "a finite number"),
    "fid_num_samples": (lambda value: value >= 4, "at least 4 (precision/recall use k = 3 neighbours)"),
    "cknna_num_images": (lambda value: value > 10, "more than 10 (CKNNA uses 10 neighbours)"),
}


def check_option_ranges(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    ranges: Mapping[str, tuple[Callable[[Any], bool], str]] = TRAINING_OPTION_RANGES,
) -> None:
    """Stop with one `parser.error` naming the first option whose value is out of its range."""
    for option, (is_valid, requirement) in ranges.items():
        value = getattr(args, option, None)
        if value is not None and not is_valid(value):
            parser.error(f"--{option} must be {requirement}, got {value}.")


def encoder_names(encoder: str) -> list[str]:
    """The `--encoder` value as a list: comma-separated names, `none` (or nothing) for no alignment encoder."""
    return [name.strip() for name in encoder.split(",") if name.strip().lower() not in ("", "none")]


def public_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options without the Hub token, for `training_args.json` and the trackers."""
    return {key: value for key, value in vars(args).items() if key != "hub_token"}


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options in the flat scalar form trackers (tensorboard hparams) accept."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in public_args(args).items()
    }


def configure_logging(accelerator: "Accelerator") -> None:
    """diffusers' example logging: INFO with timestamps; the libraries' warnings on the local main process only."""
    import datasets
    import diffusers
    import transformers

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    main = accelerator.is_local_main_process
    datasets.utils.logging.set_verbosity_warning() if main else datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_warning() if main else transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_info() if main else diffusers.utils.logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------------------------------
# Training data
# ----------------------------------------------------------------------------------------------------------------------

# Columns of a dataset prepared by `training/prepare_latents.py` (besides `image` and `label`).
MOMENTS_COLUMN = "moments"
FEATURES_PREFIX = "features_"
# Its bookkeeping folder (settings, per-shard stats); its dataset card (README.md) is written only once every shard is.
PREPARED_STATS_FOLDER = ".stats"
PREPARED_SETTINGS = "settings.json"


def features_column(encoder_name: str) -> str:
    """
    The dataset column holding stored features of an encoder: `features_` + its name made safe (for a local folder,
    the folder's name), e.g. `facebook/dinov2-base` -> `features_facebook_dinov2_base`.
    """
    name = os.path.basename(os.path.normpath(encoder_name)) if os.path.isdir(encoder_name) else encoder_name
    return FEATURES_PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


@dataclass(frozen=True)
class DatasetInfo:
    r"""
    What the training data is, as [`load_training_data`] found it.

    Args:
        latent (`bool`): VAE posterior moments are stored (latent-space training); otherwise the model sees pixels.
        prepared (`bool`): Made by `prepare_latents.py` (its images were all checked then).
        in_channels (`int`), sample_size (`int`): The model's input shape `(in_channels, sample_size, sample_size)`.
        num_classes (`int`): Class count (`--num_classes`, or the label column's `ClassLabel`).
        id2label (`dict[str, str]`, *optional*): Class names, for the pipeline's `id2label`.
    """

    latent: bool
    prepared: bool
    in_channels: int
    sample_size: int
    num_classes: int
    id2label: dict[str, str] | None


def load_training_data(
    dataset_name: str | None,
    train_data_dir: str | None,
    image_column: str = "image",
    label_column: str = "label",
    split: str = "train",
    cache_dir: str | None = None,
    resolution: int = 256,
    num_classes: int | None = None,
) -> tuple["datasets.Dataset", DatasetInfo]:
    """
    Load the training dataset and describe it ([`DatasetInfo`]). Raises one `ValueError` naming the option to
    change when the data does not fit the options (resolution, class count).
    """
    import datasets

    if dataset_name is not None and os.path.isdir(dataset_name):
        folder = Path(dataset_name)
        if (folder / PREPARED_STATS_FOLDER / PREPARED_SETTINGS).is_file() and not (folder / "README.md").is_file():
            raise ValueError(
                f"{dataset_name} is a dataset that prepare_latents.py has not finished (it writes the dataset card, "
                "README.md, once every shard is written): training on it would use only the shards done so far. Run "
                "the same prepare_latents.py command again to finish it."
            )
    dataset = load_image_dataset(
        dataset_name=dataset_name,
        train_data_dir=train_data_dir,
        image_column=image_column,
        label_column=label_column,
        split=split,
        cache_dir=cache_dir,
    )
    latent = MOMENTS_COLUMN in dataset.column_names
    prepared = latent or any(name.startswith(FEATURES_PREFIX) for name in dataset.column_names)
    if prepared:
        width, height = load_rgb_image(dataset[0][image_column]).size
        if (width, height) != (resolution, resolution):
            raise ValueError(
                f"The dataset was prepared at {width}x{height} but --resolution is {resolution}: pass "
                f"--resolution {width}, or prepare the data again at {resolution}."
            )
    if latent:
        channels, sample_size, _ = dataset.features[MOMENTS_COLUMN].shape
        in_channels = channels // 2
    else:
        in_channels, sample_size = 3, resolution
    label_feature = dataset.features[label_column]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    num_classes = num_classes or (len(names) if names else None)
    if num_classes is None:
        raise ValueError(f"The label column {label_column!r} is not a ClassLabel: pass --num_classes.")
    if names and num_classes < len(names):
        raise ValueError(f"--num_classes {num_classes} is below the dataset's {len(names)} classes.")
    check_label_range(dataset, label_column, num_classes)
    id2label = {str(index): name for index, name in enumerate(names)} if names else None
    return dataset, DatasetInfo(latent, prepared, in_channels, sample_size, num_classes, id2label)


def check_label_range(dataset: "datasets.Dataset", label_column: str, num_classes: int) -> None:
    """
    Refuse labels outside `[0, num_classes)` before training (one read of the label column): a negative one (`-1`
    marks unlabelled examples, e.g. ImageNet's test split) would stop training at the first batch holding it, and
    `num_classes` itself is the null class of guidance, which would silently train those images unconditionally.
    """
    import pyarrow
    import pyarrow.compute

    labels = dataset.with_format("arrow")[label_column]
    if not pyarrow.types.is_integer(labels.type):
        return
    bounds = pyarrow.compute.min_max(labels)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or 0 <= low <= high < num_classes:
        return
    fix = "train on a labelled split (-1 marks unlabelled examples)" if low < 0 else f"pass --num_classes {high + 1}"
    raise ValueError(
        f"The label column {label_column!r} holds values in [{low}, {high}], but the model has {num_classes} classes "
        f"(ids 0 to {num_classes - 1}; {num_classes} is the null class of guidance): {fix}."
    )


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation per epoch, seeded by `(seed, epoch)`: the same order on every process and after a resume,
    without touching the global RNG (which the training step uses)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()


class TrainingBatches(torch.utils.data.Dataset):
    """
    Batches of a `datasets` dataset for the training loop, fetched with one Arrow read per batch (`__getitems__`).

    Images go through [`~diffusers_repa.data.ImageTransform`] (decode, RGB, ADM crop; unusable ones are dropped with a
    `skipped` record); array columns (VAE moments, stored encoder features) come as tensors, filtered the same way.
    """

    def __init__(self, dataset: "datasets.Dataset", transform: ImageTransform, array_columns: Sequence[str]):
        self.dataset = dataset.with_format("torch", columns=list(array_columns), output_all_columns=True)
        self.transform = transform
        self.array_columns = list(array_columns)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        rows = self.dataset[indices]
        columns = (self.transform.image_column, self.transform.label_column)
        examples = self.transform({column: rows[column] for column in columns})
        kept = [index for index, pixels in enumerate(examples["pixel_values"]) if pixels is not None]
        batch = self.transform.collate(
            [{name: values[index] for name, values in examples.items()} for index in range(len(indices))]
        )
        for column in self.array_columns:
            batch[column] = rows[column][kept]
        return batch


def collate_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`DataLoader` `collate_fn` for [`TrainingBatches`], which returns whole batches already."""
    return batch


def training_dataloader(
    dataset: "datasets.Dataset",
    resolution: int,
    image_column: str,
    label_column: str,
    array_columns: Sequence[str],
    batch_size: int,
    seed: int,
    num_workers: int,
    num_processes: int = 1,
) -> torch.utils.data.DataLoader:
    """
    The training `DataLoader`: [`TrainingBatches`] of `batch_size` (per process and micro-step) in the order of an
    [`EpochShuffleSampler`], full batches only. Its workers ignore stop signals (the main process handles them) and
    are seeded apart from the global RNG. A dataset smaller than one batch per process stops here.
    """
    if len(dataset) < batch_size * num_processes:
        raise ValueError(
            f"The dataset has {len(dataset)} images, fewer than one batch of {batch_size} for each of the "
            f"{num_processes} processes: lower --batch_size."
        )
    return torch.utils.data.DataLoader(
        TrainingBatches(dataset, ImageTransform(resolution, image_column, label_column), array_columns),
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), seed),
        drop_last=True,
        collate_fn=collate_batch,
        num_workers=num_workers,
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(seed),
    )


def clean_sample(batch: Mapping[str, Any], latent: bool, latent_scale: float, latent_shift: float) -> torch.Tensor:
    """
    The model's clean input x_0 for a batch: a fresh draw from the stored VAE posterior, `z * latent_scale +
    latent_shift` (the official code re-samples it at every step), or the uint8 pixels mapped to `[-1, 1]`.
    """
    if latent:
        return sample_posterior(batch[MOMENTS_COLUMN], latent_scale, latent_shift)
    return batch["pixel_values"].float() / 127.5 - 1.0


class AlignmentTargets:
    r"""
    The targets of REPA's alignment loss for a batch: each encoder's patch features of the clean images, read from the
    dataset's stored column when `prepare_latents.py --encoder` stored them, else computed by the encoder. Call it
    under `torch.inference_mode()` and the run's autocast (the trainer does).

    Args:
        encoders (`list[AlignmentEncoder]`): One per projector head.
        stored_columns (`list[str | None]`): The dataset column of each encoder's stored features, or None.
    """

    def __init__(self, encoders: Sequence["AlignmentEncoder"], stored_columns: Sequence[str | None]):
        self.encoders = list(encoders)
        self.stored_columns = list(stored_columns)

    @classmethod
    def for_dataset(cls, encoders: Sequence["AlignmentEncoder"], dataset: "datasets.Dataset") -> "AlignmentTargets":
        """Use the dataset's stored features where they fit the encoder; stored features of another shape stop."""
        columns = []
        for encoder in encoders:
            column = features_column(encoder.name)
            if column in dataset.column_names:
                shape = tuple(dataset.features[column].shape)
                if shape != (encoder.num_tokens, encoder.embed_dim):
                    raise ValueError(
                        f"The dataset's stored features {column!r} are {shape}, but {encoder.name} gives "
                        f"{(encoder.num_tokens, encoder.embed_dim)} here: prepare the data with the same encoder and "
                        "--encoder_num_tokens as the model's token count."
                    )
                logger.info(f"Using the features stored in column {column!r} for {encoder.name}.")
            columns.append(column if column in dataset.column_names else None)
        return cls(encoders, columns)

    @property
    def columns(self) -> list[str]:
        """The stored-feature columns the loader must read."""
        return [column for column in self.stored_columns if column]

    def to(self, device: torch.device) -> "AlignmentTargets":
        self.encoders = [encoder.to(device) for encoder in self.encoders]
        return self

    def __call__(self, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        """`(batch, num_tokens, embed_dim)` targets, one per encoder."""
        return [
            batch[column] if column else encoder(batch["pixel_values"])
            for encoder, column in zip(self.encoders, self.stored_columns, strict=True)
        ]


# ----------------------------------------------------------------------------------------------------------------------
# The loop: the alignment coefficient, non-finite values, metrics between logging steps
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjCoeffSchedule:
    r"""
    The alignment coefficient of each optimizer step: `proj_coeff` constant, or decayed to 0 (`"linear"`, `"cosine"`)
    at `stop_step`; 0 from `stop_step` on (HASTE-style early stop of the alignment).

    Example:

    ```py
    >>> from diffusers_repa.training_utils import ProjCoeffSchedule
    >>> schedule = ProjCoeffSchedule(0.5, "linear", stop_step=100)
    >>> schedule(0), schedule(50), schedule(100)
    (0.5, 0.25, 0.0)

    ```
    """

    proj_coeff: float
    schedule: str = "constant"
    stop_step: int | None = None

    def __call__(self, step: int) -> float:
        """The coefficient of optimizer step `step` (0-based)."""
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        if self.stop_step is None or self.schedule == "constant":
            return self.proj_coeff
        progress = step / self.stop_step
        if self.schedule == "linear":
            return self.proj_coeff * (1.0 - progress)
        if self.schedule == "cosine":
            return self.proj_coeff * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"Unknown proj_coeff schedule {self.schedule!r}: use constant, linear or cosine.")


class NonFiniteGuard:
    r"""
    Stops training on a non-finite loss or gradient norm before it reaches the weights and the EMA.

    *Immediate* (`deferred=False`, the default): every micro-step's loss and every step's gradient norm are checked on
    the host, and the error is raised before `backward` / `optimizer.step`. On the CPU this costs nothing; on a GPU
    each check waits for the step to finish (a host sync).

    *Deferred* (`deferred=True`, for a fused optimizer: `torch.optim.AdamW(fused=True)`): the checks stay on the
    device. A non-finite step is handed to the optimizer as `found_inf`, so the fused kernel skips that update
    (weights, moments and step count unchanged, as for fp16's gradient scaler), and the step is recorded; the EMA then
    averages in unchanged, finite weights. [`raise_if_any`] reads the record (one sync) and raises: the trainer calls
    it at logging steps and before anything is saved or sampled, so no NaN is ever written. With fp16's gradient
    scaler, which skips such updates itself, gradient norms are not checked (overflow is the scaler's business).

    Args:
        optimizer (`torch.optim.Optimizer`): The optimizer (accelerate's wrapper is looked through).
        deferred (`bool`, defaults to `False`): See above; needs an optimizer that honours `found_inf`.
        check_gradients (`bool`, defaults to `True`): Check gradient norms (False under fp16's scaler).
        last_checkpoint (`Path`, *optional*): The checkpoint to resume from, named in the error (the trainer updates
            it after each save).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        deferred: bool = False,
        check_gradients: bool = True,
        last_checkpoint: Path | None = None,
    ):
        self.optimizer = getattr(optimizer, "optimizer", optimizer)
        self.deferred = deferred
        self.check_gradients = check_gradients
        self.last_checkpoint = last_checkpoint  # named in the error: where to resume from
        # Deferred: the first non-finite step as [step, kind (0 loss, 1 gradient norm), value, denoising, projection].
        self._first: torch.Tensor | None = None
        self._step_bad: torch.Tensor | None = None

    def error(self, what: str, step: int, note: str = "training stopped before applying it") -> FloatingPointError:
        """The error that stops training, naming the step and the checkpoint to resume from."""
        return FloatingPointError(
            f"The {what} at step {step}; {note}. Last checkpoint: {self.last_checkpoint or 'none'}. Resume from it "
            "(--resume_from_checkpoint latest) with a lower --learning_rate, --mixed_precision bf16, or a smaller "
            "--max_grad_norm."
        )

    def _record(self, bad: torch.Tensor, values: torch.Tensor) -> None:
        if self._first is None:
            self._first = torch.full((5,), -1.0, device=values.device)
        self._first = torch.where(bad & (self._first[0] < 0), values.float(), self._first)
        self._step_bad = bad if self._step_bad is None else self._step_bad | bad

    def check_loss(self, values: torch.Tensor, step: int) -> None:
        """`values`: `(3,)` loss, denoising and projection loss of a micro-step of optimizer step `step` (1-based)."""
        if not self.deferred:
            if not torch.isfinite(values[0]):
                loss, denoising, projection = values.tolist()
                raise self.error(f"loss is {loss} (denoising {denoising}, projection {projection})", step)
            return
        record = torch.cat([values.new_tensor([step, 0]), values.detach()])
        self._record(~torch.isfinite(values[0]), record)

    def check_grad_norm(self, grad_norm: torch.Tensor | None, step: int) -> None:
        """After clipping, before `optimizer.step()`: the step's gradient norm (None when unknown)."""
        if self.check_gradients and grad_norm is not None:
            if not self.deferred and not torch.isfinite(grad_norm):
                raise self.error(f"gradient norm is {grad_norm.item()}", step)
            if self.deferred:
                grad_norm = grad_norm.detach().float().reshape(1)
                nan = torch.full((2,), math.nan, device=grad_norm.device)
                self._record(
                    ~torch.isfinite(grad_norm[0]), torch.cat([grad_norm.new_tensor([step, 1]), grad_norm, nan])
                )
        if self.deferred and self.check_gradients and self._step_bad is not None:
            self.optimizer.found_inf = self._step_bad.float()  # the fused kernel skips the update when it is 1
        self._step_bad = None

    def raise_if_any(self, step: int) -> None:
        """Deferred mode: raise for the first non-finite step so far (one host sync); `step` is the current step."""
        if self._first is None:
            return
        first_step, kind, value, denoising, projection = self._first.tolist()
        if first_step < 0:
            return
        what = f"loss is {value} (denoising {denoising}, projection {projection})" if kind == 0 else None
        what = what or f"gradient norm is {value}"
        note = (
            "its update (and any later non-finite one) was skipped, so no NaN reached the weights or the EMA, and "
            f"training stopped at step {step}"
        )
        raise self.error(what, int(first_step), note)


class StepMetrics:
    r"""
    The loss terms and gradient norms of the steps since the last logging step, summed on the device: reading them
    ([`pop`]) is the loop's only host sync, done at logging steps. Time spent in [`paused`] blocks (checkpoints,
    validation, evaluation) is left out of the throughput.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, device=device)  # loss, denoising, projection (means over micro-steps), grad norm
        self.steps = 0
        self.start, self.excluded = time.perf_counter(), 0.0

    def add_micro_step(self, values: torch.Tensor, accumulation_steps: int) -> None:
        """`values`: `(3,)` loss, denoising and projection loss of one micro-step (already averaged over processes)."""
        self.sums[:3] += values.detach().float() / accumulation_steps

    def add_step(self, grad_norm: torch.Tensor | None) -> None:
        if grad_norm is not None:
            self.sums[3] += grad_norm.detach().float()
        self.steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work that is not training: its time does not count in `images_per_second`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def pop(self, global_batch_size: int) -> dict[str, float]:
        """Means over the steps since the last call, and the images per second; then start a new window."""
        loss, denoising, projection, grad_norm = (self.sums / max(self.steps, 1)).tolist()
        now = time.perf_counter()
        elapsed = max(now - self.start - self.excluded, 1e-9)
        logs = {
            "loss": loss,
            "denoising_loss": denoising,
            "projection_loss": projection,
            "grad_norm": grad_norm,
            "images_per_second": global_batch_size * self.steps / elapsed,
        }
        self.sums.zero_()
        self.steps = 0
        self.start, self.excluded = now, 0.0
        return logs


SHARDED_DISTRIBUTED_TYPES = ("DEEPSPEED", "FSDP", "MEGATRON_LM")


def check_data_parallel(accelerator: "Accelerator") -> None:
    """
    Refuse an accelerate configuration that shards the weights (DeepSpeed, FSDP, Megatron-LM), before any work: the
    trainer's EMA ([`update_ema`]), its checkpoints in diffusers' format and the fused non-finite guard all assume
    whole weights on every process, so such a run would average and save shards without an error.
    """
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    if kind in SHARDED_DISTRIBUTED_TYPES:
        raise ValueError(
            f"train_repa.py trains on one device or with data-parallel processes (DDP), but accelerate is configured "
            f"for {kind}, which shards the weights: its EMA and checkpoints need whole weights on every process. Run "
            "`accelerate config` without DeepSpeed/FSDP (or `accelerate launch --multi_gpu`); to save memory use "
            "--gradient_checkpointing_blocks N or --gradient_accumulation_steps."
        )


def per_process_batch_size(global_batch_size: int, num_processes: int, gradient_accumulation_steps: int) -> int:
    """Images per process and micro-step; the global batch must split evenly."""
    micro_batches = num_processes * gradient_accumulation_steps
    if global_batch_size % micro_batches:
        raise ValueError(
            f"--batch_size {global_batch_size} (global) must be divisible by processes x gradient_accumulation_steps "
            f"= {micro_batches}."
        )
    return global_batch_size // micro_batches


def batch_is_empty(
    accelerator: "Accelerator", batch: Mapping[str, Any], skipped: "SkippedImages", can_drop_images: bool
) -> bool:
    """
    Count the batch's skipped images; with raw image folders (`can_drop_images`), whether any process got a batch with
    no usable image (all processes then skip it alike: one small all-gather per micro-step, only for such data).
    """
    skipped.update(batch["skipped"])
    if not can_drop_images:
        return False
    sizes = accelerator.gather(torch.tensor([len(batch["class_labels"])], device=accelerator.device))
    if sizes.min() == 0:
        logger.warning(f"Skipping a batch whose images could not be read ({skipped}).")
        return True
    return False


def compile_blocks(model: torch.nn.Module) -> None:
    """
    `--torch_compile`: compile each repeated block (diffusers' `compile_repeated_blocks(fullgraph=True)`, the fast
    path of `benchmarks/`); the embeddings, the final layer and the loss stay eager. Refused in one sentence where
    that cannot work, instead of failing inside the first step.
    """
    if not getattr(model, "_repeated_blocks", None) or not hasattr(model, "compile_repeated_blocks"):
        raise ValueError(
            f"--torch_compile compiles the repeated blocks of the model (diffusers' `compile_repeated_blocks`), but "
            f"{type(model).__name__} declares none (`_repeated_blocks`): run without --torch_compile."
        )
    if not torch._dynamo.is_dynamo_supported():
        raise ValueError("--torch_compile: torch.compile does not support this Python or platform; run without it.")
    model.compile_repeated_blocks(fullgraph=True)


@dataclass(frozen=True)
class FastSettings:
    """
    The speed options of a `train_repa.py` run after [`resolve_fast_settings`]: the values the run uses (and records
    in `training_args.json`), and one sentence per decision `--fast` took that the user may not expect (empty
    without `--fast`). Sampling while training (validation grids, FID samples) is in fast mode exactly when `--fast`
    is given, on every device.
    """

    mixed_precision: str | None
    allow_tf32: bool
    torch_compile: bool
    notes: tuple[str, ...] = ()

    def as_args(self) -> dict[str, Any]:
        """The resolved values under the trainer's option names."""
        return dict(mixed_precision=self.mixed_precision, allow_tf32=self.allow_tf32, torch_compile=self.torch_compile)


def resolve_fast_settings(
    args: argparse.Namespace, cuda: bool, launcher_precision: str | None = None, compile_supported: bool = True
) -> FastSettings:
    r"""
    What `train_repa.py --fast` turns on, given the parsed options (`fast`, `mixed_precision`, `allow_tf32`,
    `torch_compile`), whether the run's device is CUDA, the precision `accelerate launch` chose
    (`ACCELERATE_MIXED_PRECISION`, None when not launched by it) and whether `torch.compile` works here.

    On CUDA, `--fast` is the measured fast path of `benchmarks/RESULTS.md`: bf16 mixed precision, TF32 matmuls and
    `--torch_compile` (each SiT block). An explicit choice wins: `--mixed_precision` (command line or `--config`), or a
    launcher precision other than `"no"` (`"no"` is `accelerate launch`'s default, not a choice; pass
    `--mixed_precision no` to keep float32 with `--fast`), and `--no_torch_compile` (`torch_compile=False`; None is
    "not given"). Compilation is skipped where `torch.compile` does not work.
    Elsewhere (CPU), bf16 runs 2-3.5x slower without bf16 matrix units and compiling costs more than short runs
    gain, so `--fast` turns on nothing but fast sampling; explicit `--mixed_precision`, `--allow_tf32` and
    `--torch_compile` are kept. Pure: nothing is changed or logged.

    Example:

    ```py
    >>> import argparse
    >>> from diffusers_repa.training_utils import resolve_fast_settings
    >>> args = argparse.Namespace(fast=True, mixed_precision=None, allow_tf32=False, torch_compile=None)
    >>> resolve_fast_settings(args, cuda=True).as_args()
    {'mixed_precision': 'bf16', 'allow_tf32': True, 'torch_compile': True}
    >>> resolve_fast_settings(args, cuda=False).as_args()
    {'mixed_precision': None, 'allow_tf32': False, 'torch_compile': False}

    ```
    """
    given = FastSettings(args.mixed_precision, args.allow_tf32, bool(args.torch_compile))
    if not getattr(args, "fast", False):
        return given
    if not cuda:
        skipped = [
            "bf16 mixed precision (2-3.5x slower on CPUs without bf16 matrix units)" * (args.mixed_precision is None),
            "TF32 (a CUDA feature)" * (not args.allow_tf32),
            "--torch_compile (compiling costs more than a short CPU run gains)" * (args.torch_compile is None),
        ]
        note = "--fast on a device other than CUDA: the validation and FID samples run in fast mode"
        if any(skipped):
            note += f". Not turned on (pass them explicitly to have them anyway): {', '.join(filter(None, skipped))}"
        return dataclasses.replace(given, notes=(note + ".",))
    notes = []
    mixed_precision = args.mixed_precision
    if mixed_precision is not None:
        notes.append(f"--fast keeps --mixed_precision {mixed_precision} (given explicitly) instead of bf16.")
    elif launcher_precision not in (None, "", "no"):
        notes.append(f"--fast keeps the precision accelerate launch chose ({launcher_precision}) instead of bf16.")
    else:
        mixed_precision = "bf16"
    torch_compile = compile_supported if args.torch_compile is None else args.torch_compile
    if args.torch_compile is False:
        notes.append("--fast keeps the model eager (--no_torch_compile given).")
    elif not torch_compile:
        notes.append("--fast does not compile: torch.compile does not support this Python or platform.")
    return FastSettings(mixed_precision, True, torch_compile, tuple(notes))


def use_fused_optimizer(device: torch.device) -> bool:
    """
    Whether the trainer uses `AdamW(fused=True)` (one kernel for all tensors per step, and a device-side non-finite
    guard, [`NonFiniteGuard`] in deferred mode): on CUDA and on the CPU, where PyTorch's default AdamW loops over our
    87-409 weight tensors and costs the step ~10% at small sizes (`benchmarks/RESULTS.md`). Other devices keep the
    default implementation.
    """
    return torch.device(device).type in ("cuda", "cpu")


@torch.no_grad()
def update_ema(ema: "EMAModel", parameters: Iterable[torch.nn.Parameter]) -> None:
    """
    `ema.step(parameters)` in one in-place pass: `shadow <- shadow + (1 - decay) * (param - shadow)` as one
    `torch._foreach_lerp_`. diffusers' `EMAModel.step(foreach=True)` computes the same update through a temporary
    `shadow - param` of every weight (2.5 GiB more peak memory for SiT-XL/2, and two more passes over the weights);
    its decay schedule (`get_decay`), step count and frozen-parameter copy are kept, so its checkpoints and
    `cur_decay_value` are unchanged.

    Args:
        ema (`EMAModel`): diffusers' EMA of the model whose `parameters` are given.
        parameters (`Iterable[torch.nn.Parameter]`): The trained weights, in the order `ema` was built with.

    Example:

    ```py
    >>> import torch
    >>> from diffusers.training_utils import EMAModel
    >>> from diffusers_repa.training_utils import update_ema
    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> ema = EMAModel([weight], decay=0.9, min_decay=0.9)
    >>> update_ema(ema, [weight])  # diffusers' first update copies the weights (decay 0)
    >>> with torch.no_grad():
    ...     _ = weight.fill_(2.0)
    >>> update_ema(ema, [weight])  # 1 + (1 - 0.9) * (2 - 1)
    >>> [round(value, 6) for value in ema.shadow_params[0].tolist()], ema.cur_decay_value
    ([1.1, 1.1], 0.9)

    ```
    """
    parameters = list(parameters)
    ema.optimization_step += 1
    decay = ema.cur_decay_value = ema.get_decay(ema.optimization_step)
    pairs = list(zip(ema.shadow_params, parameters))
    trained = [(shadow, param) for shadow, param in pairs if param.requires_grad]
    frozen = [(shadow, param) for shadow, param in pairs if not param.requires_grad]
    if trained:
        shadows, params = zip(*trained)
        torch._foreach_lerp_(list(shadows), list(params), 1.0 - decay)
    if frozen:
        shadows, params = zip(*frozen)
        torch._foreach_copy_(list(shadows), list(params))


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines and validation grids
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PipelineSpec:
    r"""
    What turns a trained transformer into a [`REPAPipeline`]: the VAE (None in pixel space), the class names, the
    trainer's latent scale and encode-side shift (the model sees `z * latent_scale + latent_shift`; the pipeline
    stores diffusers' `shift_factor = -latent_shift / latent_scale`; pixel-space models get 1 and 0: pixels in
    [-1, 1]) and the flow path.
    """

    vae: "AutoencoderKL | None"
    id2label: dict[str, str] | None
    latent_scale: float = 1.0
    latent_shift: float = 0.0
    path_type: str = "linear"

    def build(self, transformer: SiTTransformer2DModel, sde: bool = False) -> REPAPipeline:
        """A pipeline around `transformer`, with the Euler ODE sampler (or, `sde=True`, the official SDE sampler)."""
        scheduler_class = SiTEulerMaruyamaScheduler if sde else SiTEulerScheduler
        return REPAPipeline(
            transformer=transformer,
            scheduler=scheduler_class(path_type=self.path_type),
            vae=self.vae,
            id2label=self.id2label,
            latent_scale=self.latent_scale,
            shift_factor=shift_factor_from_latent_shift(self.latent_shift, self.latent_scale),
        )


@dataclass(frozen=True)
class ValidationSettings:
    """The validation grid: its classes, the Euler ODE steps, the guidance scale, the seed of its fixed noise and
    whether the pipeline samples in fast mode (`REPAPipeline(..., fast=True)`, `train_repa.py --fast`)."""

    class_labels: tuple[int, ...]
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 0
    fast: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_classes: int) -> "ValidationSettings":
        """`train_repa.py`'s `--validation_*` options (the classes checked against `num_classes`), `--seed` and
        `--fast`."""
        labels = validation_labels(args.validation_class_labels, num_classes)
        return cls(labels, args.validation_num_inference_steps, args.validation_guidance_scale, args.seed,
                   getattr(args, "fast", False))  # fmt: skip


def validation_labels(requested: Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    """The requested validation classes (checked), or 8 classes spread evenly over `num_classes`."""
    if requested is None:
        count = min(8, num_classes)
        return tuple(round(i * (num_classes - 1) / max(count - 1, 1)) for i in range(count))
    wrong = [label for label in requested if not 0 <= label < num_classes]
    if wrong:
        raise ValueError(f"--validation_class_labels {wrong} are not class ids in [0, {num_classes - 1}].")
    return tuple(requested)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: "EMAModel | None") -> Iterator[torch.nn.Module]:
    """
    Swap the EMA weights into `model` (when there is an EMA) and put it in eval mode (no label dropout); the trained
    weights and train mode come back at the end, even after an error.
    """
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield model
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())


@torch.no_grad()
def sample_grid(pipeline: REPAPipeline, settings: ValidationSettings) -> "Image.Image":
    """A labelled grid of the validation classes, from fixed per-image noise (the same at every validation)."""
    from .sample import caption, image_generators, make_grid, to_uint8

    labels = list(settings.class_labels)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        labels,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        guidance_interval=(0.0, 1.0),
        generator=image_generators(settings.seed, range(len(labels))),
        output_type="np",
        fast=settings.fast,
    ).images
    captions = [caption(pipeline, label) for label in labels]
    scale = max(1, 128 // images.shape[1])  # small images are enlarged so that they (and their captions) are legible
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return make_grid(to_uint8(images), captions, columns=min(len(labels), 8))


def log_image(accelerator: "Accelerator", tag: str, image: "Image.Image", step: int) -> None:
    """Send an image to the run's trackers (tensorboard, wandb)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image)}, step=step)


def log_validation(
    accelerator: "Accelerator",
    transformer: torch.nn.Module,
    ema: "EMAModel | None",
    spec: PipelineSpec,
    settings: ValidationSettings,
    output_dir: Path,
    step: int,
) -> Path | None:
    """Sample the validation grid from the EMA weights in eval mode, save it to `samples/` and send it to the
    trackers, on the main process (the others return None at once)."""
    if not accelerator.is_main_process:
        return None
    with ema_weights(accelerator.unwrap_model(transformer), ema) as model, accelerator.autocast():
        grid = sample_grid(spec.build(model), settings)
    path = Path(output_dir) / "samples" / f"step-{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    grid.save(path)
    log_image(accelerator, "validation", grid, step)
    logger.info(f"Validation grid: {path}")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Runs: the checkpoint to resume from, what a resume changes, checkpoint hooks and uploads
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where training stands; saved as `training_state.json`, the completion mark of a checkpoint."""

    global_step: int = 0
    batches_seen: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "batches_seen": self.batches_seen}


def checkpoint_contents(lora: bool, alignment: bool) -> list[str]:
    """The paths every complete checkpoint of the trainer holds (checked before a resume)."""
    contents = ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
    contents += ["transformer_lora"] if lora else ["transformer", "transformer_ema"]
    return contents + (["projector"] if alignment else [])


def prepare_training_run(
    accelerator: "Accelerator",
    output_dir: Path,
    resume_from_checkpoint: str | None,
    overwrite: bool,
    required: Iterable[str],
    run_outputs: Iterable[str],
) -> Path | None:
    """[`prepare_run_folder`], with a damaged explicit `--resume_from_checkpoint` as one `ValueError` saying what to
    do. Returns the checkpoint to resume from (or None) on every process."""
    try:
        return prepare_run_folder(accelerator, output_dir, resume_from_checkpoint, overwrite, required, run_outputs)
    except CheckpointError as error:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: {error}. Resume from another checkpoint "
            "(`latest` picks the newest complete one)."
        ) from None


def resume_options(
    run_args: dict[str, Any], resume_path: Path, applicable: Collection[str], ignored: Collection[str]
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """
    Compare this command's options with those `resume_path` was trained with ([`compare_resume_args`]): refused
    changes raise one error listing them all (turning the alignment on or off by `proj_coeff` is refused too: it adds
    or removes the projector; so is a change of `mixed_precision` to fp16 from a checkpoint without the loss-scaler
    state `scaler.pt`, which only an fp16 run saves, whatever it recorded); the others are logged and returned, with
    `run_args` plus the history of changes.
    """
    saved = load_resume_args(resume_path)
    if saved is None:
        logger.warning(f"{resume_path} does not record its options: they cannot be compared with this command's.")
        return run_args, {}
    diff = compare_resume_args(saved, run_args, applicable, ignored)
    if "proj_coeff" in diff.applied and (saved["proj_coeff"] > 0) != (run_args["proj_coeff"] > 0):
        diff.refused["proj_coeff"] = diff.applied.pop("proj_coeff")
    to_fp16 = diff.applied.get("mixed_precision", (None, None))[1] == "fp16"
    if to_fp16 and not (resume_path / "scaler.pt").is_file():  # accelerate's load_state would look for it
        diff.refused["mixed_precision"] = diff.applied.pop("mixed_precision")
    if diff.refused:
        raise ValueError(diff.refusal(resume_path))
    step = json.loads((resume_path / TRAINING_STATE).read_text())["global_step"]
    for name, (old, new) in diff.applied.items():
        logger.warning(f"{name} changed {old} -> {new} on resume (from step {step + 1}).")
    return with_resume_history(saved, run_args, diff.applied, step), diff.applied


def restart_options(
    run_args: dict[str, Any], output_dir: Path, applicable: Collection[str], ignored: Collection[str]
) -> None:
    """
    `--resume_from_checkpoint latest` found no checkpoint, so the run starts at step 0; but `output_dir` may hold a
    run that stopped before its first checkpoint (its `training_args.json`, logs and validation grids). Starting over
    there is that run's re-queued job only with its options: a change a resume could not make raises one error listing
    them all (the folder would mix two runs); the others are logged.
    """
    path = Path(output_dir) / TRAINING_ARGS
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(
            f"{path} is unreadable: delete it, or use --overwrite_output_dir (without --resume_from_checkpoint)."
        ) from None
    diff = compare_resume_args(saved, run_args, applicable, ignored)
    if diff.refused:
        raise ValueError(
            f"{output_dir} holds a run that stopped before its first checkpoint, with other options (recorded value "
            f"-> this command's):\n{diff.listing()}\nStarting over there would mix the two runs' logs and samples: "
            "pass the recorded values to restart it, or drop --resume_from_checkpoint and pass --overwrite_output_dir "
            "to delete it, or choose another --output_dir."
        )
    for name, (old, new) in diff.applied.items():
        logger.warning(f"{name} changed {old} -> {new} since the run that stopped before its first checkpoint.")


def load_training_state(
    accelerator: "Accelerator", resume_path: Path, lr_scheduler: "AcceleratedScheduler | None" = None
) -> TrainState:
    """
    `accelerator.load_state` from a verified checkpoint (the hooks load the models), and its training state.

    accelerate steps the learning-rate schedule once per process and optimizer step (diffusers' examples build it
    with `num_processes` times the steps), so a checkpoint saved by another number of processes holds a schedule
    position in other units: `lr_scheduler` (accelerate's wrapper, when given) is moved to the same optimizer step in
    this run's units, instead of continuing the schedule from a multiplied or divided step.
    """
    accelerator.print(f"Resuming from {resume_path}")
    if not (resume_path / f"random_states_{accelerator.process_index}.pkl").is_file():
        logger.warning(
            f"{resume_path} has no random state for process {accelerator.process_index} (it was saved by fewer "
            "processes): the resumed run will not repeat an uninterrupted one exactly."
        )
    accelerator.load_state(str(resume_path))
    state = json.loads((resume_path / TRAINING_STATE).read_text())
    manifest = resume_path / MANIFEST
    saved_processes = json.loads(manifest.read_text()).get("num_processes") if manifest.is_file() else None
    if saved_processes and saved_processes != accelerator.num_processes:
        note = ""
        if lr_scheduler is not None:
            schedule = lr_scheduler.scheduler
            position = schedule.last_epoch
            schedule.last_epoch = position // saved_processes * accelerator.num_processes
            note = (
                f"; the learning-rate schedule continues from the same optimizer step (position {position} -> "
                f"{schedule.last_epoch} in accelerate's units, one per process and step)"
            )
        logger.warning(
            f"{resume_path} was saved by {saved_processes} processes and this run has {accelerator.num_processes}: "
            f"the random streams differ, so the run will not repeat an uninterrupted one exactly{note}."
        )
    return TrainState(state["global_step"], state["batches_seen"])


def register_checkpoint_hooks(accelerator: "Accelerator", ema: "EMAModel | None", lora: bool) -> None:
    """Save and load the models of a checkpoint in diffusers' format: `transformer/` (or `transformer_lora/`),
    `transformer_ema/` and `projector/`, instead of accelerate's `model.safetensors` files."""
    from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
    from diffusers.training_utils import EMAModel
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    def save_model_hook(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                if isinstance(model, REPAProjector):
                    model.save_pretrained(os.path.join(checkpoint_dir, "projector"))
                elif lora:
                    model.save_lora_adapter(os.path.join(checkpoint_dir, "transformer_lora"))
                else:
                    model.save_pretrained(os.path.join(checkpoint_dir, "transformer"))
            if ema is not None:
                # EMAModel builds a randomly initialised model to save: keep that off the training's random stream, so
                # that a run's numbers do not depend on when it saved (an extra checkpoint on SIGTERM, a new cadence).
                with torch.random.fork_rng(devices=[]):
                    ema.save_pretrained(os.path.join(checkpoint_dir, "transformer_ema"))
        weights.clear()  # everything is saved above, in diffusers' format

    def load_model_hook(models, checkpoint_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, REPAProjector):
                model.load_state_dict(REPAProjector.from_pretrained(checkpoint_dir, subfolder="projector").state_dict())
            elif lora:
                adapter = load_file(os.path.join(checkpoint_dir, "transformer_lora", LORA_WEIGHT_NAME_SAFE))
                set_peft_model_state_dict(model, adapter, adapter_name="default")
            else:
                loaded = SiTTransformer2DModel.from_pretrained(checkpoint_dir, subfolder="transformer")
                model.load_state_dict(loaded.state_dict())
        if ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(checkpoint_dir, "transformer_ema"), SiTTransformer2DModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


class CheckpointUploads:
    r"""
    Background uploads of checkpoints to a Hub repo (`--push_checkpoints_to_hub`), each into
    `checkpoints/checkpoint-N/` ([`HUB_CHECKPOINTS_FOLDER`]), which `REPAPipeline.from_pretrained` never downloads.
    `upload` is `huggingface_hub.upload_folder` (passed in, so that the trainer's module-level name is used).
    A failed upload is reported, not fatal.
    """

    def __init__(self, upload: Callable[..., Any], repo_id: str | None, token: str | None):
        self.upload, self.repo_id, self.token = upload, repo_id, token
        self.pending: list[concurrent.futures.Future] = []

    def push(self, checkpoint: Path, step: int) -> None:
        self.wait()  # the previous upload must not race the pruning of its folder
        future = self.upload(
            repo_id=self.repo_id,
            folder_path=checkpoint,
            path_in_repo=f"{HUB_CHECKPOINTS_FOLDER}/{checkpoint.name}",
            commit_message=f"Checkpoint {step}",
            token=self.token,
            run_as_future=True,
        )
        self.pending.append(future)

    def wait(self) -> None:
        for future in self.pending:
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - any Hub/network error
                logger.warning(f"A checkpoint upload to the Hub failed: {error}")
        self.pending.clear()


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation while training (FID, CKNNA)
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def fixed_alignment_batch(
    dataset: "datasets.Dataset",
    data: DatasetInfo,
    targets: AlignmentTargets,
    num_images: int,
    seed: int,
    resolution: int,
    image_column: str,
    label_column: str,
    latent_scale: float,
    latent_shift: float,
    accelerator: "Accelerator",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A fixed set of `num_images` training images (a seeded random subset) for CKNNA: their clean model inputs (the VAE
    posterior mean, not a draw, for latents; pixels in [-1, 1] otherwise) and the first encoder's target features,
    both on the CPU: `(N, C, H, W)` and `(N, T, D)` float32.
    """
    if num_images > len(dataset):
        raise ValueError(f"--cknna_num_images {num_images} exceeds the dataset's {len(dataset)} images.")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images].tolist()
    array_columns = ([MOMENTS_COLUMN] if data.latent else []) + targets.columns
    batches = TrainingBatches(dataset, ImageTransform(resolution, image_column, label_column), array_columns)
    samples, features = [], []
    for start in range(0, len(indices), batch_size):
        batch = batches.__getitems__(indices[start : start + batch_size])
        if data.latent:
            mean = batch[MOMENTS_COLUMN][:, : data.in_channels].float()
            samples.append(mean * latent_scale + latent_shift)
        else:
            samples.append(clean_sample(batch, False, latent_scale, latent_shift))
        on_device = {
            key: value.to(accelerator.device) if torch.is_tensor(value) else value for key, value in batch.items()
        }
        with torch.inference_mode(), accelerator.autocast():
            features.append(targets(on_device)[0].float().cpu())
    return torch.cat(samples), torch.cat(features)


class TrainingEvaluation:
    r"""
    Evaluation while training (`--fid_steps`, `--cknna_steps`): the EMA weights' FID/sFID/precision/recall
    ([`~diffusers_repa.evaluation.monitor.FIDMonitor`]; every process samples its share, the main process runs the
    feature network) and CKNNA ([`~diffusers_repa.evaluation.monitor.CKNNAProbe`], main process), in eval mode. The
    results go to the trackers and, on the main process, to `path` (JSON: `description`, `final`, `history`); a resumed
    run keeps the entries up to the step it resumed from. Every process records which evaluations it ran, so all take
    the same decisions.
    """

    def __init__(
        self,
        fid: "FIDMonitor | None" = None,
        cknna: "CKNNAProbe | None" = None,
        fid_steps: int = 0,
        cknna_steps: int = 0,
        path: Path | None = None,
        is_main_process: bool = True,
    ):
        self.fid, self.cknna, self.fid_steps, self.cknna_steps = fid, cknna, fid_steps, cknna_steps
        self.path, self.is_main_process = path, is_main_process
        descriptions = [fid.describe()] if fid is not None and fid.network is not None else []
        descriptions += [cknna.describe()] if cknna is not None else []
        self.description = " ".join(descriptions) or None
        self.history: list[dict[str, float]] = []
        self._ran: set[tuple[int, str]] = set()

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        data: DatasetInfo,
        dataset: "datasets.Dataset",
        targets: AlignmentTargets | None,
        accelerator: "Accelerator",
    ) -> "TrainingEvaluation":
        """Set up `train_repa.py`'s evaluations (before the first step): the FID reference (built once and cached in
        `--output_dir`) and the feature network on the main process, the CKNNA batch."""
        from .evaluation.monitor import CKNNAProbe, FIDMonitor

        fid = cknna = None
        if args.fid_steps:
            settings = dict(num_samples=args.fid_num_samples, num_classes=data.num_classes, seed=args.seed,
                            num_inference_steps=args.fid_num_inference_steps, guidance_scale=args.fid_guidance_scale,
                            batch_size=args.fid_batch_size, progress=accelerator.is_local_main_process,
                            fast=getattr(args, "fast", False))  # fmt: skip
            if accelerator.is_main_process:
                fid = FIDMonitor.from_source(
                    args.fid_reference, cache_dir=args.output_dir, resolution=args.resolution,
                    split=args.fid_reference_split, num_images=args.fid_reference_num_images,
                    reference_seed=args.seed if args.fid_reference_num_images else None,
                    device=accelerator.device, dataset_cache_dir=args.cache_dir, **settings,
                )  # fmt: skip
            else:  # the other processes only sample their share
                fid = FIDMonitor(None, None, **settings)
            accelerator.wait_for_everyone()
        if args.cknna_steps and accelerator.is_main_process:
            sample, features = fixed_alignment_batch(
                dataset, data, targets, args.cknna_num_images, args.seed, args.resolution, args.image_column,
                args.label_column, args.latent_scale, args.latent_shift, accelerator,
            )  # fmt: skip
            cknna = CKNNAProbe(
                sample, features, path_type=args.path_type, seed=args.seed, batch_size=args.fid_batch_size
            )
        path = Path(args.output_dir) / "eval_metrics.json"
        return cls(fid, cknna, args.fid_steps, args.cknna_steps, path, accelerator.is_main_process)

    def resume(self, step: int) -> None:
        """
        Keep the recorded evaluations up to `step`, the step a resumed run starts from (read by every process: the
        output folder is shared, as for the checkpoints); those at `step` itself are not run again at the end.
        """
        if self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            self.history = [entry for entry in saved.get("history", []) if entry["step"] <= step]
            names = ("fid", "cknna")
            self._ran = {(entry["step"], name) for entry in self.history for name in names if name in entry}

    def due(self, step: int, final: bool = False) -> tuple[bool, bool]:
        """Whether FID and CKNNA are due at `step`: on their cadence, or (`final`) when not yet run at `step`."""
        if final:
            return (bool(self.fid_steps) and (step, "fid") not in self._ran,
                    bool(self.cknna_steps) and (step, "cknna") not in self._ran)  # fmt: skip
        return (bool(self.fid_steps) and step % self.fid_steps == 0,
                bool(self.cknna_steps) and step % self.cknna_steps == 0)  # fmt: skip

    def run(
        self,
        accelerator: "Accelerator",
        transformer: torch.nn.Module,
        ema: "EMAModel | None",
        spec: PipelineSpec,
        step: int,
        final: bool = False,
    ) -> dict[str, float]:
        """
        Run the evaluations due at `step` ([`due`]; with `final`, those not yet run at `step`) on the EMA weights; call
        on every process (the values are returned on the main one).
        """
        from accelerate.utils import gather_object

        with_fid, with_cknna = self.due(step, final)
        values: dict[str, float] = {}
        if not (with_fid or with_cknna):
            return values
        with ema_weights(accelerator.unwrap_model(transformer), ema) as model:
            if with_fid:
                with accelerator.autocast():
                    images = self.fid.sample(spec.build(model), accelerator.process_index, accelerator.num_processes)
            if with_cknna and self.cknna is not None:
                values["cknna"] = self.cknna(model)
        if with_fid:
            shares = gather_object([images])
            if accelerator.is_main_process:
                values.update(self.fid.evaluate(shares))
        self._ran.update([(step, "fid")] * with_fid + [(step, "cknna")] * with_cknna)
        if accelerator.is_main_process and values:
            accelerator.log(values, step=step)
            logger.info(f"Evaluation at step {step}: {values}")
            self.history = [entry for entry in self.history if entry["step"] != step] + [{"step": step, **values}]
            if self.path is not None:
                document = {"description": self.description, "final": self.final(), "history": self.history}
                write_json_atomically(self.path, document)
        return values

    def final(self) -> dict[str, float]:
        """The latest value of each metric and the step of the latest evaluation (`<metric>_step` where older)."""
        latest: dict[str, tuple[int, float]] = {}
        for entry in self.history:
            latest.update({name: (entry["step"], value) for name, value in entry.items() if name != "step"})
        if not latest:
            return {}
        step = max(measured for measured, _ in latest.values())
        result: dict[str, Any] = {"step": step}
        for name, (measured, value) in latest.items():
            result[name] = value
            if measured != step:
                result[f"{name}_step"] = measured
        return result


def write_model_card(
    args: argparse.Namespace,
    data: DatasetInfo,
    model: SiTTransformer2DModel,
    steps: int,
    repo_id: str,
    run_args: Mapping[str, Any],
    example_label: int,
    evaluation: TrainingEvaluation | None = None,
) -> None:
    """
    `train_repa.py`'s model card, saved as README.md in `--output_dir`: the architecture of the model trained (the
    preset's name only when it is the preset), the data, the hyperparameters (a value a resume changed shows its
    history) and the final evaluation.
    """
    from .model_card import build_model_card, describe_architecture

    config = model.config
    architecture = describe_architecture(config)
    description = (
        f"A {architecture} with {config.num_classes} classes, trained with REPA on "
        f"`{args.dataset_name or args.train_data_dir}` at {args.resolution}x{args.resolution} "
        f"({'VAE latents' if data.latent else 'pixels'}), aligning block {config.alignment_depth}."
    )
    names = ("proj_coeff", "proj_coeff_schedule", "alignment_stop_step", "path_type", "weighting", "cfg_prob",
             "legacy", "learning_rate", "batch_size", "max_grad_norm", "ema_decay", "mixed_precision", "lora_rank",
             "seed")  # fmt: skip
    hyperparameters = {"architecture": architecture, "alignment_depth": config.alignment_depth}
    hyperparameters.update({name: getattr(args, name) for name in names})
    if args.lora_rank is not None:
        hyperparameters["ema_decay"] = None
    history = run_args.get(RESUME_HISTORY, [])
    card = build_model_card(
        repo_id,
        model_description=description,
        encoders=encoder_names(args.encoder) if args.proj_coeff > 0 else [],
        hyperparameters={name: value_history(name, value, history) for name, value in hyperparameters.items()},
        train_steps=steps,
        dataset=args.dataset_name,
        base_model=args.pretrained_model_name_or_path,
        lora=args.lora_rank is not None,
        sample_grid="sample_grid.png",
        example_label=example_label,
        metrics=evaluation.final() if evaluation is not None else None,
        metrics_description=evaluation.description if evaluation is not None else None,
    )
    card.save(Path(args.output_dir) / "README.md")


def save_final_outputs(
    accelerator: "Accelerator",
    args: argparse.Namespace,
    transformer: torch.nn.Module,
    projector: torch.nn.Module | None,
    ema: "EMAModel | None",
    spec: PipelineSpec,
    validation: ValidationSettings,
    data: DatasetInfo,
    steps: int,
    *,
    repo_id: str | None,
    run_args: Mapping[str, Any],
    evaluation: TrainingEvaluation,
    uploads: CheckpointUploads,
    upload: Callable[..., Any],
) -> None:
    """
    `train_repa.py`'s final outputs, on the main process: a `REPAPipeline` folder of the EMA weights with the
    official SDE sampler (or, with LoRA, the adapter alone), the projector, the sample grid, the model card, and the
    upload to the Hub (`upload` is `huggingface_hub.upload_folder`; checkpoints, logs, validation grids, the options
    and the cached FID reference stay local).
    """
    output_dir = Path(args.output_dir)
    model = accelerator.unwrap_model(transformer)
    if args.lora_rank is not None:
        model.save_lora_adapter(output_dir)
    else:  # a copy holding the EMA weights; the trained weights stay as they are on every process
        model = SiTTransformer2DModel.from_config(model.config).to(accelerator.device)
        ema.copy_to(model.parameters())
        spec.build(model, sde=True).save_pretrained(output_dir)
    model.eval()
    if projector is not None:
        accelerator.unwrap_model(projector).save_pretrained(output_dir / "projector")
    with accelerator.autocast():
        sample_grid(spec.build(model), validation).save(output_dir / "sample_grid.png")
    repo_name = repo_id or args.hub_model_id or output_dir.name
    write_model_card(args, data, model, steps, repo_name, run_args, validation.class_labels[0], evaluation)
    if args.push_to_hub:
        uploads.wait()
        upload(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message="End of training",
            ignore_patterns=["checkpoint-*", ".*", f"{args.logging_dir}/*", "samples/*", TRAINING_ARGS,
                             "fid_reference-*.npz"],
            token=args.hub_token,
        )  # fmt: skip
    where = "LoRA adapter" if args.lora_rank is not None else "pipeline (EMA weights)"
    final = evaluation.final()
    accelerator.print(
        f"\nTraining finished at step {steps}. Outputs in {output_dir}:\n"
        f"  {where}: {output_dir}\n"
        f"  checkpoints: {', '.join(path.name for _, path in list_checkpoints(output_dir)) or 'none'}\n"
        f"  sample grid: {output_dir / 'sample_grid.png'} (validation grids in {output_dir / 'samples'})\n"
        f"  model card: {output_dir / 'README.md'}\n"
        f"  logs: {output_dir / args.logging_dir}"
        + (f"\n  final metrics ({evaluation.path}): {final}" if final else "")
    )
