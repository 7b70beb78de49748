"""``dataset build``: instances of the training store to a new, immutable dataset version.

Candidates come from the store's index (:meth:`Index.instances`) in one read snapshot, in SOP Instance
UID order; the version's rows are then ordered by content (pixel sha256, then labels and preprocessing:
``DatasetWriter.commit(order_by_content=True)``), and the content hash leaves out the UIDs and the
stored files' sha256. De-identification remaps UIDs per store, so a UID order or a hash over UIDs would
differ between two homes that imported the same images; the content order and hash do not. Synthetic instances and instances excluded from training (burned-in annotation, or
another reason recorded on ingest) are never candidates. Each candidate's file is checked against the
sha256 recorded when it was stored, decoded and normalized by :mod:`service.data.pixels` in a pool of
processes (one per core by default); results come back in order and are streamed into the version's
memory-mapped ``images.npy``, so memory stays bounded by the handful of images in flight, whatever the
store's size. Instances that give no image are skipped with their reason, and the build carries on;
``build_report.json`` (summary) and ``build_report.jsonl`` (one line per skipped instance) go into the
version with ``contact_sheet.png``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from models.datasets import DatasetVersion, DatasetWriter, validate_name
from service.archive.index import Index, InstanceRecord, open_index
from service.config import Config
from service.data.findings import read_findings
from service.data.pixels import REASONS, PixelOptions
from service.data.progress import Progress
from service.data.sheet import SHEET_TILES, contact_sheet_png, sheet_indices, sheet_tile
from service.data.worker import run_task, worker_init
from service.home import Home
from service.logs import get_logger, uid_hash

log = get_logger("dataset")

REPORT_FILE = "build_report.json"
REPORT_LINES_FILE = "build_report.jsonl"
SHEET_FILE = "contact_sheet.png"
# Records per task sent to a worker, and tasks in flight per worker: enough to keep every core busy
# while a slow image (a 6 MB JPEG 2000) is decoded, few enough that memory stays small.
CHUNK = 8
IN_FLIGHT_PER_WORKER = 4


class BuildError(Exception):
    """A build that produced no version; the message says why and what the store holds."""


@dataclass(frozen=True)
class Filters:
    """Which stored instances a build takes (empty tuple: any). Values compare case-insensitively."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    min_size: int = 0

    def clauses(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (("se.modality", self.modalities), ("se.body_part_examined", self.body_parts), ("i.view_position", self.views)):
            if values:
                where.append(f"UPPER(COALESCE({column}, '')) IN ({', '.join('?' for _ in values)})")
                params += [v.upper() for v in values]
        return where, params

    def as_dict(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities), "body_parts": list(self.body_parts), "views": list(self.views), "min_size": self.min_size}


