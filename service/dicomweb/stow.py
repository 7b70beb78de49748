"""STOW-RS, the store transaction (PS3.18 10.5): multipart/related application/dicom into the store.

Each part goes through the path a C-STORE takes (validation, de-identification, the duplicate policy,
encoding, a durable write and the index), so an instance stored over DICOMweb is indistinguishable from a
received one except for its source (``dicomweb``). The parts of one request are stored as one batch
(:meth:`service.archive.store.Store.put_batch`), each with its own outcome: every instance listed as
stored is on disk, fsynced with its folder, and indexed before the response is sent; one that fails
leaves nothing behind and does not stop the others.

The body is kept as it arrives: in memory up to ``MEMORY_BODY_BYTES`` (8 MiB), past that streamed to a
file in the store's temporary folder, so a large body is never held in memory; it is refused (413) as
soon as it passes ``dicomweb.max_body_bytes`` (at once when Content-Length declares more). Only a
complete, well-formed multipart body is stored from: a body cut short or malformed is refused (400)
before any part is stored, so nothing partial ever lands in the store.

The response (10.5.3, the JSON model) lists stored instances in Referenced SOP Sequence (0008,1199)
with their Retrieve URL, and refused ones in Failed SOP Sequence (0008,1198) with a Failure Reason
(0008,1197): the DICOM status the C-STORE would have answered (PS3.4 B.2.3), 0xC000 for a part that is
not a DICOM file, 0xA900 for an instance of another study than the one in the request's path. With
de-identification on, the UIDs listed are those stored (the ones to retrieve). 200: all stored;
202: some stored, some refused; 409: none stored. A Warning header says why each refusal happened.
"""

from __future__ import annotations

import io
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive.store import StoreError
from service.config import Config
from service.dicomweb import media
from service.dicomweb.errors import BadRequest, UnsupportedMediaType
from service.logs import get_logger, uid_hash

log = get_logger("dicomweb")

SOURCE = "dicomweb"
# Request bodies up to this size are held in memory as they arrive; larger ones go to a file (SpooledBody).
MEMORY_BODY_BYTES = 8 << 20
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xA900


@dataclass
class StowResult:
    status: int
    response: Dataset
    warnings: list[str] = field(default_factory=list)
    stored: int = 0
    failed: int = 0


def check_content_type(header: str | None) -> str:
    """The boundary of a multipart/related; type="application/dicom" request, or 415/400."""
    try:
        ctype = media.parse_media_type(header or "")
    except media.BadMediaType:
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"') from None
    if ctype.type != media.MULTIPART_RELATED:
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom" (PS3.18 10.5.1)')
    part_type = (ctype.param("type") or media.DICOM).lower()
    if part_type != media.DICOM:
        raise UnsupportedMediaType(
            f"STOW-RS here takes application/dicom parts; {part_type} (metadata and bulk data) is not supported"
        )
    try:
        return media.boundary_of(ctype)
    except media.MalformedMultipart as exc:
        raise BadRequest(str(exc)) from None


