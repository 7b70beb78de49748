"""The durable training store: every path into it (C-STORE, folder import, synthetic instances) ends here.

An instance is validated, de-identified (when it is a received instance and de-identification is on),
encoded in the transfer syntax it arrived in (pixel data untouched, no transcoding), written to a
temporary file on the store's filesystem, fsynced, renamed into a path built from validated UIDs, and
indexed. Only then does :meth:`Store.put` return; a C-STORE success is sent after it. Anything that
goes wrong raises :class:`StoreError` carrying the DICOM status to answer, and leaves no file and no row.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from service import metrics
from service.config import Config
from service.dicom import status
from service.dicom.index import Index, InstanceRecord
from service.dicom.uids import InvalidUID, validate_uid
from service.home import Home
from service.logs import get_logger, uid_hash

log = get_logger("store")

# Our implementation's identity in File Meta Information (PS3.7 D.3.3.2); a fixed UUID-derived UID.
IMPLEMENTATION_CLASS_UID = "2.25.160436549375284718591049270658337305781"
IMPLEMENTATION_VERSION_NAME = "SYNTHPACS"

# A de-identifier takes a received dataset and returns the dataset to store, with a reason to exclude
# it from training (or "").
Deidentifier = Callable[[Dataset], tuple[Dataset, str]]


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


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
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
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.index = index or Index(self.home.index_path)
        if deidentifier is None and cfg.deid.enabled:
            from service.dicom.deid import Deidentifier as _Deid

            deidentifier = _Deid.from_config(cfg, self.home)
        self.deidentifier = deidentifier
        # Serializes the check-then-write of one SOP Instance UID (re-sends racing each other).
        self._uid_locks: dict[str, threading.Lock] = {}
        self._uid_locks_guard = threading.Lock()
        self._clean_tmp()

    # -- the one way in ----------------------------------------------------------------------------

    def put_bytes(self, data: bytes, source: str, source_ae: str = "", transfer_syntax: str | None = None) -> PutResult:
        """Store an encoded instance (a Part 10 file, or a bare dataset in ``transfer_syntax``)."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=transfer_syntax is not None)
        except Exception as exc:
            # pydicom raises many kinds on garbage; none may take the server down. Its messages can quote
            # element values, so only the kind of error is passed on (no patient data in logs).
            raise StoreError(status.CANNOT_UNDERSTAND, "malformed", f"not a readable DICOM dataset ({type(exc).__name__})") from None
        if transfer_syntax is not None and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        return self.put(ds, source=source, source_ae=source_ae)

    def put(self, ds: Dataset, source: str, source_ae: str = "", synthetic: bool = False) -> PutResult:
        """Validate, de-identify, write durably and index one instance; raise StoreError if it cannot."""
        started = time.perf_counter()
        try:
            result = self._put(ds, source, source_ae, synthetic)
        except StoreError as exc:
            metrics.STORE_FAILURES.labels(reason=exc.reason).inc()
            log.warning("instance_refused", reason=exc.reason, status=f"0x{exc.status:04X}", detail=str(exc), source=source)
            raise
        metrics.STORE_LATENCY.observe(time.perf_counter() - started)
        if result.outcome == "stored" or result.outcome == "replaced":
            metrics.INSTANCES_RECEIVED.labels(source=source).inc()
            metrics.BYTES_RECEIVED.inc(result.record.size)
        else:
            metrics.DUPLICATES.labels(outcome=result.outcome).inc()
        return result

    def _put(self, ds: Dataset, source: str, source_ae: str, synthetic: bool) -> PutResult:
        self._validate(ds)
        exclusion = ""
        if self.deidentifier is not None and not synthetic:
            try:
                ds, exclusion = self.deidentifier(ds)
            except Exception as exc:
                raise StoreError(status.CANNOT_UNDERSTAND, "deid_failed", f"de-identification failed ({type(exc).__name__})") from None
            self._validate(ds)  # remapped UIDs become paths too
        if not exclusion and _text(ds, "BurnedInAnnotation").upper() == "YES" and not synthetic:
            exclusion = "burned-in annotation"
        data = self._encode(ds)
        digest = hashlib.sha256(data).hexdigest()
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        rel = Path(study) / series / f"{sop}.dcm"
        with self._uid_lock(sop):
            existing = self.index.get(sop)
            replace = False
            if existing is not None:
                if existing.sha256 == digest:
                    log.info("instance_duplicate", sop=uid_hash(sop), outcome="identical")
                    return PutResult(existing, "identical")
                policy = self.cfg.store.duplicate_policy
                if policy == "keep":
                    log.warning("instance_duplicate", sop=uid_hash(sop), outcome="kept", policy=policy)
                    return PutResult(existing, "kept")
                if policy == "reject":
                    raise StoreError(
                        status.DUPLICATE_SOP_INSTANCE,
                        "duplicate_rejected",
                        "a different instance with this SOP Instance UID is already stored (store.duplicate_policy = reject)",
                    )
                replace = True
            record = self._record(ds, rel, len(data), digest, source, source_ae, synthetic, exclusion)
            final = self.root / rel
            old_path = self.root / existing.path if existing is not None else None
            self._write_durably(final, data)
            try:
                self.index.add(record, replace=replace)
            except Exception as exc:
                # Not indexed means not stored: take the file away again so nothing half-exists.
                if old_path != final:
                    _unlink_quietly(final)
                raise StoreError(status.OUT_OF_RESOURCES, "index_failed", f"could not index the instance: {exc}") from None
            if old_path is not None and old_path != final:
                _unlink_quietly(old_path)
        outcome = "replaced" if replace else "stored"
        log.info(
            "instance_stored", sop=uid_hash(sop), study=uid_hash(study), size=len(data), outcome=outcome,
            source=source, synthetic=synthetic, excluded=bool(exclusion),
        )
        return PutResult(record, outcome)

    # -- reading -------------------------------------------------------------------------------------

    def path_of(self, record: InstanceRecord) -> Path:
        return self.root / record.path

    def read(self, sop_instance_uid: str, stop_before_pixels: bool = False) -> Dataset:
        record = self.index.get(sop_instance_uid)
        if record is None:
            raise KeyError(f"no stored instance with that SOP Instance UID")
        return pydicom.dcmread(self.path_of(record), stop_before_pixels=stop_before_pixels)

    def verify(self) -> dict[str, list[str]]:
        """Check every indexed file against its sha256 and find files the index does not know."""
        missing, corrupt, known = [], [], set()
        for rec in self.index.instances():
            known.add(rec.path)
            path = self.path_of(rec)
            try:
                digest = _sha256_file(path)
            except FileNotFoundError:
                missing.append(rec.path)
                continue
            if digest != rec.sha256:
                corrupt.append(rec.path)
        orphans = [
            str(p.relative_to(self.root))
            for p in self.root.rglob("*.dcm")
            if ".tmp" not in p.parts and str(p.relative_to(self.root)) not in known
        ]
        return {"missing": missing, "corrupt": corrupt, "orphans": sorted(orphans)}

    # -- internals -----------------------------------------------------------------------------------

    def _validate(self, ds: Dataset) -> None:
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            try:
                validate_uid(ds.get(keyword), keyword)
            except InvalidUID as exc:
                raise StoreError(status.CANNOT_UNDERSTAND, "invalid_uid", str(exc)) from None
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if tsyntax is None:
            raise StoreError(status.CANNOT_UNDERSTAND, "no_transfer_syntax", "the dataset has no transfer syntax")
        rows, cols, frames = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "NumberOfFrames") or 1
        if rows is not None and cols is not None:
            if rows * cols > self.cfg.store.max_pixels:
                raise StoreError(
                    status.CANNOT_UNDERSTAND,
                    "image_too_large",
                    f"the header claims a {rows} x {cols} image; the store accepts at most {self.cfg.store.max_pixels} "
                    "pixels per frame (store.max_pixels)",
                )
            if "PixelData" in ds and not UID(tsyntax).is_compressed:
                bits = _int(ds, "BitsAllocated") or 0
                spp = _int(ds, "SamplesPerPixel") or 1
                expected = rows * cols * frames * spp * bits // 8
                actual = len(ds.PixelData) if ds.PixelData is not None else 0
                # Pixel Data is padded to an even length (PS3.5 §7.1.1); shorter than the header says is corrupt.
                if bits and actual < expected:
                    raise StoreError(
                        status.CANNOT_UNDERSTAND,
                        "pixel_data_short",
                        f"Pixel Data holds {actual} bytes but the header describes {expected} "
                        f"({rows} x {cols} x {frames} frame(s), {bits} bits allocated)",
                    )

    def _encode(self, ds: Dataset) -> bytes:
        """Part 10 bytes with our own File Meta Information (PS3.10 §7.1).

        The sender's meta (its implementation UID, its AE title) is not kept: the same instance sent by
        two peers then has the same bytes and sha256, so a re-send is recognized as identical.
        """
        buf = io.BytesIO()
        try:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
            meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
            meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
            ds.file_meta = meta
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        except Exception as exc:
            raise StoreError(status.CANNOT_UNDERSTAND, "encode_failed", f"the dataset cannot be encoded ({type(exc).__name__})") from None
        return buf.getvalue()

    def _write_durably(self, final: Path, data: bytes) -> None:
        """Temporary file, fsync, atomic rename, fsync of the folder: after this the file survives a crash."""
        tmp_path = self.tmp / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.part"
        try:
            new_dirs = _makedirs(final.parent, self.root)
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.cfg.store.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_path, final)
            if self.cfg.store.fsync:
                for d in [final.parent, *new_dirs]:
                    _fsync_dir(d)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            raise StoreError(status.OUT_OF_RESOURCES, "write_failed", f"could not write the instance to disk: {exc.strerror or exc}") from None

    def _record(self, ds: Dataset, rel: Path, size: int, digest: str, source: str, source_ae: str, synthetic: bool, exclusion: str) -> InstanceRecord:
        return InstanceRecord(
            sop_instance_uid=ds.SOPInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            study_uid=ds.StudyInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
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
            synthetic=synthetic,
            excluded_from_training=bool(exclusion),
            exclusion_reason=exclusion,
        )

    def _uid_lock(self, uid: str) -> "_RefLock":
        return _RefLock(self, uid)

    def _clean_tmp(self) -> None:
        """Temporary files were never acknowledged: a crash leaves them, the next start removes them."""
        for leftover in self.tmp.glob("*.part"):
            _unlink_quietly(leftover)


class _RefLock:
    """A per-UID lock that is dropped from the table when nobody holds it."""

    def __init__(self, store: Store, uid: str):
        self.store, self.uid = store, uid

    def __enter__(self) -> None:
        with self.store._uid_locks_guard:
            entry = self.store._uid_locks.get(self.uid)
            if entry is None:
                entry = self.store._uid_locks[self.uid] = [threading.Lock(), 0]  # type: ignore[assignment]
            entry[1] += 1  # type: ignore[index]
        entry[0].acquire()  # type: ignore[index]
        self._entry = entry

    def __exit__(self, *exc: object) -> None:
        self._entry[0].release()
        with self.store._uid_locks_guard:
            self._entry[1] -= 1
            if self._entry[1] == 0:
                self.store._uid_locks.pop(self.uid, None)


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