@dataclass
class BuildResult:
    version: DatasetVersion
    candidates: int
    skipped: dict[str, int]
    excluded: dict[str, int]
    seconds: float
    workers: int

    @property
    def images_per_second(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Task:
    records: list[tuple[int, str, str]]  # (position, relative path, sha256)
    meta: list[InstanceRecord] = field(default_factory=list)


def options_from_config(cfg: Config, **overrides: Any) -> PixelOptions:
    d = cfg.dataset
    values: dict[str, Any] = {
        "resolution": d.resolution,
        "fit": d.fit,
        "dtype": d.dtype,
        "window": d.window,
        "percentiles": tuple(d.fallback_window_percentiles),
        "multiframe": d.multiframe,
        "resample": d.resample,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PixelOptions(**values)


def worker_count(cfg: Config, workers: int | None = None) -> int:
    n = workers if workers is not None else cfg.dataset.workers
    if n and n > 0:
        return int(n)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _start_method() -> str:
    """fork when this process runs a single Python thread: fast, and callers need no ``__main__`` guard.

    spawn otherwise, because a fork copies whatever lock another thread holds at that instant (logging,
    an SQLite connection in use). Native pools that numpy's BLAS starts at import are fork-safe
    (pthread_atfork); the workers use only pydicom, numpy and Pillow, never torch or gRPC.
    """
    import threading

    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _option_kwargs(opts: PixelOptions) -> dict[str, Any]:
    return {
        "resolution": opts.resolution, "fit": opts.fit, "dtype": opts.dtype, "window": opts.window,
        "percentiles": tuple(opts.percentiles), "multiframe": opts.multiframe, "min_size": opts.min_size,
        "resample": opts.resample,
    }


def _results(tasks: Iterator[_Task], store_root: Path, opts: PixelOptions, workers: int) -> Iterator[tuple[InstanceRecord, np.ndarray | None, dict[str, Any]]]:
    """(record, image, info) in candidate order, computed in ``workers`` processes with bounded lookahead."""
    options = _option_kwargs(opts)
    if workers <= 1:
        for task in tasks:
            for (pos, image, info), rec in zip(run_task(str(store_root), options, task.records), task.meta):
                yield rec, image, info
        return
    ctx = multiprocessing.get_context(_start_method())
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init) as pool:
        pending: collections.deque[tuple[cf.Future, _Task]] = collections.deque()
        limit = workers * IN_FLIGHT_PER_WORKER
        source = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                        break
                    pending.append((pool.submit(run_task, str(store_root), options, task.records), task))
                if not pending:
                    return
                future, task = pending.popleft()
                try:
                    results = future.result()
                except cf.process.BrokenProcessPool as exc:
                    raise BuildError(
                        f"a worker process stopped unexpectedly ({exc}); if a decoder crashed on one instance, "
                        "run the build with --workers 1 to find it"
                    ) from None
                for (pos, image, info), rec in zip(results, task.meta):
                    yield rec, image, info
        finally:
            for future, _ in pending:
                future.cancel()


# -- the build ------------------------------------------------------------------------------------------


def _manifest_row(rec: InstanceRecord, info: dict[str, Any], finding: str = "") -> dict[str, Any]:
    """What a researcher needs to trace an image back and to know how it was made; no patient data.

    ``finding`` (recorded beside the store, :mod:`service.data.findings`) is added only when there is
    one, so the manifests of stores without findings stay as they were.
    """
    row = {
        "sop_instance_uid": rec.sop_instance_uid,
        "series_uid": rec.series_uid,
        "study_uid": rec.study_uid,
        "sha256": rec.sha256,
        "sop_class_uid": rec.sop_class_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "modality": rec.modality,
        "body_part": rec.body_part_examined,
        "view": rec.view_position,
        "laterality": rec.image_laterality or rec.laterality,
        "source": rec.source,
        "preprocessing": info,
    }
    if finding:
        row["finding"] = finding
    return row


def _label(value: str) -> str:
    return value.strip().upper() or "(none)"


class _Snapshot:
    """One read transaction over the index: the count and the rows agree even while the SCP writes."""

    def __init__(self, index: Index):
        self.conn = index.reader
        self.index = index

    def __enter__(self) -> "_Snapshot":
        self.conn.execute("BEGIN")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("COMMIT")

    def count(self, where: list[str], params: list[Any]) -> int:
        sql = "SELECT COUNT(*) FROM instances i JOIN series se ON se.series_uid = i.series_uid"
        return int(self.conn.execute(sql + (" WHERE " + " AND ".join(where) if where else ""), params).fetchone()[0])

    def grouped(self, column: str, where: list[str], params: list[Any]) -> dict[str, int]:
        sql = (
            f"SELECT COALESCE({column}, ''), COUNT(*) FROM instances i JOIN series se ON se.series_uid = i.series_uid"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" GROUP BY COALESCE({column}, '') ORDER BY COUNT(*) DESC"
        )
        return {str(k): int(v) for k, v in self.conn.execute(sql, params).fetchall()}


def _size_clause(min_size: int) -> tuple[list[str], list[Any]]:
    if not min_size:
        return [], []
    # Unknown sizes stay candidates: the pipeline checks the decoded image too.
    return ["(i.rows IS NULL OR i.columns IS NULL OR MIN(i.rows, i.columns) >= ?)"], [int(min_size)]


def build_dataset(
    cfg: Config,
    name: str,
    options: PixelOptions | None = None,
    filters: Filters | None = None,
    workers: int | None = None,
    progress: bool = True,
    index: Index | None = None,
) -> BuildResult:
    """Build the next version of dataset ``name`` from the store; raise :class:`BuildError` if none results."""
    validate_name(name)
    options = options or options_from_config(cfg)
    filters = filters or Filters(modalities=tuple(cfg.dataset.modalities))
    if filters.min_size and options.min_size != filters.min_size:
        options = PixelOptions(**{**_option_kwargs(options), "min_size": filters.min_size})
    home = Home.at(cfg.home_path)
    own_index = index is None
    index = index or open_index(cfg, home)
    n_workers = worker_count(cfg, workers)
    started = time.monotonic()
    try:
        match, params = filters.clauses()
        trainable = ["i.synthetic = 0", "i.excluded_from_training = 0"]
        size_where, size_params = _size_clause(filters.min_size)
        with _Snapshot(index) as snap:
            total = snap.count(trainable + match + size_where, params + size_params)
            excluded: dict[str, int] = {}
            synthetic = snap.count(["i.synthetic = 1"] + match, params)
            if synthetic:
                excluded["synthetic"] = synthetic
            for reason, n in snap.grouped("i.exclusion_reason", ["i.synthetic = 0", "i.excluded_from_training = 1"] + match, params).items():
                excluded[f"excluded_from_training: {reason or 'unspecified'}"] = n
            if size_where:
                small = snap.count(trainable + match, params) - total
                if small:
                    excluded[f"smaller than {filters.min_size} px"] = small
            if total == 0:
                raise BuildError(_nothing_matches(snap, filters, excluded))
            log.info("dataset_build_started", dataset=name, candidates=total, workers=n_workers, resolution=options.resolution)
            where = " AND ".join(trainable + match + size_where)
            records = index.instances(where, tuple(params + size_params), order="i.sop_instance_uid")
            version = _write(cfg, home, name, options, filters, records, total, excluded, n_workers, progress, started)
    finally:
        if own_index:
            index.close()
    seconds = time.monotonic() - started
    skipped = version.info.get("skipped_by_reason", {})
    result = BuildResult(version, total, dict(skipped), excluded, seconds, n_workers)
    log.info(
        "dataset_built", dataset=version.ref, images=version.count, skipped=version.info["skipped"],
        seconds=round(seconds, 2), images_per_second=round(result.images_per_second, 1), content_hash=version.content_hash,
    )
    return result


def _tasks(records: Iterator[InstanceRecord]) -> Iterator[_Task]:
    task = _Task([])
    for pos, rec in enumerate(records):
        task.records.append((pos, rec.path, rec.sha256))
        task.meta.append(rec)
        if len(task.records) >= CHUNK:
            yield task
            task = _Task([])
    if task.records:
        yield task


def _write(cfg: Config, home: Home, name: str, opts: PixelOptions, filters: Filters, records: Iterator[InstanceRecord],
           total: int, excluded: dict[str, int], workers: int, progress: bool, started: float) -> DatasetVersion:
    counts: dict[str, collections.Counter] = {"body_part": collections.Counter(), "modality": collections.Counter(), "view": collections.Counter()}
    skipped: collections.Counter = collections.Counter()
    report_lines: list[str] = []
    bar = Progress(total, f"dataset build {name}", enabled=progress)
    # The contact sheet's thumbnails are made as their images arrive, while the workers are busy, for
    # the indices the sheet takes when no candidate is skipped; the end of the build only assembles them.
    wanted = set(sheet_indices(total, SHEET_TILES))
    tiles: dict[int, Any] = {}
    findings = read_findings(home.store_dir)
    counts["finding"] = collections.Counter()
    with DatasetWriter(home.datasets_dir, name, opts.resolution, total, opts.dtype) as writer:
        for rec, image, info in _results(_tasks(records), home.store_dir, opts, workers):
            if image is None:
                skipped[info["reason"]] += 1
                report_lines.append(json.dumps({"sop_instance_uid": rec.sop_instance_uid, "path": rec.path, **info}, sort_keys=True))
                log.info("dataset_image_skipped", dataset=name, sop=uid_hash(rec.sop_instance_uid), reason=info["reason"])
            else:
                finding = findings.get(rec.sop_instance_uid, "")
                index = writer.append(image, _manifest_row(rec, info, finding))
                if finding:
                    counts["finding"][finding] += 1
                if index in wanted:
                    tiles[index] = sheet_tile(image)
                counts["body_part"][_label(rec.body_part_examined)] += 1
                counts["modality"][_label(rec.modality)] += 1
                counts["view"][_label(rec.view_position)] += 1
            bar.update(1, extra=f"{sum(skipped.values())} skipped" if skipped else None)
        bar.close()
        if writer.count == 0:
            reasons = ", ".join(f"{n} {r} ({REASONS.get(r, r)})" for r, n in skipped.most_common())
            raise BuildError(f"none of the {total} candidate instances gave an image: {reasons}; no version was written")
        seconds = time.monotonic() - started
        parameters = {**opts.as_dict(), "workers": workers}
        report = {
            "dataset": name,
            "candidates": total,
            "images": writer.count,
            "skipped": dict(skipped.most_common()),
            "excluded_before_build": excluded,
            "reasons": {r: REASONS.get(r, r) for r in skipped},
            "seconds": round(seconds, 3),
            "images_per_second": round(total / seconds, 2) if seconds > 0 else None,
            "workers": workers,
        }
        sheet = contact_sheet_png(writer.written(), SHEET_TILES, made=tiles)
        version = writer.commit(
            parameters=parameters,
            filters=filters.as_dict(),
            counts={k: dict(v.most_common()) for k, v in counts.items() if v or k != "finding"},
            skipped=sum(skipped.values()),
            extra_files={
                REPORT_FILE: json.dumps(report, indent=2) + "\n",
                REPORT_LINES_FILE: "".join(line + "\n" for line in report_lines),
                SHEET_FILE: sheet,
            },
            extra_info={"skipped_by_reason": dict(skipped.most_common()), "excluded": excluded},
            order_by_content=True,
        )
    return version


def _nothing_matches(snap: _Snapshot, filters: Filters, excluded: dict[str, int]) -> str:
    stored = snap.count([], [])
    if stored == 0:
        return "the store is empty: send studies to the SCP (C-STORE) or run `synthpacs dataset import-images DIR`"
    trainable = ["i.synthetic = 0", "i.excluded_from_training = 0"]
    modalities = snap.grouped("se.modality", trainable, [])
    parts = snap.grouped("se.body_part_examined", trainable, [])
    views = snap.grouped("i.view_position", trainable, [])

    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k or '(none)'} {v}" for k, v in d.items()) or "none"

    asked = {k: v for k, v in filters.as_dict().items() if v}
    text = f"no trainable instance matches {json.dumps(asked)}; the store's trainable instances by modality: {fmt(modalities)}; by body part: {fmt(parts)}; by view: {fmt(views)}"
    if excluded:
        text += "; left out: " + ", ".join(f"{k} {v}" for k, v in excluded.items())
    return text
