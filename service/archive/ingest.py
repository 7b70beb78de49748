"""Folder import: ``synthpacs ingest PATH...`` walks folders and stores every DICOM file it finds.

Each file goes through exactly the path a C-STORE takes (:meth:`Store.put_bytes`: validation,
de-identification, durable write, index), so an imported instance is indistinguishable from a received
one except for its source (``import``). Files that are not DICOM Part 10 files (PS3.10 §7.1: 128-byte
preamble and "DICM") are skipped with a reason; DICOM files the store refuses, or that cannot be read or
decoded at all, are counted as refused by reason, and the import goes on with the next file whatever one
file holds. The command's exit status is 0 when nothing was refused (skipped files are not failures: a
folder may hold reports and DICOMDIRs), 1 when at least one DICOM file could not be imported. Nothing here
logs a path or a value from a file, only counts and reasons.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from service.archive.store import Store, StoreError
from service.logs import get_logger, where

log = get_logger("ingest")

# Media Storage Directory Storage (PS3.4 Annex F): a DICOMDIR indexes files, it is not an instance.
_DICOMDIR_CLASS = b"1.2.840.10008.1.3.10"
_PREFIX_LENGTH = 132


@dataclass
class ImportSummary:
    """What an import did; ``skipped`` and ``refused`` count files by reason."""

    files: int = 0
    imported: int = 0
    duplicates: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    # One message per refusal reason, to say why in words (messages never quote values).
    refused_examples: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.imported + self.duplicates + sum(self.skipped.values()) + sum(self.refused.values())

    def as_dict(self) -> dict:
        return {
            "files": self.files, "imported": self.imported, "duplicates": self.duplicates,
            "skipped": dict(self.skipped), "refused": dict(self.refused), "refused_examples": dict(self.refused_examples),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    bytes: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


def find_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every regular file under ``paths`` (files or folders, recursively), each once, in a stable order."""
    seen: set[Path] = set()
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        candidates: Iterator[Path]
        if path.is_dir():
            candidates = (Path(root) / name for root, dirs, names in sorted(os.walk(path)) for name in sorted(names))
        else:
            candidates = iter([path])
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved in seen or not resolved.is_file():
                continue
            seen.add(resolved)
            out.append(candidate)
    return out


def classify(head: bytes) -> str:
    """Why a file is not an instance to import ("" when it looks like one), from its first bytes."""
    if len(head) < _PREFIX_LENGTH or head[128:132] != b"DICM":
        return "not a DICOM file (no DICM prefix after the 128-byte preamble, PS3.10 §7.1)"
    return ""


def import_paths(
    store: Store,
    paths: Iterable[str | os.PathLike[str]],
    workers: int = 2,
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 1.0,
) -> ImportSummary:
    """Import every DICOM file under ``paths`` into ``store``; returns what happened to each file.

    ``workers`` threads share the store: writing and fsyncing one file overlaps parsing the next.
    ``progress`` is called at most every ``progress_interval`` seconds and once at the end.
    """
    files = find_files(paths)
    summary = ImportSummary(files=len(files))
    lock = threading.Lock()
    started = time.monotonic()
    last_report = [0.0]

    def one(path: Path) -> None:
        outcome, reason, size, message = _import_one(store, path)
        with lock:
            if outcome == "imported":
                summary.imported += 1
                summary.bytes += size
            elif outcome == "duplicate":
                summary.duplicates += 1
            elif outcome == "skipped":
                summary.skipped[reason] += 1
            else:
                summary.refused[reason] += 1
                summary.refused_examples.setdefault(reason, message)
            now = time.monotonic()
            if progress is not None and now - last_report[0] >= progress_interval:
                last_report[0] = now
                progress(Progress(summary.done, summary.files, summary.bytes, now - started))

    log.info("import_started", files=len(files), workers=workers)
    if workers <= 1:
        for path in files:
            one(path)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            for _ in pool.map(one, files):
                pass
    summary.seconds = time.monotonic() - started
    if progress is not None:
        progress(Progress(summary.done, summary.files, summary.bytes, summary.seconds))
    log.info(
        "import_finished", files=len(files), imported=summary.imported, duplicates=summary.duplicates,
        skipped=dict(summary.skipped), refused=dict(summary.refused), seconds=round(summary.seconds, 3),
    )
    return summary


def _import_one(store: Store, path: Path) -> tuple[str, str, int, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "refused", "unreadable", 0, f"the file cannot be read ({exc.strerror or type(exc).__name__})"
    reason = classify(data[:_PREFIX_LENGTH])
    if reason:
        return "skipped", reason, 0, ""
    if _DICOMDIR_CLASS in data[_PREFIX_LENGTH:1024]:
        return "skipped", "a DICOMDIR (media directory, PS3.10 §8), not an instance", 0, ""
    try:
        result = store.put_bytes(data, source="import")
    except StoreError as exc:
        return "refused", exc.reason, 0, str(exc)
    except Exception as exc:  # an error no check foresaw: this file is refused, the import goes on
        reason, message = _diagnose(path)
        log.warning("import_file_failed", reason=reason, error=type(exc).__name__, where=where(exc))
        return "refused", reason, 0, message or f"the file cannot be decoded ({type(exc).__name__})"
    if result.duplicate:
        return "duplicate", result.outcome, 0, ""
    return "imported", "", result.record.size, ""


def _diagnose(path: Path) -> tuple[str, str]:
    """Why a Part 10 file failed to decode, where its File Meta Information says (PS3.10 §7.1)."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import UID

    try:
        meta = read_file_meta_info(path)
    except Exception:
        return "undecodable", "the File Meta Information (group 0002) cannot be decoded"
    tsyntax = meta.get("TransferSyntaxUID")
    if tsyntax is None:
        return "no_transfer_syntax", "the File Meta Information has no Transfer Syntax UID (0002,0010)"
    if not UID(str(tsyntax)).is_transfer_syntax:
        return "unknown_transfer_syntax", "the Transfer Syntax UID (0002,0010) is not a transfer syntax (PS3.5 §10)"
    return "undecodable", ""
