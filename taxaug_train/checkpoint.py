"""Checkpoints: one file holding everything a run needs to continue exactly.

A checkpoint is a dict saved with `torch.save`: ``model``, ``optimizer``, ``scheduler``,
``scaler`` (fp16), ``engine`` (every algorithm's generator, schedule position and state),
``loop`` (step, epoch, batch within the epoch, samples seen), ``sampler`` (seed, epoch,
batch size, mode: the order of every epoch is a function of these), ``rng`` (Python, NumPy,
torch CPU and CUDA generators), ``config`` and ``world_size``. Files are written under a
temporary name and renamed, so an interrupted save never leaves a half-written checkpoint, and
``last.pt`` always names the newest one.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RESUME_KEYS", "CheckpointError", "capture_rng", "list_checkpoints", "load_checkpoint", "prune_checkpoints",
           "restore_rng", "save_checkpoint", "step_path"]

FORMAT_VERSION = 1
#: what `load_checkpoint` insists on by default: everything a resume restores
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "engine", "loop", "sampler", "rng")
log = logging.getLogger("taxaug_train")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run that loads it."""


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """States of every global generator the loop may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def save_checkpoint(payload: dict[str, Any], path: str | Path, *, last_link: bool = True) -> Path:
    """Write `payload` atomically to `path` and point ``last.pt`` (same folder) at it.

    A failed write (disk full, quota, permissions) removes its temporary file and raises
    `CheckpointError` naming the cause, so no partial file is left to fill the disk further.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write(payload, tmp, path)
    os.replace(tmp, path)
    if last_link and path.name != "last.pt":
        last = path.with_name("last.pt")
        tmp_last = path.with_name(f".last.pt.tmp-{os.getpid()}")
        tmp_last.unlink(missing_ok=True)
        try:  # a hard link costs no space; fall back to a copy where links are refused
            os.link(path, tmp_last)
        except OSError:
            _write(payload, tmp_last, last)
        os.replace(tmp_last, last)
    return path


def _write(payload: dict[str, Any], tmp: Path, final: Path) -> None:
    """`torch.save` through a Python file, so write errors arrive as OSError with their errno."""
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {str(final)!r}: {_cause(err)}; the partial file was "
                              f"removed; free space in {str(final.parent)!r} or set train.out_dir elsewhere, then "
                              "--resume from the last checkpoint") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cause(err: OSError) -> str:
    words = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
             errno.EROFS: "read-only file system"}
    code = err.errno
    if code is None:
        return str(err)
    return f"{words.get(code, os.strerror(code))} ({errno.errorcode.get(code, code)}: {os.strerror(code)})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    required: Sequence[str] = RESUME_KEYS) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; a folder means its ``last.pt``.

    When ``last.pt`` (given or found in a folder) cannot be read or lacks `required` keys, the newest
    intact ``step_*.pt`` beside it is loaded instead, with a warning. ``payload["loaded_from"]`` is the
    file actually read.
    """
    path = _resolve(Path(path))
    candidates = [path]
    if path.name == "last.pt":
        candidates += [p for _, p in reversed(list_checkpoints(path.parent))]
    first_error: CheckpointError | None = None
    for candidate in candidates:
        try:
            payload = _read(candidate, map_location, required)
        except CheckpointError as err:
            first_error = first_error or err
            continue
        if candidate != path:
            log.warning("%s; resuming from %s, the newest intact checkpoint in that folder", first_error, candidate)
        payload["loaded_from"] = str(candidate)
        return payload
    assert first_error is not None
    if len(candidates) > 1:
        raise CheckpointError(f"{first_error}; no intact step_*.pt beside it either") from None
    raise first_error


def _resolve(path: Path) -> Path:
    if path.is_dir():
        candidates = [path / "last.pt", path / "checkpoints" / "last.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"--resume {str(path)!r}: no last.pt in that folder or its checkpoints/ subfolder")
        return found
    if not path.is_file():
        raise CheckpointError(f"--resume {str(path)!r}: no such checkpoint file")
    return path


def _read(path: Path, map_location: str | torch.device, required: Sequence[str]) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # any unpickling failure means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {_one_line(err)}") from err
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} is not a taxaug_train checkpoint (format {FORMAT_VERSION})")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing} (a resumable checkpoint holds "
                              f"{', '.join(required)}): it is damaged or was not written by taxaug_train")
    return payload


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step_*.pt`` in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (0 keeps all); returns what was removed."""
    if keep <= 0:
        return []
    removed = []
    for _, p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