def _uids_of(data: Any) -> tuple[str | None, str | None, str | None]:
    """(SOP Class, SOP Instance, Study Instance) UIDs from a part's header, None where unreadable."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return None, None, None
    return (str(ds.get("SOPClassUID", "")) or None, str(ds.get("SOPInstanceUID", "")) or None,
            str(ds.get("StudyInstanceUID", "")) or None)


def _item(sop_class: str | None, sop_instance: str | None) -> Dataset:
    item = Dataset()
    item.add(DataElement(0x00081150, "UI", sop_class))
    item.add(DataElement(0x00081155, "UI", sop_instance))
    return item


class Stow:
    """STOW-RS into one store."""

    def __init__(self, cfg: Config, store: Any):
        self.cfg = cfg
        self.store = store

    def new_body(self) -> "SpooledBody":
        """Where a request body goes as it arrives (memory, then a file in the store's temporary folder)."""
        return SpooledBody(self.store.tmp)

    def store_body(self, body: "SpooledBody", boundary: str, base_url: str, study: str | None = None) -> StowResult:
        """Store every part of the multipart ``body`` (complete and well-formed, or nothing)."""
        if body.size == 0:
            raise BadRequest("the request body is empty")
        mm = body.contents()
        try:
            try:
                parts = media.split_parts(mm, boundary)
            except media.MalformedMultipart as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from None
            return self._store_parts(mm, parts, base_url, study)
        finally:
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:
                    pass  # a view into it is still referenced: it is unmapped when that is collected

    def _store_parts(self, mm: mmap.mmap | bytearray, parts: list[media.Part], base_url: str, study: str | None) -> StowResult:
        # The parts that can be stored go to the store as one batch (Store.put_batch): each is validated,
        # de-identified, deduplicated and indexed as a C-STORE is, with its own outcome, and all of them
        # are durable and indexed before this returns. The answer lists the parts in their order.
        outcomes: list[tuple[Dataset, str | None, str] | None] = [None] * len(parts)
        views, numbers = [], []
        try:
            for number, part in enumerate(parts):
                data = memoryview(mm)[part.start:part.end]
                reason = self._refusal(part, data, study)
                if reason is None:
                    views.append(data)
                    numbers.append(number)
                    continue
                status_code, message = reason
                outcomes[number] = self._failed(data, status_code, f'299 synthpacs "part {number + 1}: {message}"')
                _release(data)
            results = self.store.put_batch(views, source=SOURCE, source_ae="DICOMWEB")
            for number, data, result in zip(numbers, views, results):
                if isinstance(result, StoreError):
                    warning = f'299 synthpacs "part {number + 1}: {result.reason}: {result}"'.replace("\n", " ")
                    outcomes[number] = self._failed(data, result.status, warning)
                else:
                    outcomes[number] = self._stored(result, base_url)
        finally:
            for data in views:
                _release(data)
        stored, failed, warnings = Sequence(), Sequence(), []
        studies: list[str] = []
        for item, warning, study_uid in outcomes:
            if warning is None:
                stored.append(item)
                studies.append(study_uid)
            else:
                failed.append(item)
                warnings.append(warning)
        response = Dataset()
        target = study if study else (studies[0] if studies and len(set(studies)) == 1 else None)
        if target:
            response.RetrieveURL = f"{base_url}/studies/{target}"
        response.FailedSOPSequence = failed
        response.ReferencedSOPSequence = stored
        status_code = 200 if not failed else 202 if stored else 409
        log.info("stow_request", parts=len(parts), stored=len(stored), failed=len(failed), status=status_code)
        return StowResult(status_code, response, warnings, len(stored), len(failed))

    @staticmethod
    def _failed(data: memoryview, status_code: int, warning: str) -> tuple[Dataset, str, str]:
        """(Failed SOP item with its Failure Reason, the Warning, no study)."""
        sop_class, sop_instance, _ = _uids_of(data)
        item = _item(sop_class, sop_instance)
        item.FailureReason = status_code
        return item, warning, ""

    @staticmethod
    def _stored(result: Any, base_url: str) -> tuple[Dataset, None, str]:
        """(Referenced SOP item with its Retrieve URL, no warning, the stored study UID)."""
        rec = result.record
        item = _item(rec.sop_class_uid, rec.sop_instance_uid)
        item.RetrieveURL = f"{base_url}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{rec.sop_instance_uid}"
        log.info("stow_instance", outcome=result.outcome, sop=uid_hash(rec.sop_instance_uid))
        return item, None, rec.study_uid

    @staticmethod
    def _refusal(part: media.Part, data: memoryview, study: str | None) -> tuple[int, str] | None:
        ctype = part.content_type.split(";")[0].strip().lower()
        if ctype and ctype != media.DICOM:
            return CANNOT_UNDERSTAND, f"the part is {ctype}, not application/dicom"
        if len(data) < 132 or bytes(data[128:132]) != b"DICM":
            return CANNOT_UNDERSTAND, "the part is not a DICOM file (PS3.10: 128-byte preamble and DICM)"
        if study is not None:
            _, _, part_study = _uids_of(data)
            if part_study != study:
                return STUDY_MISMATCH, "the instance belongs to another study than the one in the request path"
        return None


class SpooledBody:
    """A request body as it arrives: in memory up to :data:`MEMORY_BODY_BYTES`, past that in a file in the
    store's temporary folder (the same filesystem), so a large body never sits in memory.

    A body of a few instances (a study of radiographs, what viewers and most senders post) costs no file:
    creating, writing and removing a spool file each take the filesystem's journal, which the store's
    fsyncs keep busy (removing a 2.6 MB spool took ~4 ms per request under load)."""

    def __init__(self, folder: Path, memory_limit: int | None = None):
        self.folder = folder
        self.memory_limit = MEMORY_BODY_BYTES if memory_limit is None else memory_limit
        self.size = 0
        self.path: Path | None = None
        self._buffer: bytearray | None = bytearray()
        self._file: Any = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._buffer is not None and self.size <= self.memory_limit:
            self._buffer += chunk
            return
        if self._file is None:
            fd, name = _mkstemp(self.folder)
            self.path = Path(name)
            self._file = os.fdopen(fd, "wb")
            self._file.write(self._buffer)
            self._buffer = None
        self._file.write(chunk)

    def contents(self) -> mmap.mmap | bytearray:
        """The whole body: the buffer, or the spool file mapped (read-only)."""
        if self._file is None:
            assert self._buffer is not None
            return self._buffer
        self._file.flush()
        return mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def discard(self) -> None:
        self._buffer = None
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _release(data: memoryview) -> None:
    try:
        data.release()
    except BufferError:
        pass  # the store still holds a slice; released when that is collected


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix="stow-", suffix=".body", dir=folder)
