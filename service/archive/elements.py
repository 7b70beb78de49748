"""The one low-level reader of encoded DICOM elements: tag, VR, length, items and delimiters (PS3.5 §7).

Both readers of stored bytes walk their elements with it: the header codec (:mod:`.encoded`), which
splits an instance into its parsed header and its pixel data bytes, and the one-pass reader of the
pixel pipeline's attributes (:mod:`.pixel_header`). It knows the framing only, never a value's
meaning: where an element starts, what its tag and VR are, how long its value is, and where a
sequence or encapsulated pixel data of undefined length ends.

Explicit and implicit VR, little and big endian. Every read is checked against the end of the bytes:
a read cut short raises :class:`TruncatedElement`, so a caller still receiving a stream can tell
"more bytes would complete it" from "this is not DICOM" (:class:`EncodingError`). Messages name
what is wrong, never a value. No pydicom here: dataset-build worker processes import this module.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

UNDEFINED_LENGTH = 0xFFFFFFFF
# Items and delimiters carry no VR and a 4-byte length in every transfer syntax (PS3.5 §7.5).
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Top-level elements that hold pixel values: Float, Double Float and (plain) Pixel Data (PS3.3 C.7.6.3).
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
# Explicit VR encodings with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1); the
# others have a 2-byte length (Table 7.1-2). tests/ingest/test_elements.py checks it against pydicom.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# Two upper-case letters: the shape of every VR (PS3.5 §6.2), known or not. A VR field of another shape
# says the bytes are not in the encoding their transfer syntax names.
VR_SHAPED = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91))
# Deeper nesting than this is refused rather than followed (a crafted file could recurse without end).
MAX_SEQUENCE_DEPTH = 16

# (tag and 4-byte length; tag, VR and 2-byte length; a 4-byte length) for each byte order.
_LITTLE = (struct.Struct("<HHL").unpack_from, struct.Struct("<HH2sH").unpack_from, struct.Struct("<L").unpack_from)
_BIG = (struct.Struct(">HHL").unpack_from, struct.Struct(">HH2sH").unpack_from, struct.Struct(">L").unpack_from)


class EncodingError(ValueError):
    """The bytes are not a DICOM dataset we can store; the message says what is wrong, never a value."""


class TruncatedElement(EncodingError):
    """The bytes end inside an element header or value; more of them could complete it.

    ``tag`` is the element's tag when its first 8 bytes were there (an explicit VR header of the long
    form cut after them), else None.
    """

    def __init__(self, message: str, tag: int | None = None):
        super().__init__(message)
        self.tag = tag


def walk_elements(buf: bytes | memoryview, pos: int, implicit: bool, little: bool = True, depth: int = 0) -> Iterator[tuple[int, bytes, int, int]]:
    """The elements from ``pos`` on, as (tag, VR, value length, where the value starts) (PS3.5 §7.1.1-7.1.3).

    The VR is the two bytes as encoded, b"" under implicit VR and for items and delimiters, which have
    no VR field in any transfer syntax (PS3.5 §7.5); it is not checked (:data:`VR_SHAPED`). Each element
    is yielded before its value is stepped over, so a caller stops at an element whose value it takes
    whole (pixel data) or refuses (an undefined length) before it is walked: a value of defined length
    is stepped over, a sequence of undefined length walked to its delimiter (:func:`skip_sequence`).
    Ends where the bytes end; raises :class:`TruncatedElement` where they end inside an element.
    ``depth`` is how many sequences the elements are nested in (see :data:`MAX_SEQUENCE_DEPTH`).
    """
    end = len(buf)
    tag_and_length, tag_vr_length, u32 = _LITTLE if little else _BIG
    while pos < end:
        if pos + 8 > end:
            raise TruncatedElement("the dataset ends inside an element header")
        if implicit:
            group, number, length = tag_and_length(buf, pos)
            vr = b""
            start = pos + 8
        else:
            group, number, vr, length = tag_vr_length(buf, pos)
            start = pos + 8
            if group == 0xFFFE:
                vr, length = b"", u32(buf, pos + 4)[0]
            elif vr in LONG_VRS:
                if start + 4 > end:
                    raise TruncatedElement("the dataset ends inside an element header", (group << 16) | number)
                length = u32(buf, start)[0]
                start += 4
        yield (group << 16) | number, vr, length, start
        if length != UNDEFINED_LENGTH:
            pos = start + length
            if pos > end:
                raise TruncatedElement("the dataset ends inside an element's value")
        elif implicit or vr in (b"SQ", b"UN"):
            pos = skip_sequence(buf, start, implicit or vr == b"UN", little, depth)
        else:
            raise EncodingError("an element of undefined length is not a sequence")


def element_header(buf: bytes | memoryview, pos: int, implicit: bool, little: bool = True) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, where the value starts) of the one element at ``pos``: see :func:`walk_elements`."""
    for header in walk_elements(buf, pos, implicit, little):
        return header
    raise TruncatedElement("the dataset ends inside an element header")


