"""An encoded instance split into its parsed header and its pixel data bytes, kept exactly as received.

Storing an instance needs its attributes (to validate, de-identify and index it) but never its pixel
values: they are stored as received, no transcoding (ARCHITECTURE.md). Parsing stops before the top-level
Pixel Data element (PS3.5 §7.1), whose bytes are then walked, not decoded: a defined length (native
pixels, PS3.5 §A.4 does not apply) or an encapsulated sequence of items ending in a Sequence Delimitation
Item (PS3.5 §A.4). The stored file is the re-encoded header followed by those same bytes, so the
cost of a 6 MB radiograph does not depend on its pixels beyond one copy to disk.

Anything at top level after the pixel data (Data Set Trailing Padding, rare vendor elements) is reported,
so the store can keep it (no de-identification) or fall back to a full parse (de-identification).

Element headers, items and delimiters are read by :mod:`.elements`, the archive's one reader of encoded
elements, which the pixel pipeline's reader (:mod:`.pixel_header`) walks files with too.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import STANDARD_VR

from service.archive.elements import (
    LONG_VRS,
    PIXEL_TAGS,
    UNDEFINED_LENGTH,
    VR_SHAPED,
    EncodingError,
    TruncatedElement,
    element_header,
    walk_elements,
    walk_fragments,
)

DATASET_TRAILING_PADDING = 0xFFFCFFFC
# The VRs of PS3.5 Table 6.2-1 as they are encoded, with their text (explicit VR).
_VR_NAMES = {vr.encode("ascii"): str(vr) for vr in STANDARD_VR}
_CHARACTER_SET = 0x00080005
_INCOMPLETE, _UNSUPPORTED = "incomplete", "unsupported"


class TooLarge(EncodingError):
    """The dataset is larger than the store takes (a size limit, not a defect of its encoding)."""


# A deflated dataset (PS3.5 §A.5) is inflated and parsed whole in memory: it may inflate to this much at most.
INFLATED_LIMIT = 256 << 20
_INFLATE_STEP = 1 << 20


def inflate(data: bytes | memoryview, limit: int = INFLATED_LIMIT) -> bytes:
    """Inflate a deflated dataset, refusing (:class:`TooLarge`) one that would inflate beyond ``limit``.

    Its size is first counted as a stream, 1 MiB at a time and nothing kept, so a deflate bomb (a few
    hundred KB inflating to gigabytes) costs CPU, never memory; only a dataset within the limit is then
    inflated for real.
    """
    counter = zlib.decompressobj(-zlib.MAX_WBITS)
    total, rest = 0, bytes(data)
    while rest:
        total += len(counter.decompress(rest, _INFLATE_STEP))
        if total > limit:
            raise TooLarge(f"the deflated dataset inflates beyond {limit} bytes")
        rest = counter.unconsumed_tail
    total += len(counter.flush())
    if total > limit:
        raise TooLarge(f"the deflated dataset inflates beyond {limit} bytes")
    return zlib.decompress(bytes(data), -zlib.MAX_WBITS)


@dataclass
class EncodedInstance:
    """A received instance: ``dataset`` holds every top-level element before the pixel data.

    ``pixel_element`` is the complete top-level pixel data element (tag, VR, length and value) as
    received, or None when the instance has none or ``dataset`` was parsed in full (``complete``).
    """

    dataset: Dataset
    transfer_syntax: UID
    pixel_element: memoryview | None = None
    pixel_tag: int = 0
    # Bytes of the pixel value (defined length) or None when encapsulated.
    pixel_length: int | None = None
    fragments: int = 0
    trailing: memoryview = field(default_factory=lambda: memoryview(b""))
    trailing_tags: tuple[int, ...] = ()
    complete: bool = False
    # The bytes it was parsed from, for a full parse when the split is not enough.
    raw: bytes | memoryview | None = None
    # (SOP Class UID, SOP Instance UID) the C-STORE request announced (presentation context's abstract
    # syntax, Affected SOP Instance UID): the dataset must carry the same (PS3.4 B.2.3, PS3.7 §9.1.1).
    expected: tuple[str, str] | None = None

    @property
    def encapsulated(self) -> bool:
        return self.pixel_element is not None and self.pixel_length is None


_FIRST_READ = 64 * 1024


def _stop_at_pixels(tag: int, _vr: object, _length: int) -> bool:
    return tag in PIXEL_TAGS


def _deflated_file(data: bytes | memoryview, inflated_limit: int) -> EncodedInstance | None:
    """A Part 10 file whose dataset is deflated (PS3.5 §A.5), parsed under ``inflated_limit``; None otherwise.

    pydicom inflates such a dataset whole before reading it, so a deflate bomb would cost its inflated size
    in memory: the File Meta Information is read first and the dataset goes through :func:`inflate`.
    """
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        return None  # not a Part 10 file with a readable meta group: the full reader words the error
    if str(getattr(meta, "TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        return None
    enc = parse_dataset(memoryview(data)[fp.tell():], DeflatedExplicitVRLittleEndian, inflated_limit)
    enc.dataset.file_meta = meta
    return enc


# Standard transfer syntaxes that pydicom's dcmread does not read as explicit VR little endian, or not
# from the bytes as they are: the plain path of parse_file leaves them (and private ones) to it.
_NOT_PLAIN_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", DeflatedExplicitVRLittleEndian})
_TRANSFER_SYNTAX_UID = 0x00020010


def _plain_file(data: bytes | memoryview) -> EncodedInstance | None:
    """A Part 10 file read as :func:`parse_file` reads it with pydicom, without pydicom; None where that
    is not certain (anything but the common case: the caller then reads it with pydicom).

    The File Meta Information (PS3.10 §7.1: explicit VR little endian, group 0002) is walked only for its
    Transfer Syntax UID, which decides how the dataset is encoded, as dcmread decides it; the dataset is
    read by :func:`_read_plain`. The dataset is the same, element for element, as dcmread's with
    ``stop_before_pixels`` (tests/ingest/test_plain_reader.py), so the stored bytes are too. Its
    ``file_meta`` holds the transfer syntax only: the store writes File Meta Information of its own.
    """
    view = memoryview(data)
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        return None
    syntax, pos = None, None
    try:
        for tag, vr, length, start in walk_elements(view, 132, implicit=False):
            if tag >> 16 != 0x0002:
                if tag >> 16 == 0x0000:
                    return None  # a command set, which dcmread reads apart
                break
            if vr not in _VR_NAMES or length == UNDEFINED_LENGTH:
                return None
            if tag == _TRANSFER_SYNTAX_UID:
                if start + length > len(view):
                    return None
                syntax = bytes(view[start:start + length]).rstrip(b"\x00").decode("ascii")
            pos = start + length
    except (EncodingError, UnicodeDecodeError):
        return None
    if syntax is None or pos is None or syntax in _NOT_PLAIN_SYNTAXES or not syntax.replace(".", "").isdigit():
        return None
    tsyntax = UID(syntax)
    if tsyntax.is_private or not tsyntax.is_transfer_syntax or not tsyntax.is_little_endian:
        return None
    plain = _read_plain(view, tsyntax, pos)
    if not isinstance(plain, tuple):
        return None
    ds, offset = plain
    ds.get(BaseTag(_CHARACTER_SET))  # dcmread converts Specific Character Set as it reads (FileDataset's encoding)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    try:
        enc = _split(ds, tsyntax, data, offset)
    except EncodingError:
        return None  # pydicom words what is wrong
    enc.raw = data
    return enc


def parse_file(data: bytes | memoryview, inflated_limit: int = INFLATED_LIMIT) -> EncodedInstance:
    """A DICOM Part 10 file (preamble, "DICM", File Meta Information, dataset; PS3.10 §7.1).

    A deflated dataset is refused with :class:`TooLarge` when it would inflate beyond ``inflated_limit``.
    """
    plain = _plain_file(data)
    if plain is not None:
        return plain
    deflated = _deflated_file(data, inflated_limit)
    if deflated is not None:
        return deflated
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:
        # pydicom raises many kinds on garbage and can quote values in messages: only the kind is kept.
        raise EncodingError(f"not a readable DICOM file ({type(exc).__name__})") from None
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not tsyntax:
        raise EncodingError("the file has no Transfer Syntax UID in its File Meta Information")
    tsyntax = UID(str(tsyntax))
    enc = _split(ds, tsyntax, data, fp.tell())
    enc.raw = data
    return enc


def parse_dataset(data: bytes | memoryview, transfer_syntax: str, inflated_limit: int = INFLATED_LIMIT) -> EncodedInstance:
    """A bare dataset encoded in ``transfer_syntax``, as a C-STORE request carries it (PS3.7 §9.3.1)."""
    tsyntax = UID(str(transfer_syntax))
    if not tsyntax.is_transfer_syntax:
        raise EncodingError("unknown transfer syntax")
    if tsyntax == DeflatedExplicitVRLittleEndian:
        try:
            inflated = inflate(data, inflated_limit)
            full = read_dataset(io.BytesIO(inflated), False, True)
        except zlib.error:
            raise EncodingError("the deflated dataset does not inflate") from None
        except TooLarge:
            raise
        except Exception as exc:
            raise EncodingError(f"not a readable DICOM dataset ({type(exc).__name__})") from None
        full.file_meta = FileMetaDataset()
        full.file_meta.TransferSyntaxUID = tsyntax
        return _complete(full, tsyntax)
    plain = _read_plain(memoryview(data), tsyntax)
    if isinstance(plain, tuple):
        ds, offset = plain
    else:  # pydicom reads what the plain reader does not, and words the errors
        fp = io.BytesIO(data)
        try:
            ds = read_dataset(fp, tsyntax.is_implicit_VR, tsyntax.is_little_endian, stop_when=_stop_at_pixels)
        except Exception as exc:
            raise EncodingError(f"not a readable DICOM dataset ({type(exc).__name__})") from None
        offset = fp.tell()
    enc = _split(ds, tsyntax, data, offset)
    enc.raw = data
    return enc


def _read_plain(view: memoryview, tsyntax: UID, offset: int = 0) -> tuple[Dataset, int] | str:
    """The top-level elements before the pixel data, read as pydicom's ``read_dataset`` reads them.

    The common case only, in less than half of pydicom's time (40 elements: ~100 us against ~240 us
    here, with no check of the lengths to add after it): little endian, every element of defined
    length (PS3.5 §7.1.1-7.1.3; a sequence of defined length stays one raw element, as in pydicom),
    explicit VRs that are standard VRs. Returns (dataset, where the pixel data element or the end is),
    ``_INCOMPLETE`` when the bytes end inside an element or before any pixel data element, or
    ``_UNSUPPORTED`` for anything else (undefined lengths, item tags, unknown VRs, big endian, an
    encoding that pydicom would take for the other one): the caller then uses pydicom, so both readers
    give the same dataset for every input (tests/ingest/test_plain_reader.py). ``offset``: where the
    dataset starts in ``view`` (after a File Meta Information); positions are counted from the start of
    ``view``, as pydicom counts them in the file it reads.
    """
    if not tsyntax.is_little_endian:
        return _UNSUPPORTED
    implicit = tsyntax.is_implicit_VR
    # A header is a few KB; a stream's buffer can hold megabytes of pixels after it.
    limit = min(len(view), offset + _FIRST_READ)
    while True:
        result = _read_plain_bytes(bytes(view[:limit]), implicit, offset)
        if result != _INCOMPLETE or limit == len(view):
            return result
        limit = min(len(view), offset + (limit - offset) * 8)


def _read_plain_bytes(data: bytes, implicit: bool, offset: int = 0) -> tuple[Dataset, int] | str:
    end = len(data)
    if end >= offset + 6:
        # pydicom's read_dataset switches encoding when the first VR field says the other one.
        if (data[offset + 4:offset + 6] in VR_SHAPED) == implicit:
            return _UNSUPPORTED
    found: dict = {}
    vr_names, pixel_tags, make = _VR_NAMES, PIXEL_TAGS, tuple.__new__
    pos = offset  # where the element being read starts
    try:
        for tag, code, length, start in walk_elements(data, offset, implicit):
            if tag in pixel_tags:
                break
            if implicit:
                vr = None
            else:
                vr = vr_names.get(code)
                if vr is None:
                    return _UNSUPPORTED
            if tag >> 16 == 0xFFFE or length == UNDEFINED_LENGTH:
                return _UNSUPPORTED
            pos = start + length  # a value cut short: the walk raises TruncatedElement at the next step
            key = BaseTag(tag)
            value = data[start:pos] if length else empty_value_for_VR(vr, raw=True)
            found[key] = make(RawDataElement, (key, vr, length, value, start, implicit, True, True, False))
        else:
            return _INCOMPLETE  # the bytes end before any pixel data element
    except TruncatedElement as cut:
        if cut.tag not in pixel_tags:  # a pixel data element whose header is cut still ends the header
            return _INCOMPLETE
    ds = Dataset(found)
    encoding: str | list[str] = default_encoding
    if _CHARACTER_SET in found:
        encoding = convert_encodings(convert_raw_data_element(found[BaseTag(_CHARACTER_SET)]).value)
    ds.set_original_encoding(implicit, True, encoding)
    return ds, pos


def _complete(ds: Dataset, tsyntax: UID) -> EncodedInstance:
    pixel_length = None
    for tag in PIXEL_TAGS:
        if tag in ds:
            value = ds[tag].value
            pixel_length = None if tsyntax.is_encapsulated else len(value or b"")
    return EncodedInstance(ds, tsyntax, pixel_length=pixel_length, complete=True)


@dataclass(frozen=True)
class HeaderSplit:
    """Where the pixel data element starts in a dataset whose header has fully arrived."""

    instance: EncodedInstance  # the header only: no pixel element, no trailing bytes
    pixel_offset: int
    pixel_header_length: int
    pixel_length: int | None  # None: encapsulated (undefined length)


def parse_header(data: bytes | memoryview, transfer_syntax: str) -> HeaderSplit | None:
    """Parse a dataset still arriving, up to its pixel data element; None while that is not complete.

    Not for deflated transfer syntaxes. Raises :class:`EncodingError` only for what more bytes cannot
    fix (an element other than pixel data where parsing stopped).
    """
    tsyntax = UID(str(transfer_syntax))
    view = memoryview(data)
    plain = _read_plain(view, tsyntax)
    if plain == _INCOMPLETE:
        return None
    if isinstance(plain, tuple):
        ds, offset = plain
    else:
        fp = io.BytesIO(view)
        try:
            ds = read_dataset(fp, tsyntax.is_implicit_VR, tsyntax.is_little_endian, stop_when=_stop_at_pixels)
            _check_lengths(ds)
        except Exception:
            return None  # cut inside an element: wait for more
        offset = fp.tell()
    if offset >= len(view):
        return None
    try:
        tag, _vr, length, value_start = element_header(view, offset, tsyntax.is_implicit_VR, tsyntax.is_little_endian)
    except TruncatedElement:
        return None
    if tag not in PIXEL_TAGS:
        raise EncodingError("parsing stopped at an element that is not pixel data")
    return HeaderSplit(EncodedInstance(ds, tsyntax), offset, value_start - offset, None if length == UNDEFINED_LENGTH else length)


def split_pixel_data(data: bytes | memoryview, transfer_syntax: str, offset: int) -> EncodedInstance:
    """The pixel data element at ``offset`` of a complete dataset and what follows it (header not parsed)."""
    return _split(Dataset(), UID(str(transfer_syntax)), data, offset)


def _check_lengths(ds: Dataset) -> None:
    """pydicom keeps a value cut short by the end of the data without a word: refuse it here."""
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and elem.length != UNDEFINED_LENGTH and len(elem.value or b"") < elem.length:
            raise EncodingError(f"the dataset is truncated inside element ({tag >> 16:04X},{tag & 0xFFFF:04X})")


def _split(ds: Dataset, tsyntax: UID, data: bytes | memoryview, offset: int) -> EncodedInstance:
    _check_lengths(ds)
    view = memoryview(data)
    if offset >= len(view):
        return EncodedInstance(ds, tsyntax)
    implicit, little = tsyntax.is_implicit_VR, tsyntax.is_little_endian
    tag, _vr, length, value_start = element_header(view, offset, implicit, little)
    if tag not in PIXEL_TAGS:
        raise EncodingError("parsing stopped at an element that is not pixel data")
    fragments = 0
    if length == UNDEFINED_LENGTH:
        end, fragments = walk_fragments(view, value_start, little)
        pixel_length = None
    else:
        end = value_start + length
        if end > len(view):
            raise EncodingError(f"Pixel Data is truncated: {len(view) - value_start} of {length} bytes present")
        pixel_length = length
    trailing_tags = []
    pos = end
    while pos < len(view):
        t, _vr, vlen, vstart = element_header(view, pos, implicit, little)
        if vlen == UNDEFINED_LENGTH:
            raise EncodingError("an element of undefined length follows the pixel data")
        pos = vstart + vlen
        if pos > len(view):
            raise EncodingError("an element after the pixel data is truncated")
        trailing_tags.append(t)
    return EncodedInstance(
        ds, tsyntax, view[offset:end], tag, pixel_length, fragments, view[end:], tuple(trailing_tags)
    )


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, implementation_uid: str, implementation_version: str) -> bytes:
    """Preamble, "DICM" and File Meta Information, always Explicit VR Little Endian (PS3.10 §7.1)."""
    body = bytearray()
    body += _explicit_le(0x00020001, b"OB", b"\x00\x01")
    for tag, value in ((0x00020002, sop_class), (0x00020003, sop_instance), (0x00020010, transfer_syntax), (0x00020012, implementation_uid)):
        body += _explicit_le(tag, b"UI", _pad(value.encode("ascii"), b"\x00"))
    body += _explicit_le(0x00020013, b"SH", _pad(implementation_version.encode("ascii"), b" "))
    return b"\x00" * 128 + b"DICM" + _explicit_le(0x00020000, b"UL", struct.pack("<L", len(body))) + bytes(body)


def encode_dataset(ds: Dataset, transfer_syntax: UID) -> bytes:
    """Encode ``ds`` (no File Meta) in ``transfer_syntax``; elements still raw are copied byte for byte.

    pydicom's writer costs ~20 µs per element whatever it holds; most of a received header is never
    converted (de-identification touches few elements), so those are framed here and only changed
    elements go through pydicom. Sequences of undefined length and elements read in another encoding
    also go through pydicom. Not for deflated transfer syntaxes (the caller compresses).
    """
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    order = "<" if little else ">"
    tag_and_length, tag_vr_length, tag_vr_long = (struct.Struct(order + f).pack for f in ("HHL", "HH2sH", "HH2s2xL"))
    encodings = ds._character_set
    out: list[bytes] = []
    for elem in sorted(ds.elements(), key=_tag_of):
        tag = int(elem.tag)
        if (
            isinstance(elem, RawDataElement)
            and elem.is_implicit_VR == implicit
            and elem.is_little_endian == little
            and elem.length != UNDEFINED_LENGTH
            and (implicit or elem.VR)
        ):
            value = elem.value or b""
            if implicit:
                out.append(tag_and_length(tag >> 16, tag & 0xFFFF, len(value)))
            else:
                vr = elem.VR.encode("ascii")
                pack = tag_vr_long if vr in LONG_VRS else tag_vr_length
                out.append(pack(tag >> 16, tag & 0xFFFF, vr, len(value)))
            out.append(value)
        elif elem.VR == "UI" and isinstance(elem.value, str) and len(elem.value) < 0xFFFF:
            # What pydicom's write_string gives a single UID (PS3.5 §6.2: NUL padding to an even
            # length), without its per-element character set set-up; UIDs are ASCII.
            value = elem.value.encode("latin-1")
            if len(value) % 2:
                value += b"\x00"
            out.append(tag_and_length(tag >> 16, tag & 0xFFFF, len(value)) if implicit else tag_vr_length(tag >> 16, tag & 0xFFFF, b"UI", len(value)))
            out.append(value)
        else:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = implicit, little
            write_data_element(fp, ds[tag], encodings)
            out.append(fp.getvalue())
    return b"".join(out)


def _tag_of(elem) -> int:
    return int(elem.tag)


def _explicit_le(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value
