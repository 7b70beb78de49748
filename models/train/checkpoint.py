"""Full-state training checkpoints: written atomically, verified, loaded without unpickling code.

A checkpoint is two files in ``<run>/checkpoints/``::

    ckpt-<iteration, 9 digits>.pt     torch.save of plain containers and tensors only
    ckpt-<iteration, 9 digits>.json   sidecar: format, iteration, epoch, kimg, size and sha256 of the .pt

Each is written to a temporary name in the same folder, flushed, fsynced and renamed, the .pt first, so
a crash leaves either the previous checkpoint or a complete new one. Loading uses
``torch.load(weights_only=True)``, which refuses anything but tensors and plain Python containers, so
a checkpoint cannot run code; with the sidecar present the file's sha256 is checked first, which catches
damage torch's zip reader would not notice. Every failure raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.fileio import fsync_path, sha256_file

FORMAT = "synthpacs-checkpoint/1"
_NAME_RE = re.compile(r"^ckpt-([0-9]{9,})\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    iteration: int
    meta: dict[str, Any]  # the sidecar, or {} when it is missing

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:09d}.pt"


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(folder: Path, iteration: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` as checkpoint ``iteration`` in ``folder``; returns the .pt path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(iteration)
    state = dict(state, format=FORMAT)
    _write_atomic(path, lambda f: torch.save(state, f))
    sidecar = dict(meta, format=FORMAT, iteration=int(iteration), file=path.name, size=path.stat().st_size, sha256=sha256_file(path))
    _write_atomic(path.with_suffix(".json"), lambda f: f.write((json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()))
    fsync_path(folder)
    return path


def list_checkpoints(folder: Path) -> list[CheckpointInfo]:
    """The checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if not m:
            continue
        try:
            meta = json.loads(p.with_suffix(".json").read_text())
            meta = meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            meta = {}
        found.append(CheckpointInfo(p, int(m.group(1)), meta))
    return sorted(found, key=lambda c: c.iteration)


def latest_checkpoint(folder: Path) -> CheckpointInfo | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, damaged (its sha256
    differs from the sidecar), not a checkpoint, or holds anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    sidecar = path.with_suffix(".json")
    if verify and sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint sidecar {sidecar} is not readable JSON ({exc}); the checkpoint cannot be verified") from None
        size = path.stat().st_size
        if isinstance(meta, dict) and meta.get("size") not in (None, size):
            raise CheckpointError(
                f"checkpoint {path} is truncated or damaged: {size} bytes, but {sidecar.name} records {meta['size']}; "
                "resume from an earlier checkpoint (--from-checkpoint)"
            )
        if isinstance(meta, dict) and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is damaged: its sha256 differs from the one in {sidecar.name}; "
                "resume from an earlier checkpoint (--from-checkpoint)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers, and is not loaded: {str(exc).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or damaged and cannot be read ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a synthpacs training checkpoint (expected format {FORMAT!r})")
    return state


def prune_checkpoints(folder: Path, keep: int, protect: set[int] | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and any iteration in ``protect``); returns what went."""
    if keep <= 0:
        return []
    protect = protect or set()
    gone = []
    for c in list_checkpoints(folder)[:-keep]:
        if c.iteration in protect:
            continue
        for p in (c.path, c.sidecar):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        gone.append(c.path)
    return gone
