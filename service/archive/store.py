"""The durable training store: every path into it (C-STORE, folder import, synthetic instances) ends here.

An instance is validated, de-identified (when it is a received instance and de-identification is on),
encoded in the transfer syntax it arrived in (pixel data untouched, no transcoding), written to a
temporary file on the store's filesystem, fsynced, renamed into a path built from validated UIDs, the
folder fsynced, and indexed. Only then does :meth:`Store.put` return; a C-STORE success is sent after
it (PS3.4 B.2.3: success means the SCP has stored the instance). Anything that goes wrong raises
:class:`StoreError` carrying the DICOM status to answer, and leaves no file and no row.

Speed without giving up durability (measurements in bench/RESULTS.md):

* only the header is parsed and re-encoded; the pixel data element is copied from the received bytes
  (:mod:`service.archive.encoded`), and the file is written with one ``writev``;
* the files are the record: each is fsynced with its folder before the success status, but the index
  commits with SQLite ``synchronous=NORMAL`` in WAL mode (no fsync per commit; a process crash loses
  nothing, a power loss can lose the last commits). :meth:`Store.checkpoint` makes the index durable
  and records up to when in ``store/.durable``; every start indexes any file newer than that mark that
  the index lacks (:meth:`Store.recover`), so an acknowledged instance is never lost from the index;
* instances answered together (a STOW-RS request, PS3.18 10.5) are stored as one batch
  (:meth:`Store.put_batch`): each is checked and gets its own outcome exactly as alone, and each file is
  fsynced before its rename, but the folder fsyncs and the index transaction are shared, and the writes
  run while the next instance is prepared. A C-STORE, answered per instance, is never batched.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from models.fileio import fsync_path, sha256_file
from service import metrics
from service.archive import status
from service.config import Config
from service.archive.encoded import (
    DATASET_TRAILING_PADDING,
    PIXEL_TAGS,
    EncodedInstance,
    INFLATED_LIMIT,
    EncodingError,
    TooLarge,
    encode_dataset,
    file_meta_bytes,
    parse_dataset,
    parse_file,
)
from service.archive.index import DATABASE_ERRORS, INTEGRITY_ERRORS, Index, InstanceRecord, open_index
from service.archive.uids import InvalidUID, validate_uid
from service.archive.watermark import Watermark
from service.home import Home
from service.logs import get_logger, uid_hash

log = get_logger("store")

# Our implementation's identity in File Meta Information (PS3.7 D.3.3.2); a fixed UUID-derived UID.
IMPLEMENTATION_CLASS_UID = "2.25.160436549375284718591049270658337305781"
IMPLEMENTATION_VERSION_NAME = "SYNTHPACS"

# A de-identifier takes a received dataset and returns the dataset to store, with a reason to exclude
# it from training (or "").
Deidentifier = Callable[[Dataset], tuple[Dataset, str]]

# How often the index is made durable and the mark in store/.durable moved forward (seconds).
CHECKPOINT_INTERVAL_S = 30.0
# Slack between a file's mtime (the kernel's coarse clock) and our clock when deciding what to recover.
_RECOVERY_SLACK_S = 5.0
DURABLE_MARK = ".durable"
# Instances at least this large are hashed on another thread while they are written.
PARALLEL_HASH_MIN_BYTES = 256 * 1024
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-sha256")
# fsyncs of streamed files, waited for by the association that wrote them (one each at a time).
SYNCERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-fsync")
# Writes of the instances of a batch (put_batch): hash, write and fsync, while the batch prepares the next.
WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-write")


@dataclass
class Prepared:
    """An instance ready to be written: validated, de-identified, encoded as ``parts``."""

    encoded: EncodedInstance
    dataset: Dataset
    exclusion: str
    parts: list


class StoreError(Exception):
    """An instance that was not stored. ``status`` is the DICOM status to answer (PS3.4 Annex B.2.3)."""

    def __init__(self, status_code: int, reason: str, message: str):
        super().__init__(message)
        self.status = status_code
        self.reason = reason  # short machine-readable reason, used as a metrics label


@dataclass(frozen=True)
class PutResult:
    record: InstanceRecord
    # "stored": new; "identical": the same bytes were already stored; "kept": a different instance with
    # this SOP Instance UID was already stored and was kept; "replaced": it was replaced.
    outcome: str

    @property
    def duplicate(self) -> bool:
        return self.outcome != "stored"


_TAGS: dict[str, int] = {}
# Not PN: pydicom's PersonName drops empty trailing component groups ("DOE^JOHN=" reads "DOE^JOHN").
_RAW_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})


# Integer attributes that the index keeps (InstanceRecord): each must fit its VR's range.
_INDEXED_INTEGERS = ("SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns", "BitsStored")
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = tag_for_keyword(keyword)
    return tag


def _raw(ds: Dataset, tag: int) -> RawDataElement | None:
    """The present element ``tag`` still as read (pydicom converts values lazily, and slowly), else None."""
    elem = ds.get_item(tag)
    return elem if isinstance(elem, RawDataElement) else None


def _text(ds: Dataset, keyword: str) -> str:
    tag = _tag(keyword)
    if tag not in ds:
        return ""
    elem = _raw(ds, tag)
    if elem is not None and (elem.VR or dictionary_VR(tag)) in _RAW_TEXT_VRS:
        raw = elem.value or b""
        # The common case, read without pydicom's conversion. ESC starts an ISO 2022 code extension
        # (PS3.5 §6.1.2.5.3): such values and other charsets go through pydicom below.
        if raw.isascii() and b"\x1b" not in raw:
            return raw.decode("ascii").strip(" \x00")
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _uid(ds: Dataset, keyword: str) -> str | None:
    """A UI value as pydicom reads it (trailing NULs and spaces removed), or None when absent."""
    tag = _tag(keyword)
    if tag not in ds:
        return None
    elem = _raw(ds, tag)
    if elem is not None and isinstance(elem.value, bytes) and elem.value.isascii():
        return elem.value.decode("ascii").rstrip("\x00 ")
    value = ds[tag].value
    return None if value is None else str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    tag = _tag(keyword)
    if tag not in ds:
        return None
    elem = _raw(ds, tag)
    if elem is not None and isinstance(elem.value, bytes):
        raw, vr = elem.value, elem.VR or dictionary_VR(tag)
        if vr == "US" and len(raw) == 2:
            return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
        if vr == "IS" and raw.isascii():
            text = raw.decode("ascii").strip(" \x00")
            if not text:
                return None
            if text.lstrip("+-").isdigit():
                return int(text)
    value = ds.get(keyword)  # anything else as pydicom converts it
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class Store:
    """One folder of DICOM files plus its index. Thread-safe; one per process."""

    def __init__(self, cfg: Config, home: Home | None = None, index: Index | None = None, deidentifier: Deidentifier | None = None):
        self.cfg = cfg
        self.home = home or Home.at(cfg.home_path)
        self.root = self.home.store_dir
        self.tmp = self.home.tmp_dir
        if cfg.store.index_url.strip():
            # A PostgreSQL index lets several hosts share this folder: each keeps its temporary files in a
            # folder of its own (same filesystem, so rename stays atomic), since a pid means nothing to
            # another host and _clean_tmp must never take a file another host is writing.
            self.tmp = self.tmp / _host_folder_name()
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.index = index or open_index(cfg, self.home)
        if deidentifier is None and cfg.deid.enabled:
            from service.archive.deid import Deidentifier as _Deid

            deidentifier = _Deid.from_config(cfg, self.home)
        self.deidentifier = deidentifier
        # Serializes the check-then-write of one SOP Instance UID (re-sends racing each other).
        self._uid_locks: dict[str, list] = {}
        self._uid_locks_guard = threading.Lock()
        # Start times of puts in flight, for the durable mark (see checkpoint()).
        self._inflight: dict[object, float] = {}
        self._inflight_guard = threading.Lock()
        self._last_checkpoint = time.monotonic()
        self._checkpoint_lock = threading.Lock()
        self.watermark = Watermark.from_config(cfg, self.tmp)
        self._clean_tmp()
        recovered = self.recover()
        if recovered:
            log.warning("index_recovered", instances=recovered)

    # -- the ways in ---------------------------------------------------------------------------------

    def put_bytes(self, data: bytes | memoryview, source: str, source_ae: str = "", transfer_syntax: str | None = None,
                  expected: tuple[str, str] | None = None) -> PutResult:
        """Store an encoded instance: a Part 10 file, or a bare dataset in ``transfer_syntax`` (C-STORE).

        ``expected``: the (SOP Class UID, SOP Instance UID) a C-STORE request announced for it."""
        started = time.perf_counter()
        try:
            enc = self._parse(data, transfer_syntax)
        except StoreError as exc:
            raise self._refused(exc, source) from None
        enc.expected = expected
        return self._guarded(enc, source, source_ae, False, started)

    def _parse(self, data: bytes | memoryview, transfer_syntax: str | None = None) -> EncodedInstance:
        try:
            if transfer_syntax:
                return parse_dataset(data, transfer_syntax, min(self.cfg.dicom.max_dataset_bytes, INFLATED_LIMIT))
            return parse_file(data, min(self.cfg.dicom.max_dataset_bytes, INFLATED_LIMIT))
        except TooLarge as exc:
            raise StoreError(status.OUT_OF_RESOURCES, "too_large", str(exc)) from None
        except EncodingError as exc:
            raise StoreError(status.CANNOT_UNDERSTAND, "malformed", str(exc)) from None

    def put_batch(self, files: Sequence[bytes | memoryview], source: str, source_ae: str = "") -> list["PutResult | StoreError"]:
        """Store several Part 10 files that are answered together (STOW-RS, PS3.18 10.5): one outcome each.

        Every file goes through what :meth:`put_bytes` does (parsing, validation, de-identification, the
        duplicate policy, encoding, a durable write and the index) and each outcome is its own: a
        :class:`PutResult`, or the :class:`StoreError` that says why it was not stored (it leaves no file
        and no row, and the others are stored all the same). What the batch shares is the waiting: each
        file's fsync starts as soon as it is written, while the next is prepared; then the files are
        renamed into place, each folder is fsynced once for all of them, and the rows are added in one
        transaction. When this returns, every instance answered as stored is fsynced with its folder and
        indexed, as after put_bytes. Files that share a SOP Instance UID (as stored) are stored one after
        the other in the order given, so the duplicate policy sees them as sent.
        """
        started = time.perf_counter()
        results: list = [None] * len(files)
        key = ("batch", threading.get_ident())
        self.begin_inflight(key)
        written: list[_Staged] = []
        try:
            for number, data in enumerate(files):
                try:
                    prep = self.prepare(self._parse(data), False)
                except StoreError as exc:
                    results[number] = exc
                    continue
                written.append(self._write_staged(number, prep))
            # Round n holds the n-th file of each SOP Instance UID: one UID appears once per round.
            rounds: list[list[_Staged]] = []
            seen: dict[str, int] = {}
            for item in written:
                n = seen.get(item.sop, 0)
                seen[item.sop] = n + 1
                if n == len(rounds):
                    rounds.append([])
                rounds[n].append(item)
            for entries in rounds:
                self._commit_batch(entries, source, source_ae, results)
        finally:
            for item in written:
                _settle(item)
            self.end_inflight(key)
        for number, result in enumerate(results):
            if isinstance(result, StoreError):
                self._refused(result.with_traceback(None), source)
            else:
                self._count(result, started, source)
        self._checkpoint_if_due()
        return results

    def put(self, ds: Dataset, source: str, source_ae: str = "", synthetic: bool = False) -> PutResult:
        """Validate, de-identify (unless synthetic), write durably and index a dataset held in memory.

        ``ds`` needs File Meta Information with its Transfer Syntax UID; it is not modified.
        """
        started = time.perf_counter()
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if not tsyntax:
            raise self._refused(StoreError(status.CANNOT_UNDERSTAND, "no_transfer_syntax", "the dataset has no transfer syntax"), source)
        if self.deidentifier is not None and not synthetic:
            ds = copy.deepcopy(ds)
        else:
            ds = copy.copy(ds)  # our File Meta Information replaces the caller's on a shallow copy
        enc = EncodedInstance(ds, UID(str(tsyntax)), complete=True)
        enc.pixel_length = len(ds.PixelData) if "PixelData" in ds and ds.PixelData is not None and not enc.transfer_syntax.is_encapsulated else None
        return self._guarded(enc, source, source_ae, synthetic, started)

    def _guarded(self, enc: EncodedInstance, source: str, source_ae: str, synthetic: bool, started: float) -> PutResult:
        key = ("put", threading.get_ident())
        self.begin_inflight(key)
        try:
            return self._measured(lambda: self._put(enc, source, source_ae, synthetic), source, started)
        finally:
            self.end_inflight(key)

    def commit_streamed(self, prep: "Prepared", source: str, source_ae: str, written: Path, digest: str, size: int, started: float,
                        durable: Future | None = None) -> PutResult:
        """Finish an instance whose bytes a stream already wrote to ``written`` and fsynced (or is
        fsyncing: ``durable``)."""
        return self._measured(lambda: self._commit(prep, source, source_ae, False, written, digest, size, durable), source, started)

    def begin_inflight(self, key: object) -> None:
        """A put started: files it writes from now on are newer than any durable mark taken meanwhile."""
        with self._inflight_guard:
            self._inflight[key] = time.time()

    def end_inflight(self, key: object) -> None:
        with self._inflight_guard:
            self._inflight.pop(key, None)

    def _measured(self, fn: Callable[[], PutResult], source: str, started: float) -> PutResult:
        try:
            result = fn()
        except StoreError as exc:
            raise self._refused(exc, source) from None
        self._count(result, started, source)
        self._checkpoint_if_due()
        return result

    @staticmethod
    def _count(result: PutResult, started: float, source: str) -> None:
        metrics.STORE_LATENCY.observe(time.perf_counter() - started)
        if result.outcome in ("stored", "replaced"):
            metrics.INSTANCES_RECEIVED.labels(source=source).inc()
            metrics.BYTES_RECEIVED.inc(result.record.size)
        else:
            metrics.DUPLICATES.labels(outcome=result.outcome).inc()

    def _checkpoint_if_due(self) -> None:
        if time.monotonic() - self._last_checkpoint > CHECKPOINT_INTERVAL_S:
            try:
                self.checkpoint()
            except (OSError, *DATABASE_ERRORS) as exc:
                # The instance is durable and indexed already: a checkpoint that fails (a full disk) is
                # retried at the next put and must not turn this success into a failure status.
                log.warning("checkpoint_failed", error=type(exc).__name__)

    @staticmethod
    def _refused(exc: StoreError, source: str) -> StoreError:
        metrics.STORE_FAILURES.labels(reason=exc.reason).inc()
        log.warning("instance_refused", reason=exc.reason, status=f"0x{exc.status:04X}", detail=str(exc), source=source)
        return exc

    def _put(self, enc: EncodedInstance, source: str, source_ae: str, synthetic: bool) -> PutResult:
        return self._commit(self.prepare(enc, synthetic), source, source_ae, synthetic)

    def prepare(self, enc: EncodedInstance, synthetic: bool, pixels_later: bool = False) -> "Prepared":
        """Validate, de-identify and encode: everything before the first byte is written.

        ``pixels_later``: ``enc`` is a header whose pixel data is still arriving (the receive fast path,
        :mod:`service.dicom.fastpath.streaming`); the caller checks it with :meth:`validate_pixels` once it
        is complete, writes the file itself and hands the result to the store's commit. Public so a writer
        outside the store (the streaming receive, a DICOMweb STOW-RS later) runs exactly the store's checks.
        """
        low = self.watermark.room()
        if low is not None and self.index.get(_uid(enc.dataset, "SOPInstanceUID") or "") is None and (
            self.deidentifier is None or synthetic
        ):
            # Checked before anything is parsed further when the UID is final (no de-identification).
            raise self._low_disk(low)
        self._validate(enc, pixels_later)
        exclusion = ""
        keep_trailing = True
        if self.deidentifier is not None and not synthetic:
            if set(enc.trailing_tags) - {DATASET_TRAILING_PADDING}:
                # Something follows the pixel data: it must be de-identified too, so parse everything.
                enc = self._reparse_complete(enc)
            keep_trailing = False  # Data Set Trailing Padding is removed by the profile (E.1-1)
            try:
                ds, exclusion = self.deidentifier(enc.dataset)
            except Exception as exc:
                raise StoreError(status.CANNOT_UNDERSTAND, "deid_failed", f"de-identification failed ({type(exc).__name__})") from None
            enc.dataset = ds
            self._validate_uids(ds)  # remapped UIDs become paths too
        ds = enc.dataset
        if low is not None and not self._resend_needs_no_space(ds):
            raise self._low_disk(low)
        if not exclusion and not synthetic and _text(ds, "BurnedInAnnotation").upper() == "YES":
            exclusion = "burned-in annotation"
        return Prepared(enc, ds, exclusion, self._encode(enc, keep_trailing))

    @staticmethod
    def _low_disk(low) -> StoreError:
        return StoreError(status.OUT_OF_RESOURCES, "low_disk", f"store disk below its free-space watermark ({low.free_bytes // 2**20} MiB free)")

    def _resend_needs_no_space(self, ds: Dataset) -> bool:
        """Below the watermark, a re-send of an instance already stored is still answered as before (success
        for an identical copy, the duplicate policy otherwise): nothing new is written unless the policy
        replaces it. A PACS that retries after a lost response must not see 0xA700 for data we hold."""
        existing = self.index.get(_uid(ds, "SOPInstanceUID") or "")
        return (existing is not None and (self.root / existing.path).exists()
                and self.cfg.store.duplicate_policy != "replace")

    def _commit(
        self, prep: "Prepared", source: str, source_ae: str, synthetic: bool,
        written: Path | None = None, digest: str = "", size: int = 0, durable: Future | None = None,
    ) -> PutResult:
        """Deduplicate, make durable and index. ``written``: a temporary file already holding the
        instance's bytes (with its ``digest`` and ``size``), fsynced, or being fsynced by ``durable``
        (a future that raises OSError if the fsync failed); otherwise ``prep.parts`` are written."""
        try:
            return self._commit_unsafe(prep, source, source_ae, synthetic, written, digest, size, durable)
        finally:
            if durable is not None:
                _wait_quietly(durable)  # the file's descriptor is closed before anyone returns

    def _commit_unsafe(
        self, prep: "Prepared", source: str, source_ae: str, synthetic: bool,
        written: Path | None, digest: str, size: int, durable: Future | None,
    ) -> PutResult:
        ds, parts = prep.dataset, prep.parts
        if written is None:
            size = sum(len(p) for p in parts)
        study, series, sop = _uid(ds, "StudyInstanceUID") or "", _uid(ds, "SeriesInstanceUID") or "", _uid(ds, "SOPInstanceUID") or ""
        rel = Path(study) / series / f"{sop}.dcm"
        final = self.root / rel
        try:
            with self._uid_lock(sop):
                existing, replace, digest, answer = self._against_existing(sop, parts, digest, source)
                if answer is not None:
                    return answer
                if written is None:
                    # Hash on another core while this one writes and fsyncs (both release the GIL),
                    # so a 6 MB instance pays for the slower of the two, not their sum.
                    pending = _HASHERS.submit(_sha256_parts, parts) if not digest and size >= PARALLEL_HASH_MIN_BYTES else None
                    digest = digest or ("" if pending else _sha256_parts(parts))
                    try:
                        written = self._write_tmp(parts)
                    finally:
                        if pending is not None:
                            digest = pending.result()
                # Made while a streamed file's fsync runs (it releases the GIL), before it is needed.
                record = self._record(ds, prep.encoded.transfer_syntax, rel, size, digest, source, source_ae, synthetic, prep.exclusion)
                if durable is not None:
                    try:
                        durable.result()
                    except OSError as exc:
                        raise _write_failed(exc) from None
                # A new row is added while the folder's fsync runs: readers see the file before its row
                # either way, and a row that outlives a power loss without its file is healed by the
                # re-send (above). A replaced row waits for the fsync, so the old one stays until then.
                folder_synced = self._publish(written, final, overlap=not replace)
                written = None
                old_path = self.root / existing.path if existing is not None else None
                try:
                    self.index.add(record, replace=replace)
                    if folder_synced is not None:
                        self._wait_folder_synced(folder_synced, final, sop)
                except StoreError:
                    raise
                except INTEGRITY_ERRORS:
                    # Another process (a recovery scan, an import) indexed these very bytes meanwhile.
                    again = self.index.get(sop)
                    if again is not None and again.sha256 == digest:
                        if folder_synced is not None:
                            try:
                                folder_synced.result()  # our rename replaced its file: durable first
                            except OSError as exc:
                                raise _write_failed(exc) from None
                        return PutResult(again, "identical")
                    if old_path != final:
                        _unlink_quietly(final)
                    raise StoreError(status.OUT_OF_RESOURCES, "index_failed", "could not index the instance (conflicting row)") from None
                except Exception as exc:
                    # Not indexed means not stored: take the file away again so nothing half-exists.
                    if old_path != final:
                        _unlink_quietly(final)
                    raise StoreError(status.OUT_OF_RESOURCES, "index_failed", f"could not index the instance ({type(exc).__name__})") from None
                if old_path is not None and old_path != final:
                    _unlink_quietly(old_path)
        finally:
            if written is not None:  # written but not published: a duplicate, or a failure
                _unlink_quietly(written)
        outcome = "replaced" if replace else "stored"
        # Debug: one line per instance is the sender's log; ours counts per association (scp.py).
        log.debug(
            "instance_stored", sop=uid_hash(sop), study=uid_hash(study), size=size, outcome=outcome,
            source=source, synthetic=synthetic, excluded=bool(prep.exclusion),
        )
        return PutResult(record, outcome)

    def _against_existing(self, sop: str, parts: list, digest: str, source: str) -> tuple[InstanceRecord | None, bool, str, PutResult | None]:
        """The duplicate policy for an instance about to be written, under its UID lock.

        Returns (the row it replaces or None, whether it replaces one, its digest where it was needed, the
        answer when nothing is to be written: an identical or kept copy). Raises StoreError under reject.
        """
        existing = self.index.get(sop) if self.index.has(sop) else None
        replace = False
        if existing is not None and not (self.root / existing.path).exists():
            # A row whose file is gone (a power loss before the folder's fsync landed, or a file
            # removed by hand): this copy takes its place, whatever the duplicate policy says.
            log.warning("instance_file_missing", sop=uid_hash(sop), source=source)
            existing, replace = None, True
        if existing is not None:
            digest = digest or _sha256_parts(parts)
            if existing.sha256 == digest:
                log.debug("instance_duplicate", sop=uid_hash(sop), outcome="identical", source=source)
                return existing, False, digest, PutResult(existing, "identical")
            policy = self.cfg.store.duplicate_policy
            if policy == "keep":
                log.warning("instance_duplicate", sop=uid_hash(sop), outcome="kept", policy=policy, source=source)
                return existing, False, digest, PutResult(existing, "kept")
            if policy == "reject":
                raise StoreError(
                    status.DUPLICATE_SOP_INSTANCE,
                    "duplicate_rejected",
                    "a different instance with this SOP Instance UID is already stored (store.duplicate_policy = reject)",
                )
            replace = True
        return existing, replace, digest, None

    # -- batches (put_batch) -------------------------------------------------------------------------

    def _write_staged(self, number: int, prep: "Prepared") -> "_Staged":
        """Start writing a prepared instance of a batch to a temporary file on :data:`WRITERS`.

        The writer hashes, writes and fsyncs it (all without the GIL) while the batch prepares the next
        one. Only the commit decides, under the UID lock, whether the file is used: a duplicate's is removed
        (as a streamed C-STORE's is, :meth:`commit_streamed`)."""
        ds, parts = prep.dataset, prep.parts
        sop = _uid(ds, "SOPInstanceUID") or ""
        rel = Path(_uid(ds, "StudyInstanceUID") or "") / (_uid(ds, "SeriesInstanceUID") or "") / f"{sop}.dcm"
        return _Staged(number, prep, sop, rel, self.root / rel, sum(len(p) for p in parts), WRITERS.submit(self._write_hashed, parts))

    def _write_hashed(self, parts: list) -> tuple[Path, str]:
        """(the temporary file holding ``parts``, fsynced; their sha256)."""
        tmp = self._write_tmp(parts)
        try:
            return tmp, _sha256_parts(parts)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _commit_batch(self, entries: list["_Staged"], source: str, source_ae: str, results: list) -> None:
        """Deduplicate, make durable and index written instances with distinct SOP Instance UIDs.

        Their UID locks are held from the duplicate check to the index commit, as :meth:`_commit` holds
        one; taken in sorted order, so two batches never wait for each other in a circle.
        """
        staged: list[_Staged] = []
        published: list[_Staged] = []
        with contextlib.ExitStack() as locks:
            for sop in sorted({item.sop for item in entries}):
                locks.enter_context(self._uid_lock(sop))
            try:
                for item in entries:
                    item.taken = True
                    try:
                        item.tmp, item.digest = item.written.result()
                        item.existing, item.replace, _, answer = self._against_existing(item.sop, item.prep.parts, item.digest, source)
                    except StoreError as exc:
                        results[item.number] = exc
                        continue  # its temporary file (if any) is removed below
                    if answer is not None:
                        results[item.number] = answer
                    else:
                        staged.append(item)
                folders = self._rename_batch(staged, results, published)
                self._sync_and_index(published, folders, source, source_ae, results)
            except Exception as exc:
                # Not expected (the steps above turn every failure they know into a StoreError per
                # instance): whatever has no outcome yet was not stored, and leaves nothing behind.
                for item in published:
                    if results[item.number] is None and not item.existed:
                        _unlink_quietly(item.final)
                for item in entries:
                    if results[item.number] is None:
                        results[item.number] = StoreError(status.OUT_OF_RESOURCES, "store_failed",
                                                          f"the instance could not be stored ({type(exc).__name__})")
                log.warning("batch_failed", error=type(exc).__name__)
            finally:
                for item in entries:
                    _settle(item)

    def _rename_batch(self, staged: list["_Staged"], results: list, renamed: list["_Staged"]) -> list[Path]:
        """Each written file renamed into place; ``renamed``: the ones that made it. Returns the folders
        whose entries changed (a new file, a new folder)."""
        folders: dict[Path, None] = {}
        for item in staged:
            try:
                new_dirs = _makedirs(item.final.parent, self.root)
                item.existed = item.final.exists()
                os.replace(item.tmp, item.final)
            except OSError as exc:
                results[item.number] = _write_failed(exc)
                continue  # its temporary file is removed with the others'
            item.tmp = None
            renamed.append(item)
            folders.update(dict.fromkeys([item.final.parent, *new_dirs]))
        return list(folders)

    def _sync_and_index(self, published: list["_Staged"], folders: list[Path], source: str, source_ae: str, results: list) -> None:
        """Every folder fsynced once and every row added in one transaction, before anyone is answered.

        New rows are added while the folders' fsyncs run, as :meth:`_commit` adds one; a batch that
        replaces rows waits for the fsyncs first, so the old rows stay until the new files are durable.
        """
        for item in published:
            item.record = self._record(item.prep.dataset, item.prep.encoded.transfer_syntax, item.rel, item.size,
                                       item.digest, source, source_ae, False, item.prep.exclusion)
        if not published:
            return
        if not self.cfg.store.fsync:
            self._index_batch(published, results)
            return
        overlap = not any(item.replace for item in published)
        syncing = [SYNCERS.submit(fsync_path, folder) for folder in folders]
        if overlap:
            self._index_batch(published, results)
        failure = None
        for synced in syncing:
            try:
                synced.result()
            except OSError as exc:
                failure = failure or exc
        if failure is None:
            if not overlap:
                self._index_batch(published, results)
            return
        # A folder's entries are not known durable; the folders of one batch depend on each other (a
        # series folder made for one file holds the next), so none of its new files is stored.
        for item in published:
            result = results[item.number]
            if isinstance(result, PutResult) and result.outcome != "stored":
                pass  # another writer's row for these very bytes: its file stays
            else:
                if isinstance(result, PutResult):
                    self.index.delete(item.sop)
                if not item.existed:
                    _unlink_quietly(item.final)  # not durable, so not stored
            results[item.number] = _write_failed(failure)

    def _index_batch(self, published: list["_Staged"], results: list) -> None:
        try:
            self.index.add_many([(item.record, item.replace) for item in published])
        except Exception:
            # Nothing was added (one transaction). Row by row, each instance gets the answer it would alone:
            # a row another process added meanwhile, a conflict, a database that is gone.
            for item in published:
                self._index_one(item, results)
            return
        for item in published:
            self._indexed(item, results)

    def _index_one(self, item: "_Staged", results: list) -> None:
        old_path = self.root / item.existing.path if item.existing is not None else None
        try:
            self.index.add(item.record, replace=item.replace)
        except INTEGRITY_ERRORS:
            again = self.index.get(item.sop)
            if again is not None and again.sha256 == item.digest:
                results[item.number] = PutResult(again, "identical")
                return
            if old_path != item.final:
                _unlink_quietly(item.final)
            results[item.number] = StoreError(status.OUT_OF_RESOURCES, "index_failed", "could not index the instance (conflicting row)")
            return
        except Exception as exc:
            if old_path != item.final:
                _unlink_quietly(item.final)
            results[item.number] = StoreError(status.OUT_OF_RESOURCES, "index_failed", f"could not index the instance ({type(exc).__name__})")
            return
        self._indexed(item, results)

    def _indexed(self, item: "_Staged", results: list) -> None:
        old_path = self.root / item.existing.path if item.existing is not None else None
        if old_path is not None and old_path != item.final:
            _unlink_quietly(old_path)
        outcome = "replaced" if item.replace else "stored"
        log.debug(
            "instance_stored", sop=uid_hash(item.sop), study=uid_hash(item.record.study_uid), size=item.size, outcome=outcome,
            source=item.record.source, synthetic=False, excluded=bool(item.prep.exclusion),
        )
        results[item.number] = PutResult(item.record, outcome)

    # -- reading -------------------------------------------------------------------------------------

    def path_of(self, record: InstanceRecord) -> Path:
        return self.root / record.path

    def read(self, sop_instance_uid: str, stop_before_pixels: bool = False) -> Dataset:
        record = self.index.get(sop_instance_uid)
        if record is None:
            raise KeyError("no stored instance with that SOP Instance UID")
        return pydicom.dcmread(self.path_of(record), stop_before_pixels=stop_before_pixels)

    def verify(self, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, list[str]]:
        """Check every indexed file against its sha256 and find files the index does not know.

        With ``repair``, files the index lacks are indexed (as :meth:`recover` would) and rows whose
        file is missing are dropped; corrupt files are only reported, never deleted.
        """
        missing, corrupt, known = [], [], set()
        records = list(self.index.instances(order="i.path"))
        for n, rec in enumerate(records, 1):
            known.add(rec.path)
            try:
                digest = sha256_file(self.path_of(rec))
            except FileNotFoundError:
                missing.append(rec.path)
                continue
            if digest != rec.sha256:
                corrupt.append(rec.path)
            if progress is not None:
                progress(n, len(records))
        orphans = sorted(rel for rel in self._files() if rel not in known)
        if repair:
            for rel in missing:
                sop = Path(rel).stem
                self.index.delete(sop)
            for rel in orphans:
                self._index_file(self.root / rel, source="recovered")
        return {"missing": missing, "corrupt": corrupt, "orphans": orphans}

    # -- durability of the index ---------------------------------------------------------------------

    def checkpoint(self) -> bool:
        """Make every commit so far durable and move the mark in ``store/.durable`` forward.

        The mark is the start time of the oldest put in flight (or now): every file older than it was
        indexed by a commit that the checkpoint has just synced. Returns False when SQLite could not
        checkpoint everything (a reader held old pages); the mark then stays where it was.
        """
        with self._checkpoint_lock:
            with self._inflight_guard:
                mark = min(self._inflight.values(), default=time.time())
            self._last_checkpoint = time.monotonic()
            if not self.index.checkpoint():
                return False
            _write_small_file_durably(self.root / DURABLE_MARK, json.dumps({"durable_through": mark}).encode(), self.tmp)
            return True

    def durable_through(self) -> float | None:
        try:
            return float(json.loads((self.root / DURABLE_MARK).read_text())["durable_through"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def recover(self) -> int:
        """Index files newer than the durable mark that the index lacks (after a power loss).

        Such a file was fsynced before its success status was sent; only its index row can be missing.
        Its row is rebuilt from the file: source ``recovered``, received at the file's mtime.
        """
        since = self.durable_through()
        since = None if since is None else since - _RECOVERY_SLACK_S
        count = 0
        for series_dir in self._series_dirs(since):
            files = [p for p in series_dir.glob("*.dcm") if since is None or p.stat().st_mtime >= since]
            if not files:
                continue
            indexed = self.index.paths_in_series(series_dir.name)
            for path in files:
                rel = str(path.relative_to(self.root))
                if rel in indexed:
                    continue
                if self._index_file(path, source="recovered"):
                    count += 1
        return count

    def close(self) -> None:
        """Checkpoint the index (so the next start has nothing to recover) and close it."""
        try:
            self.checkpoint()
        except Exception as exc:  # closing must not fail; the next start recovers instead
            log.warning("checkpoint_failed", error=type(exc).__name__)
        self.index.close()

    def _index_file(self, path: Path, source: str) -> bool:
        try:
            data = path.read_bytes()
            enc = parse_file(data)
            ds = enc.dataset
            self._validate_uids(ds)
            rel = path.relative_to(self.root)
            if rel != Path(str(ds.StudyInstanceUID)) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm":
                raise StoreError(status.CANNOT_UNDERSTAND, "misplaced", "the file's UIDs do not match its path")
            exclusion = "burned-in annotation" if _text(ds, "BurnedInAnnotation").upper() == "YES" else ""
            synthetic = _text(ds, "SyntheticData").upper() == "YES"
            rec = self._record(ds, enc.transfer_syntax, rel, len(data), hashlib.sha256(data).hexdigest(), source, "", synthetic, exclusion)
            mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
            rec.received_at = mtime.isoformat(timespec="milliseconds")
            self.index.add(rec, replace=False)
        except (EncodingError, StoreError, OSError, *INTEGRITY_ERRORS) as exc:
            log.warning("recovery_skipped", file=uid_hash(str(path.name)), reason=type(exc).__name__)
            return False
        log.info("instance_recovered", sop=uid_hash(path.stem))
        return True

    def _series_dirs(self, since: float | None) -> Iterator[Path]:
        """Series folders; with ``since``, only those changed since (a new file changes its folder)."""
        try:
            studies = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for study in studies:
            if not study.is_dir() or study.name.startswith("."):
                continue
            for series in os.scandir(study.path):
                if series.is_dir() and (since is None or series.stat().st_mtime >= since):
                    yield Path(series.path)

    def _files(self) -> Iterator[str]:
        for series_dir in self._series_dirs(None):
            for p in series_dir.glob("*.dcm"):
                yield str(p.relative_to(self.root))

    # -- internals -----------------------------------------------------------------------------------

    def _reparse_complete(self, enc: EncodedInstance) -> EncodedInstance:
        data = enc.raw
        if data is None:
            return enc
        ts = enc.transfer_syntax
        try:
            if bytes(memoryview(data)[128:132]) == b"DICM":
                full = pydicom.dcmread(io.BytesIO(data))
            else:
                full = pydicom.filereader.read_dataset(io.BytesIO(data), enc.transfer_syntax.is_implicit_VR, enc.transfer_syntax.is_little_endian)
                full.file_meta = FileMetaDataset()
                full.file_meta.TransferSyntaxUID = ts
        except Exception as exc:
            raise StoreError(status.CANNOT_UNDERSTAND, "malformed", f"not a readable DICOM dataset ({type(exc).__name__})") from None
        out = EncodedInstance(full, enc.transfer_syntax, pixel_length=enc.pixel_length, fragments=enc.fragments, complete=True)
        return out

    @staticmethod
    def _validate_uids(ds: Dataset) -> None:
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            try:
                validate_uid(_uid(ds, keyword), keyword)
            except InvalidUID as exc:
                raise StoreError(status.CANNOT_UNDERSTAND, "invalid_uid", str(exc)) from None

    def _validate(self, enc: EncodedInstance, pixels_later: bool = False) -> None:
        self._validate_header(enc)
        if not pixels_later:
            self.validate_pixels(enc)

    def _validate_header(self, enc: EncodedInstance) -> None:
        ds = enc.dataset
        self._validate_uids(ds)
        self._validate_image_attributes(ds)
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        if rows is not None and cols is not None and rows * cols > self.cfg.store.max_pixels:
            raise StoreError(
                status.CANNOT_UNDERSTAND,
                "image_too_large",
                f"the header claims a {rows} x {cols} image; the store accepts at most {self.cfg.store.max_pixels} "
                "pixels per frame (store.max_pixels)",
            )
        # Last: a dataset that cannot be stored anyway says why, whatever the request announced.
        self._validate_request_match(enc)

    @staticmethod
    def _validate_request_match(enc: EncodedInstance) -> None:
        """The dataset is the one the C-STORE request announced: 0xA900 otherwise, as dcmtk's storescp answers."""
        if enc.expected is None:
            return
        sop_class, sop_instance = enc.expected
        if _uid(enc.dataset, "SOPClassUID") != sop_class:
            raise StoreError(status.DATASET_MISMATCH, "sop_class_mismatch",
                             "the dataset's SOP Class UID is not the presentation context's")
        if _uid(enc.dataset, "SOPInstanceUID") != sop_instance:
            raise StoreError(status.DATASET_MISMATCH, "sop_instance_mismatch",
                             "the dataset's SOP Instance UID is not the Affected SOP Instance UID")

    @staticmethod
    def _validate_image_attributes(ds: Dataset) -> None:
        """Values the index keeps and Type 1 image attributes (PS3.3 C.7.6.3) that no image can have."""
        for keyword in _INDEXED_INTEGERS:
            value = _int(ds, keyword)
            if value is not None and not _IS_MIN <= value <= _IS_MAX:
                # PS3.5 Table 6.2-1: an IS value lies within -2^31 .. 2^31-1.
                raise StoreError(status.CANNOT_UNDERSTAND, "value_out_of_range", f"{keyword} is outside the range of its VR")
        for keyword in ("Rows", "Columns", "BitsAllocated"):
            if _int(ds, keyword) == 0:
                raise StoreError(status.DATASET_MISMATCH, "image_attribute_zero",
                                 f"{keyword} is 0; an image needs at least 1 (PS3.3 C.7.6.3)")

    def validate_pixels(self, enc: EncodedInstance) -> None:
        """Refuse (:class:`StoreError`) pixel data that does not fit the image attributes (PS3.3 C.7.6.3)."""
        ds = enc.dataset
        rows, cols, frames = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "NumberOfFrames") or 1
        if rows is None or cols is None:
            return
        has_pixels = enc.pixel_element is not None or (enc.complete and any(t in ds for t in PIXEL_TAGS))
        if not has_pixels:
            # Rows and Columns describe an image whose pixels are Type 1 (PS3.3 C.7.6.3): a dataset
            # that ends before them was cut short, whatever its header says.
            raise StoreError(status.CANNOT_UNDERSTAND, "no_pixel_data", "the header describes an image but the dataset holds no Pixel Data")
        if enc.transfer_syntax.is_encapsulated:
            if enc.pixel_element is not None and enc.fragments < 1:
                raise StoreError(status.CANNOT_UNDERSTAND, "pixel_data_empty", "encapsulated Pixel Data holds no fragment")
            return
        bits = _int(ds, "BitsAllocated") or 0
        spp = _int(ds, "SamplesPerPixel") or 1
        expected = (rows * cols * frames * spp * bits + 7) // 8
        actual = enc.pixel_length or 0
        # Pixel Data is padded to an even length (PS3.5 §7.1.1); shorter than the header says is corrupt.
        if bits and actual < expected:
            raise StoreError(
                status.CANNOT_UNDERSTAND,
                "pixel_data_short",
                f"Pixel Data holds {actual} bytes but the header describes {expected} "
                f"({rows} x {cols} x {frames} frame(s), {bits} bits allocated)",
            )

    def _encode(self, enc: EncodedInstance, keep_trailing: bool) -> list:
        """Part 10 bytes with our own File Meta Information (PS3.10 §7.1), as parts to write.

        The sender's meta (its implementation UID, its AE title) is not kept: the same instance sent by
        two peers then has the same bytes and sha256, so a re-send is recognized as identical.
        """
        ds = enc.dataset
        try:
            if enc.complete or enc.transfer_syntax == DeflatedExplicitVRLittleEndian:
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = ds.SOPClassUID
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                meta.TransferSyntaxUID = enc.transfer_syntax
                meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
                meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
                ds.file_meta = meta
                buf = io.BytesIO()
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                return [buf.getbuffer()]
            # Read through pydicom, which also converts the two elements in ``ds`` (a UN element gets its
            # dictionary VR): the stored bytes stay those of every earlier version, so re-sends of
            # instances stored by them are still recognized as identical.
            head = file_meta_bytes(
                str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(enc.transfer_syntax),
                IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
            )
            parts: list = [head, encode_dataset(ds, enc.transfer_syntax)]
        except Exception as exc:
            raise StoreError(status.CANNOT_UNDERSTAND, "encode_failed", f"the dataset cannot be encoded ({type(exc).__name__})") from None
        if enc.pixel_element is not None:
            parts.append(enc.pixel_element)
            if keep_trailing and len(enc.trailing):
                parts.append(enc.trailing)
        return parts

    def new_tmp_path(self) -> Path:
        """A fresh temporary file name on the store's filesystem, tagged with our pid (see _clean_tmp)."""
        return self.tmp / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.part"

    def _write_tmp(self, parts: list) -> Path:
        """The instance in a temporary file, fsynced; nothing is left behind if that fails."""
        tmp_path = self.new_tmp_path()
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                _writev_all(fd, parts)
                if self.cfg.store.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            raise _write_failed(exc) from None
        return tmp_path

    def _publish(self, tmp_path: Path, final: Path, overlap: bool = False) -> Future | None:
        """Atomic rename into place and fsync of the folder(s): after this the file survives a crash.

        A file already at ``final`` without a row (a crash between rename and commit) is replaced. With
        ``overlap`` the folder fsync runs on :data:`SYNCERS` and its future is returned: the caller
        must pass it to :meth:`_wait_folder_synced` before it answers.
        """
        renamed = existed = False
        try:
            new_dirs = _makedirs(final.parent, self.root)
            existed = final.exists()
            os.replace(tmp_path, final)
            renamed = True
            if self.cfg.store.fsync:
                folders = [final.parent, *new_dirs]
                if overlap and not existed:
                    return SYNCERS.submit(_fsync_folders, folders)
                _fsync_folders(folders)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            if renamed and not existed:
                _unlink_quietly(final)  # not durable, so not stored
            raise _write_failed(exc) from None
        return None

    def _wait_folder_synced(self, synced: Future, final: Path, sop: str) -> None:
        """The overlapped folder fsync of a new instance: if it failed, neither row nor file stays."""
        try:
            synced.result()
        except OSError as exc:
            try:
                self.index.delete(sop)
            finally:
                _unlink_quietly(final)
            raise _write_failed(exc) from None

    def _record(self, ds: Dataset, transfer_syntax: str, rel: Path, size: int, digest: str, source: str, source_ae: str, synthetic: bool, exclusion: str) -> InstanceRecord:
        return InstanceRecord(
            sop_instance_uid=_uid(ds, "SOPInstanceUID") or "",
            series_uid=_uid(ds, "SeriesInstanceUID") or "",
            study_uid=_uid(ds, "StudyInstanceUID") or "",
            sop_class_uid=_uid(ds, "SOPClassUID") or "",
            transfer_syntax_uid=str(transfer_syntax),
            path=str(rel),
            size=size,
            sha256=digest,
            source=source,
            received_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            study_description=_text(ds, "StudyDescription"),
            accession_number=_text(ds, "AccessionNumber"),
            study_id=_text(ds, "StudyID"),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
            modality=_text(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            body_part_examined=_text(ds, "BodyPartExamined"),
            laterality=_text(ds, "Laterality"),
            series_date=_text(ds, "SeriesDate"),
            series_time=_text(ds, "SeriesTime"),
            instance_number=_int(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            bits_stored=_int(ds, "BitsStored"),
            photometric_interpretation=_text(ds, "PhotometricInterpretation"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            view_position=_text(ds, "ViewPosition"),
            image_laterality=_text(ds, "ImageLaterality"),
            burned_in_annotation=_text(ds, "BurnedInAnnotation"),
            source_ae=source_ae,
            # Received instances that say they are synthetic (0008,001C) are synthetic for queries and
            # training too, as recovery (_index_file) already records them.
            synthetic=synthetic or _text(ds, "SyntheticData").upper() == "YES",
            excluded_from_training=bool(exclusion),
            exclusion_reason=exclusion,
        )

    def _uid_lock(self, uid: str) -> "_RefLock":
        return _RefLock(self, uid)

    def _clean_tmp(self) -> None:
        """Temporary files were never acknowledged: a crash leaves them, the next start removes them.

        Only our own leftovers and those of processes that no longer run: another process (an import
        beside the server) may be writing its own right now.
        """
        for leftover in self.tmp.glob("*.part"):
            pid = leftover.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
                continue
            _unlink_quietly(leftover)


@dataclass
class _Staged:
    """An instance of a batch on its way into the store."""

    number: int  # its place in the batch
    prep: Prepared
    sop: str
    rel: Path
    final: Path
    size: int
    written: Future  # Store._write_hashed: (temporary file, sha256)
    taken: bool = False  # ``written``'s outcome was (or is being) taken into ``tmp`` and ``digest``
    tmp: Path | None = None  # None once renamed to ``final`` or removed
    digest: str = ""
    existing: InstanceRecord | None = None
    replace: bool = False
    existed: bool = False  # a file was at ``final`` before the rename
    record: InstanceRecord | None = None


def _settle(item: _Staged) -> None:
    """Whatever became of a batch's instance, its write is over and an unused temporary file is gone."""
    if not item.taken:
        item.taken = True
        try:
            item.tmp, _ = item.written.result()
        except Exception:
            return  # the write failed and left nothing
    if item.tmp is not None:
        _unlink_quietly(item.tmp)
        item.tmp = None


def _host_folder_name() -> str:
    import socket

    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()).strip(".")
    return f"host-{name or 'unknown'}"


class _RefLock:
    """A per-UID lock that is dropped from the table when nobody holds it."""

    def __init__(self, store: Store, uid: str):
        self.store, self.uid = store, uid

    def __enter__(self) -> None:
        with self.store._uid_locks_guard:
            entry = self.store._uid_locks.get(self.uid)
            if entry is None:
                entry = self.store._uid_locks[self.uid] = [threading.Lock(), 0]
            entry[1] += 1
        entry[0].acquire()
        self._entry = entry

    def __exit__(self, *exc: object) -> None:
        self._entry[0].release()
        with self.store._uid_locks_guard:
            self._entry[1] -= 1
            if self._entry[1] == 0:
                self.store._uid_locks.pop(self.uid, None)


def _sha256_parts(parts: list) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def _writev_all(fd: int, parts: list) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _write_small_file_durably(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _makedirs(path: Path, root: Path) -> list[Path]:
    """mkdir -p, returning the parents of the folders it created (their entries need an fsync)."""
    created: list[Path] = []
    missing = []
    p = path
    while not p.exists() and p != root:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        created.append(d.parent)
    return created


def _fsync_folders(folders: list[Path]) -> None:
    for folder in folders:
        fsync_path(folder)


def _write_failed(exc: OSError) -> StoreError:
    return StoreError(status.OUT_OF_RESOURCES, "write_failed", f"could not write the instance to disk: {exc.strerror or exc}")


def _wait_quietly(future: Future) -> None:
    try:
        future.result()
    except OSError:
        pass  # reported where the result was needed


def fsync_and_close(fd: int) -> None:
    """fsync then close a file descriptor (run on :data:`SYNCERS`); closes it even if the fsync fails."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
