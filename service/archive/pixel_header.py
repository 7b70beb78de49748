"""A one-pass reader of what the pixel pipeline needs from a plain radiograph file.

pydicom builds a full :class:`pydicom.Dataset` (every element, lazily converted values, a slow
``__getitem__``); on a 400 x 450 radiograph that costs as much as decoding and resizing the pixels.
The pipeline reads only the Image Pixel, Modality LUT, VOI LUT and Presentation LUT attributes listed in
:data:`_WANTED` and the Pixel Data, so for the common case it walks the encoded elements once
with the archive's element reader (:mod:`.elements`; PS3.5 §7.1: tag, VR, length; §7.5: items and
delimiters of nested sequences) and keeps those.

The common case is a Part 10 file (PS3.10 §7.1: preamble, ``DICM``, explicit VR little endian File
Meta Information) in implicit or explicit VR little endian, single frame, MONOCHROME1/2, 8 or 16 bits
allocated, one sample per pixel, Pixel Data of defined length, and no attribute the pipeline would
have to read through pydicom (Modality or VOI LUT Sequence, functional groups, float pixel data).
For anything else, and for any element that is not exactly as expected (a length that runs past the
end, a value of the wrong VR or multiplicity, text that is not ASCII), :func:`read_header` returns
None and the caller reads the file with pydicom. Whatever it accepts gives the same values as pydicom,
so both paths produce the same image and the same dataset content hash (tests/data/test_pixel_header.py).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from service.archive.elements import PIXEL_DATA, UNDEFINED_LENGTH, VR_SHAPED, EncodingError, walk_elements

_NATIVE_LE = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}  # transfer syntax -> explicit VR
_TRANSFER_SYNTAX = 0x00020010

# tag -> (keyword, accepted VRs in explicit files, kind of value)
_WANTED: dict[int, tuple[str, tuple[bytes, ...], str]] = {
    0x00280002: ("SamplesPerPixel", (b"US",), "US"),
    0x00280004: ("PhotometricInterpretation", (b"CS",), "CS"),
    0x00280008: ("NumberOfFrames", (b"IS",), "IS"),
    0x00280010: ("Rows", (b"US",), "US"),
    0x00280011: ("Columns", (b"US",), "US"),
    0x00280100: ("BitsAllocated", (b"US",), "US"),
    0x00280101: ("BitsStored", (b"US",), "US"),
    0x00280103: ("PixelRepresentation", (b"US",), "US"),
    0x00280120: ("PixelPaddingValue", (b"US", b"SS"), "US|SS"),
    0x00280121: ("PixelPaddingRangeLimit", (b"US", b"SS"), "US|SS"),
    0x00281050: ("WindowCenter", (b"DS",), "DS"),
    0x00281051: ("WindowWidth", (b"DS",), "DS"),
    0x00281052: ("RescaleIntercept", (b"DS",), "DS"),
    0x00281053: ("RescaleSlope", (b"DS",), "DS"),
    0x00281056: ("VOILUTFunction", (b"CS",), "CS"),
    0x20500020: ("PresentationLUTShape", (b"CS",), "CS"),
}
# Present anywhere at the top level: the pipeline needs pydicom for these.
_NEEDS_PYDICOM = frozenset({
    0x00283000,  # Modality LUT Sequence
    0x00283010,  # VOI LUT Sequence
    0x52009229,  # Shared Functional Groups Sequence
    0x52009230,  # Per-frame Functional Groups Sequence
    0x7FE00008,  # Float Pixel Data
    0x7FE00009,  # Double Float Pixel Data
})

_U16 = struct.Struct("<H")
_I16 = struct.Struct("<h")


class _NotPlain(Exception):
    """The file is outside the plain case; read it with pydicom."""


@dataclass(frozen=True)
class _FileMeta:
    TransferSyntaxUID: str


class HeaderDataset:
    """The attributes read, answered the way the pipeline asks a pydicom Dataset for them."""

    def __init__(self, values: dict[str, Any], transfer_syntax: str, pixel_data: memoryview):
        self._values = values
        self.file_meta = _FileMeta(transfer_syntax)
        self.PixelData = pixel_data

    def get(self, keyword: str, default: Any = None) -> Any:
        if keyword == "PixelData":
            return self.PixelData
        return self._values.get(keyword, default)

    def __contains__(self, key: object) -> bool:
        return key == "PixelData" or key in self._values

    def __repr__(self) -> str:
        return f"HeaderDataset({sorted(self._values)}, {len(self.PixelData)} bytes of Pixel Data)"


def read_header(data: bytes | memoryview) -> HeaderDataset | None:
    """The pipeline's attributes and Pixel Data of a plain file, or None when pydicom must read it."""
    try:
        return _read(memoryview(data))
    except (_NotPlain, EncodingError, struct.error, UnicodeDecodeError, ValueError, IndexError):
        return None


