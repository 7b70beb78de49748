"""STOW-RS, the store transaction (PS3.18 10.5): multipart/related application/dicom into the store.

Each part goes through exactly the path a C-STORE takes (:meth:`service.archive.store.Store.put_bytes`:
validation, de-identification, the duplicate policy, a durable write and the index), so an instance
stored over DICOMweb is indistinguishable from a received one except for its source (``dicomweb``), and
every instance listed as stored is on disk, fsynced, before the response is sent.

The body is streamed to a file in the store's temporary folder as it arrives, never held in memory,
and refused (413) as soon as it passes ``dicomweb.max_body_bytes`` (at once when Content-Length
declares more). Only a complete, well-formed multipart body is stored from: a body cut short or
malformed is refused (400) before any part is stored, so nothing partial ever lands in the store.

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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive.elements import EncodingError, walk_elements
from service.archive.store import StoreError
from service.config import Config
from service.dicomweb import media
from service.dicomweb.errors import BadRequest, UnsupportedMediaType
from service.logs import get_logger, uid_hash

log = get_logger("dicomweb")

SOURCE = "dicomweb"
# Parts of one request stored at once (each mostly waits for its fsyncs).
STORE_WORKERS = 4
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


_IMPLICIT_VR_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_VR_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_SOP_INSTANCE_UID = 0x00080018


def _text(value: memoryview) -> str:
    return bytes(value).strip(b"\x00 ").decode("ascii")


def _scanned_sop_uid(data: memoryview) -> str | None:
    """SOP Instance UID (0008,0018) read from the encoded elements in place (PS3.10 §7.1, PS3.5 §7.1).

    The File Meta Information (explicit VR little endian) gives the transfer syntax; the dataset is walked
    up to (0008,0018). Raises EncodingError/ValueError wherever the bytes do not read plainly that way (a
    deflated dataset, a VR field that is not one, no SOP Instance UID), and the caller asks pydicom instead."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise EncodingError("no Part 10 preamble")
    syntax, pos = None, None
    for tag, _vr, length, start in walk_elements(data, 132, implicit=False):
        if tag >> 16 != 0x0002:
            break
        if tag == 0x00020010:
            syntax = _text(data[start:start + length])
        pos = start + length
    if syntax is None or pos is None or syntax == _DEFLATED:
        raise EncodingError("no transfer syntax, or a deflated dataset")
    implicit, little = syntax == _IMPLICIT_VR_LITTLE, syntax != _EXPLICIT_VR_BIG
    for tag, vr, length, start in walk_elements(data, pos, implicit=implicit, little=little):
        if not implicit and not (vr.isalpha() and vr.isupper()):
            raise EncodingError("not explicit VR as declared")  # pydicom reads such files as implicit VR
        if tag == _SOP_INSTANCE_UID:
            if start + length > len(data):
                raise EncodingError("truncated")
            return _text(data[start:start + length]) or None
        if tag > _SOP_INSTANCE_UID:
            break
    raise EncodingError("no SOP Instance UID")


def _sop_uid_of(mm: mmap.mmap, part: media.Part) -> str | None:
    """The SOP Instance UID a part declares, to keep repeats of one instance in order.

    Read from the part's bytes in place (this runs for every part before any is stored, and the store
    parses each part whole anyway); pydicom's reading where that does not work."""
    data = memoryview(mm)[part.start:part.end]
    try:
        try:
            return _scanned_sop_uid(data)
        except (EncodingError, ValueError, UnicodeDecodeError):
            return _uids_of(data)[1]
    finally:
        try:
            data.release()
        except BufferError:
            pass


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
        self._pool = ThreadPoolExecutor(max_workers=STORE_WORKERS, thread_name_prefix="stow")

    def new_spool(self) -> Path:
        """A file in the store's temporary folder (same filesystem) for a request body."""
        fd, name = _mkstemp(self.store.tmp)
        os.close(fd)
        return Path(name)

    def store_body(self, path: Path, boundary: str, base_url: str, study: str | None = None) -> StowResult:
        """Store every part of the multipart body in ``path`` (complete and well-formed, or nothing)."""
        size = path.stat().st_size
        if size == 0:
            raise BadRequest("the request body is empty")
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            try:
                parts = media.split_parts(mm, boundary)
            except media.MalformedMultipart as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from None
            return self._store_parts(mm, parts, base_url, study)
        finally:
            try:
                mm.close()
            except BufferError:
                pass  # a view into it is still referenced: it is unmapped when that is collected

    def _store_parts(self, mm: mmap.mmap, parts: list[media.Part], base_url: str, study: str | None) -> StowResult:
        # Parts are stored by up to STORE_WORKERS threads at once: each waits mostly for its fsyncs, which
        # the disk serves together. A part with the SOP Instance UID of an earlier part of the same request
        # waits for that one, so the duplicate policy sees them in the order they were sent. The answer
        # lists the parts in their order whatever order they finished in.
        # The pool is shared by all requests and first in, first out, so an earlier part waited for has
        # always been taken by a worker before the part that waits for it.
        outcomes: list[Future] = []
        by_uid: dict[str, Future] = {}
        for number, part in enumerate(parts, start=1):
            uid = _sop_uid_of(mm, part) if len(parts) > 1 else None
            future = self._pool.submit(self._store_part, mm, number, part, base_url, study, by_uid.get(uid) if uid else None)
            if uid:
                by_uid[uid] = future
            outcomes.append(future)
        wait(outcomes)
        stored, failed, warnings = Sequence(), Sequence(), []
        studies: list[str] = []
        for future in outcomes:
            item, warning, study_uid = future.result()
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

    def _store_part(self, mm: mmap.mmap, number: int, part: media.Part, base_url: str, study: str | None,
                    after: Future | None) -> tuple[Dataset, str | None, str]:
        """(Referenced or Failed SOP item, the Warning for a failure or None, the stored study UID)."""
        if after is not None:
            wait([after])  # its outcome is its own: this part is answered for itself
        data = memoryview(mm)[part.start:part.end]
        try:
            reason = self._refusal(part, data, study)
            if reason is not None:
                status_code, message = reason
                sop_class, sop_instance, _ = _uids_of(data)
                item = _item(sop_class, sop_instance)
                item.FailureReason = status_code
                return item, f'299 synthpacs "part {number}: {message}"', ""
            try:
                result = self.store.put_bytes(data, source=SOURCE, source_ae="DICOMWEB")
            except StoreError as exc:
                sop_class, sop_instance, _ = _uids_of(data)
                item = _item(sop_class, sop_instance)
                item.FailureReason = exc.status
                return item, f'299 synthpacs "part {number}: {exc.reason}: {exc}"'.replace("\n", " "), ""
        finally:
            try:
                data.release()
            except BufferError:
                pass  # the store still holds a slice; released when that is collected
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


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix="stow-", suffix=".body", dir=folder)
