"""WADO-RS, the retrieve transaction (PS3.18 10.4): instances, metadata, bulk data and frames.

* Studies, series and instances come as ``multipart/related; type="application/dicom"``, one part per
  instance. In the stored transfer syntax (``transfer-syntax=*``, or the one stored) each file is sent
  from disk in chunks as it is, byte for byte; a client that asks for Explicit or Implicit VR Little
  Endian (the default of 8.7.3.5.2 when ``application/dicom`` names none) gets the instance
  decompressed and re-encoded. A compressed syntax other than the stored one is not offered (406).
  ``application/dicom`` alone (a single part) is answered for one instance.
* Metadata (10.4.1.1.2) as ``application/dicom+json``: every stored header, with ``BulkDataURI`` for the
  pixel data and other large binary values, which the bulkdata resource (10.4.1.1.5) answers.
* Frames (10.4.1.1.4) as ``application/octet-stream`` (uncompressed, little endian); a compressed
  instance's frames are decoded, or sent as stored when the client asks for their own media type
  (``image/jpeg``, ``image/jls``, ``image/jp2``).

``qr.synthetic_only`` hides every instance that is not synthetic, here as in C-FIND: they are not found.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from service.archive.index import InstanceRecord
from service.config import Config
from service.dicomweb import dicomjson, media
from service.dicomweb.errors import BadRequest, NotAcceptable, NotFound

CHUNK = 1 << 20
_ORDER = "se.series_number, i.series_uid, i.instance_number, i.sop_instance_uid"
# The media type of a compressed frame, by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


@dataclass(frozen=True)
class InstancePlan:
    """How instances will be sent: multipart or a single body, and in which transfer syntax ("*": as stored)."""

    multipart: bool
    transfer_syntax: str


def _file_chunks(path: Any) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def read_body(path: Any, head: bytes = b"", tail: bytes = b"") -> memoryview:
    """``head``, the file's bytes and ``tail`` in one buffer, the file read straight into it (no other copy)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(len(head) + size + len(tail))
        view = memoryview(buf)
        view[: len(head)] = head
        pos = len(head)
        while pos < len(head) + size:
            got = fh.readinto(view[pos: len(head) + size])
            if not got:
                break  # the file became shorter while read: send what it holds
            pos += got
        view[pos: pos + len(tail)] = tail
        return view[: pos + len(tail)]