def _read(buf: memoryview) -> HeaderDataset:
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise _NotPlain
    pos, syntax = _read_meta(buf, 132)
    explicit = _NATIVE_LE.get(syntax)
    if explicit is None:
        raise _NotPlain
    values: dict[str, Any] = {}
    pixel_data: memoryview | None = None
    # A sequence of undefined length is walked over by the reader; its VR is checked here first.
    for tag, vr, length, start in walk_elements(buf, pos, not explicit):
        if tag in _NEEDS_PYDICOM or (vr and vr not in VR_SHAPED):
            raise _NotPlain  # a VR field that is no VR: the file is not what its transfer syntax says
        if tag == PIXEL_DATA:
            if length == UNDEFINED_LENGTH or start + length > len(buf):
                raise _NotPlain  # encapsulated or truncated pixel data
            pixel_data = buf[start : start + length]
            break
        wanted = _WANTED.get(tag)
        if wanted is not None and length != UNDEFINED_LENGTH:
            keyword, vrs, kind = wanted
            if explicit and vr not in vrs:
                raise _NotPlain
            value = _value(buf[start : start + length], vr, kind)
            if value is not None:
                values[keyword] = value
    if pixel_data is None:
        raise _NotPlain  # no Pixel Data: pydicom gives the reason
    _check_plain(values)
    return HeaderDataset(values, syntax, pixel_data)


def _read_meta(buf: memoryview, pos: int) -> tuple[int, str]:
    """File Meta Information (group 0002, always explicit VR little endian): its end and the syntax."""
    syntax = None
    for tag, _vr, length, start in walk_elements(buf, pos, False):
        if tag >> 16 != 0x0002:
            break
        if length == UNDEFINED_LENGTH or start + length > len(buf):
            raise _NotPlain
        if tag == _TRANSFER_SYNTAX:
            syntax = bytes(buf[start : start + length]).decode("ascii").rstrip("\0 ")
        pos = start + length
    if syntax is None:
        raise _NotPlain
    return pos, syntax


def _value(raw: memoryview, vr: bytes, kind: str) -> Any:
    """The value as the pipeline reads it from pydicom; several values are plain only for DS."""
    if kind == "US" or kind == "US|SS":
        if len(raw) == 0:
            return None
        if len(raw) != 2:
            raise _NotPlain
        # Implicit VR "US or SS": read unsigned; the pipeline maps values above 32767 itself when the
        # pixels are signed, as it does for pydicom's unsigned reading.
        return (_I16 if vr == b"SS" else _U16).unpack_from(raw)[0]
    text = bytes(raw).decode("ascii").strip(" \0")
    if "\\" in text and kind != "DS":
        raise _NotPlain
    if kind == "CS":
        return text
    if not text:
        return None
    if kind == "IS":
        if not text.lstrip("+-").isdigit():
            raise _NotPlain
        return int(text)
    # DS: several values (a CR's alternative windows) come as a list, as pydicom's MultiValue does;
    # the pipeline takes the first.
    numbers = [float(part) for part in text.split("\\")]
    if not all(math.isfinite(n) for n in numbers):
        raise _NotPlain
    return numbers[0] if len(numbers) == 1 else numbers


def _check_plain(values: dict[str, Any]) -> None:
    if values.get("PhotometricInterpretation", "").upper() not in ("MONOCHROME1", "MONOCHROME2"):
        raise _NotPlain
    if values.get("BitsAllocated") not in (8, 16) or values.get("SamplesPerPixel", 1) != 1:
        raise _NotPlain
    if values.get("NumberOfFrames", 1) != 1:
        raise _NotPlain
