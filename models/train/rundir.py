"""The folder of one training run, ``<home>/runs/<run-id>/`` (ARCHITECTURE.md "Data contracts")::

    run.json                  what was asked for (architecture, dataset reference, options, recipe
                              hyper-parameters) and where it ran; written once when the run starts
    metrics.jsonl             one JSON object per line: "train" rows every logging interval, "snapshot"
                              rows with sample grids and metrics, "session" rows at start and resume
    checkpoints/ckpt-*.pt     full training state (see models.train.checkpoint), with .json sidecars
    samples/reals.png         training images, for comparison
    samples/<epoch|kimg>-<N>.png   sample grids at fixed seeds
    samples/progression.png   the first row of every grid, stacked
    run.lock                  held while a process trains in this folder
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(Exception):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def new_run_id(arch: str, dataset: str, resolution: int) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{arch}-{re.sub(r'[^A-Za-z0-9._-]', '_', dataset)}-{resolution}"


def validate_run_id(run_id: str) -> str:
    if not _ID_RE.match(run_id or ""):
        raise RunError(f"run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return run_id


def resolve_run(runs_root: Path, ref: str | os.PathLike[str]) -> Path:
    """A run id under ``runs_root``, or the path of a run folder."""
    p = Path(ref)
    candidates = [p] if (p.is_absolute() or os.sep in str(ref)) else [Path(runs_root) / str(ref), p]
    for c in candidates:
        if (c / RUN_FILE).is_file():
            return c.resolve()
    known = sorted(d.name for d in Path(runs_root).iterdir() if (d / RUN_FILE).is_file()) if Path(runs_root).is_dir() else []
    raise RunError(f"no training run {str(ref)!r} (looked in {runs_root}); runs: {', '.join(known[-10:]) or 'none'}")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    run_file = property(lambda self: self.path / RUN_FILE)
    metrics_file = property(lambda self: self.path / METRICS_FILE)
    checkpoints = property(lambda self: self.path / "checkpoints")
    samples = property(lambda self: self.path / "samples")

    @classmethod
    def create(cls, runs_root: Path, run_id: str) -> "RunDir":
        path = Path(runs_root) / validate_run_id(run_id)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise RunError(f"run {run_id!r} already exists at {path}; continue it with --resume {run_id} or pick another --run-id") from None
        return cls(path)

    def read_info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.run_file.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.run_file} is missing: {self.path} is not a training run") from None
        except ValueError as exc:
            raise RunError(f"{self.run_file} is not valid JSON ({exc})") from None
        if not isinstance(info, dict) or "options" not in info:
            raise RunError(f"{self.run_file} does not describe a training run")
        return info

    def write_info(self, info: Mapping[str, Any]) -> None:
        tmp = self.run_file.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.run_file)

    def lock(self) -> None:
        """Hold this run exclusively; a second trainer in the same folder gets a clear error."""
        fd = os.open(self.path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"another process is training in {self.path} (it holds run.lock)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row, sort_keys=False, allow_nan=True) + "\n")

    def metrics(self) -> Iterator[dict[str, Any]]:
        if not self.metrics_file.exists():
            return
        with open(self.metrics_file) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(row, dict):
                    yield row

    def truncate_metrics(self, iteration: int) -> None:
        """Drop rows written after ``iteration``: a resumed run repeats those minibatches and logs them again."""
        if not self.metrics_file.exists():
            return
        keep = [r for r in self.metrics() if int(r.get("iteration", 0)) <= iteration]
        tmp = self.metrics_file.with_name(f".{METRICS_FILE}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.metrics_file)