def item_header(buf: bytes | memoryview, pos: int, little: bool = True) -> tuple[int, int]:
    """(tag, length) of the item or delimiter at ``pos``: a tag and a 4-byte length, no VR (PS3.5 §7.5)."""
    if pos + 8 > len(buf):
        raise TruncatedElement("the dataset ends inside an item header")
    group, number, length = (_LITTLE if little else _BIG)[0](buf, pos)
    return (group << 16) | number, length


def walk_fragments(buf: bytes | memoryview, pos: int, little: bool = True) -> tuple[int, int]:
    """(end, number of fragments) of encapsulated pixel data whose first item is at ``pos`` (PS3.5 §A.4).

    Items of defined length only (the Basic Offset Table first, not counted, then the fragments),
    ending in a Sequence Delimitation Item.
    """
    items = 0
    while True:
        try:
            tag, length = item_header(buf, pos, little)
        except TruncatedElement:
            raise TruncatedElement("encapsulated Pixel Data is truncated (no Sequence Delimitation Item)") from None
        pos += 8
        if tag == SEQUENCE_DELIMITER:
            return pos, max(items - 1, 0)
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise EncodingError("encapsulated Pixel Data holds something other than items")
        pos += length
        if pos > len(buf):
            raise TruncatedElement("an encapsulated Pixel Data fragment is truncated")
        items += 1


def skip_sequence(buf: bytes | memoryview, pos: int, implicit: bool, little: bool = True, depth: int = 0) -> int:
    """Where a sequence of undefined length ends, its first item at ``pos`` (PS3.5 §7.5.1-7.5.2).

    Items of defined length are stepped over; an item of undefined length is walked element by
    element up to its Item Delimitation Item, nested sequences of undefined length the same way, at
    most :data:`MAX_SEQUENCE_DEPTH` deep. An element of undefined length must be a sequence (SQ), or
    UN, which holds a sequence in implicit VR little endian (PS3.5 §6.2.2). An explicit VR field
    that is no VR (:data:`VR_SHAPED`) means the bytes are not what the transfer syntax says.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise EncodingError(f"sequences are nested more than {MAX_SEQUENCE_DEPTH} deep")
    while True:
        tag, length = item_header(buf, pos, little)
        pos += 8
        if tag == SEQUENCE_DELIMITER:
            return pos
        if tag != ITEM:
            raise EncodingError("a sequence holds something other than items")
        if length != UNDEFINED_LENGTH:
            pos += length
            if pos > len(buf):
                raise TruncatedElement("an item of a sequence is truncated")
            continue
        # An item of undefined length: its elements, up to the item delimiter.
        for tag, vr, _length, start in walk_elements(buf, pos, implicit, little, depth + 1):
            if tag == ITEM_DELIMITER:
                pos = start
                break
            if vr and vr not in VR_SHAPED:
                raise EncodingError("an element's VR field holds no VR")
        else:
            raise TruncatedElement("an item of a sequence ends without its delimiter")