def transcode(path: Any, target: str) -> bytes:
    """The instance at ``path`` as a Part 10 file in an uncompressed ``target`` syntax."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = UID(target)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=target == media.IMPLICIT_VR_LITTLE_ENDIAN, little_endian=True)
    return buf.getvalue()


def negotiate_instances(accept: list[media.MediaRange], stored: set[str], single: bool) -> InstancePlan:
    """Pick the first acceptable representation of instances (PS3.18 8.7.5) or raise NotAcceptable."""
    for rng in accept:
        if rng.type in ("*/*", "multipart/*"):
            return InstancePlan(True, "*")
        if rng.type == media.MULTIPART_RELATED:
            part_type = (rng.param("type") or media.DICOM).lower()
            if part_type not in (media.DICOM, "*/*", "application/*"):
                continue
            multipart = True
        elif rng.type in (media.DICOM, "application/*") and single:
            multipart = False
        else:
            continue
        wanted = rng.param("transfer-syntax") or media.EXPLICIT_VR_LITTLE_ENDIAN
        if wanted == "*" or all(ts == wanted for ts in stored) or wanted in media.UNCOMPRESSED:
            return InstancePlan(multipart, wanted)
    raise NotAcceptable(
        'instances are offered as multipart/related; type="application/dicom" in their stored transfer syntax '
        "(transfer-syntax=*) or uncompressed (1.2.840.10008.1.2.1, 1.2.840.10008.1.2)"
    )


class Wado:
    """WADO-RS over one store."""

    def __init__(self, cfg: Config, store: Any):
        self.cfg = cfg
        self.store = store

    # -- finding ------------------------------------------------------------------------------------------

    def records(self, study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRecord]:
        where, params = ["i.study_uid = ?"], [study]
        if series is not None:
            where.append("i.series_uid = ?")
            params.append(series)
        if sop is not None:
            where.append("i.sop_instance_uid = ?")
            params.append(sop)
        if self.cfg.qr.synthetic_only:
            where.append("i.synthetic = 1")
        found = list(self.store.index.instances(" AND ".join(where), tuple(params), order=_ORDER))
        if not found:
            what = "instance" if sop else "series" if series else "study"
            raise NotFound(f"no such {what} in this archive")
        return found

    # -- instances ----------------------------------------------------------------------------------------

    def instance_parts(self, records: list[InstanceRecord], plan: InstancePlan, location: Callable[[InstanceRecord], str]):
        """(content type, chunks, location) of each instance, read or transcoded as it is sent."""
        for rec in records:
            path = self.store.path_of(rec)
            if plan.transfer_syntax in ("*", rec.transfer_syntax_uid):
                yield f"{media.DICOM}; transfer-syntax={rec.transfer_syntax_uid}", _file_chunks(path), location(rec)
            else:
                yield f"{media.DICOM}; transfer-syntax={plan.transfer_syntax}", iter([transcode(path, plan.transfer_syntax)]), location(rec)

    # -- metadata and bulk data ---------------------------------------------------------------------------

    def metadata(self, records: list[InstanceRecord], instance_url: Callable[[InstanceRecord], str]) -> Iterator[dict]:
        """The JSON model of each instance's stored header, large binary values by BulkDataURI (PS3.18 F.2.6)."""
        for rec in records:
            ds = pydicom.dcmread(self.store.path_of(rec), stop_before_pixels=True)
            base = instance_url(rec)
            item = dicomjson.to_json(ds, lambda tag: f"{base}/bulk/{tag}")
            if rec.rows:
                ts = UID(rec.transfer_syntax_uid)
                vr = "OB" if ts.is_encapsulated or int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
                item["7FE00010"] = {"vr": vr, "BulkDataURI": f"{base}/bulk/7FE00010"}
            yield item

    def bulk(self, rec: InstanceRecord, tag_text: str) -> bytes:
        try:
            tag = int(tag_text, 16)
        except ValueError:
            raise BadRequest("a bulk data reference is a tag in 8 hex digits") from None
        ds = pydicom.dcmread(self.store.path_of(rec))
        if len(tag_text) != 8 or tag not in ds or ds[tag].VR == "SQ":
            raise NotFound("this instance has no such bulk data")
        value = ds[tag].value
        return value if isinstance(value, bytes) else bytes(value)

    # -- frames -------------------------------------------------------------------------------------------

    def frames(self, rec: InstanceRecord, numbers: list[int], accept: list[media.MediaRange]) -> tuple[str, list[bytes]]:
        """(part content type, frame bytes) for the requested frames (PS3.18 10.4.1.1.4), numbered from 1."""
        ds = pydicom.dcmread(self.store.path_of(rec))
        if "PixelData" not in ds:
            raise NotFound("this instance has no pixel data, so no frames")
        count = int(ds.get("NumberOfFrames", 1) or 1)
        for n in numbers:
            if not 1 <= n <= count:
                raise NotFound(f"frame {n} does not exist: this instance has {count}")
        ts = ds.file_meta.TransferSyntaxUID
        native_type = FRAME_MEDIA_TYPES.get(str(ts))
        for rng in accept:
            inner = rng.param("type") if rng.type == media.MULTIPART_RELATED else rng.type
            inner = (inner or media.OCTET_STREAM).lower()
            wanted = rng.param("transfer-syntax")
            if native_type and inner == native_type and wanted in (None, "*", str(ts)):
                frames = list(generate_frames(ds.PixelData, number_of_frames=count))
                return f"{native_type}; transfer-syntax={ts}", [frames[n - 1] for n in numbers]
            if inner in (media.OCTET_STREAM, "*/*", "application/*") and wanted in (None, "*", media.EXPLICIT_VR_LITTLE_ENDIAN):
                return f"{media.OCTET_STREAM}; transfer-syntax={media.EXPLICIT_VR_LITTLE_ENDIAN}", [uncompressed_frame(ds, n, count) for n in numbers]
        raise NotAcceptable(
            'frames are offered as multipart/related; type="application/octet-stream" (uncompressed)'
            + (f" or as stored ({native_type})" if native_type else "")
        )


def uncompressed_frame(ds: Dataset, number: int, count: int) -> bytes:
    """Frame ``number`` (from 1) as little-endian pixel values, as Explicit VR Little Endian would hold them."""
    ts = ds.file_meta.TransferSyntaxUID
    bits = int(ds.BitsAllocated)
    if not ts.is_compressed and bits % 8 == 0 and ts.is_little_endian:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        return bytes(ds.PixelData[(number - 1) * size: number * size])
    arr = ds.pixel_array
    frame = arr[number - 1] if count > 1 else arr
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise BadRequest("a frame list is comma-separated frame numbers, from 1 (PS3.18 10.4.1.1.4)") from None
    if not numbers or any(n < 1 for n in numbers):
        raise BadRequest("frame numbers start at 1 (PS3.18 10.4.1.1.4)")
    return numbers
