# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""
Plumbing of `training/train_repa.py` that is not about REPA: checkpoints that are written atomically, verified before
use and pruned safely; the guard that keeps two runs out of one output folder; the comparison of a resumed run's
options with the checkpoint's; and the signal handling that turns a preemption into a checkpoint.

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

import json
import logging
import os
import re
import shutil
import signal
import threading
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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


def write_json_atomically(path: Path, data: Any) -> None:
    """Write `data` as JSON under a temporary name, flush it, then rename it to `path`: readers see old or new."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, default=str)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


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

    def refusal(self, checkpoint: Path) -> str:
        """The error message listing every refused change."""
        lines = "\n".join(f"  --{name}: {old!r} -> {new!r}" for name, (old, new) in self.refused.items())
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
