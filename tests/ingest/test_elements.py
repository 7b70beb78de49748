"""service/archive/elements.py: the one reader of encoded elements, on bytes built by hand and by pydicom.

The codec and the pixel pipeline's reader are tested against pydicom through it (test_plain_reader.py,
test_encoded.py, tests/data/test_pixel_header.py); here each framing rule and each refusal on its own.
"""

from __future__ import annotations

import struct

import pytest
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from service.archive.elements import ITEM, ITEM_DELIMITER, LONG_VRS, MAX_SEQUENCE_DEPTH, SEQUENCE_DELIMITER, UNDEFINED_LENGTH, VR_SHAPED
from service.archive.elements import EncodingError, TruncatedElement, element_header, skip_sequence, walk_elements, walk_fragments


def explicit(tag: int, vr: bytes, value: bytes, order: str = "<", length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack(order + "HH2s2xL", tag >> 16, tag & 0xFFFF, vr, n) + value
    return struct.pack(order + "HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def item(tag: int, value: bytes = b"", length: int | None = None, order: str = "<") -> bytes:
    return struct.pack(order + "HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def test_the_long_vr_table_is_pydicoms():
    assert LONG_VRS == {vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32}
    assert {vr.encode("ascii") for vr in STANDARD_VR} <= VR_SHAPED


def test_explicit_short_and_long_headers_and_implicit_headers():
    data = explicit(0x00100010, b"PN", b"DOE^J ") + explicit(0x00420011, b"OB", b"\x01\x02")
    assert list(walk_elements(data, 0, False)) == [(0x00100010, b"PN", 6, 8), (0x00420011, b"OB", 2, 26)]
    data = implicit(0x00100010, b"DOE^J ") + implicit(0x00280010, b"\x00\x01")
    assert list(walk_elements(data, 0, True)) == [(0x00100010, b"", 6, 8), (0x00280010, b"", 2, 22)]


def test_big_endian_headers():
    data = explicit(0x00280010, b"US", b"\x01\x00", ">") + explicit(0x7FE00010, b"OW", b"\x00" * 4, ">")
    assert element_header(data, 0, False, little=False) == (0x00280010, b"US", 2, 8)
    assert element_header(data, 10, False, little=False) == (0x7FE00010, b"OW", 4, 22)


def test_items_and_delimiters_have_no_vr_in_explicit_vr():
    data = item(SEQUENCE_DELIMITER)
    assert element_header(data, 0, False) == (SEQUENCE_DELIMITER, b"", 0, 8)


def test_a_cut_header_is_truncated_and_names_the_tag_once_known():
    data = explicit(0x7FE00010, b"OB", b"")
    with pytest.raises(TruncatedElement, match="ends inside an element header") as short:
        element_header(data[:7], 0, False)
    assert short.value.tag is None
    with pytest.raises(TruncatedElement) as long_cut:
        element_header(data[:10], 0, False)
    assert long_cut.value.tag == 0x7FE00010
    with pytest.raises(TruncatedElement):
        element_header(data, len(data), False)  # at the very end: no element there


def test_a_cut_value_is_truncated_once_the_walk_steps_over_it():
    data = explicit(0x00100010, b"PN", b"DOE^J ")[:-2]
    walk = walk_elements(data, 0, False)
    assert next(walk) == (0x00100010, b"PN", 6, 8)  # the header is complete
    with pytest.raises(TruncatedElement, match="inside an element's value"):
        next(walk)


def test_truncation_is_an_encoding_error_and_a_value_error():
    assert issubclass(TruncatedElement, EncodingError) and issubclass(EncodingError, ValueError)


def _sequence(*items: bytes) -> bytes:
    return b"".join(items) + item(SEQUENCE_DELIMITER)


def test_a_sequence_of_undefined_length_is_walked_over():
    inner = explicit(0x00080100, b"SH", b"T-1234") + item(ITEM_DELIMITER)
    nested = explicit(0x00082218, b"SQ", b"", length=UNDEFINED_LENGTH) + _sequence(item(ITEM, inner, UNDEFINED_LENGTH))
    body = _sequence(item(ITEM, explicit(0x00080100, b"SH", b"AB")), item(ITEM, nested + item(ITEM_DELIMITER), UNDEFINED_LENGTH))
    data = explicit(0x00082218, b"SQ", b"", length=UNDEFINED_LENGTH) + body + explicit(0x00280010, b"US", b"\x10\x00")
    assert [tag for tag, *_ in walk_elements(data, 0, False)] == [0x00082218, 0x00280010]
    assert skip_sequence(data, 12, implicit=False) == len(data) - 10


def test_un_of_undefined_length_holds_implicit_vr():
    inner = implicit(0x00080100, b"T-1234") + item(ITEM_DELIMITER)
    data = explicit(0x00091010, b"UN", b"", length=UNDEFINED_LENGTH) + _sequence(item(ITEM, inner, UNDEFINED_LENGTH))
    assert [tag for tag, *_ in walk_elements(data, 0, False)] == [0x00091010]


def test_undefined_length_outside_a_sequence_is_refused():
    data = explicit(0x00100010, b"OB", b"", length=UNDEFINED_LENGTH) + item(SEQUENCE_DELIMITER)
    walk = walk_elements(data, 0, False)
    next(walk)
    with pytest.raises(EncodingError, match="undefined length is not a sequence"):
        next(walk)


def test_a_sequence_with_other_than_items_is_refused():
    with pytest.raises(EncodingError, match="other than items"):
        skip_sequence(implicit(0x00100010, b"AB"), 0, implicit=True)


def test_a_sequence_without_its_delimiter_is_truncated():
    with pytest.raises(TruncatedElement):
        skip_sequence(item(ITEM, b"\x00" * 4), 0, implicit=True)
    with pytest.raises(TruncatedElement):
        skip_sequence(item(ITEM, b"\x00" * 4)[:-2], 0, implicit=True)
    with pytest.raises(TruncatedElement, match="without its delimiter"):
        skip_sequence(item(ITEM, implicit(0x00080100, b"AB"), UNDEFINED_LENGTH), 0, implicit=True)


def test_a_vr_field_that_is_no_vr_inside_a_sequence_is_refused():
    inner = explicit(0x00080100, b"\x00\x01", b"AB") + item(ITEM_DELIMITER)
    with pytest.raises(EncodingError, match="holds no VR"):
        skip_sequence(_sequence(item(ITEM, inner, UNDEFINED_LENGTH)), 0, implicit=False)


def test_sequences_nested_too_deep_are_refused():
    data = item(SEQUENCE_DELIMITER)
    for _ in range(MAX_SEQUENCE_DEPTH + 2):
        data = item(ITEM, implicit(0x00082218, b"", UNDEFINED_LENGTH) + data + item(ITEM_DELIMITER), UNDEFINED_LENGTH) + item(SEQUENCE_DELIMITER)
    with pytest.raises(EncodingError, match="nested more than"):
        skip_sequence(data, 0, implicit=True)


def test_encapsulated_fragments_are_counted_after_the_offset_table():
    data = item(ITEM) + item(ITEM, b"\xff\xd8\xff\xd9") + item(ITEM, b"\x00\x00") + item(SEQUENCE_DELIMITER)
    assert walk_fragments(data, 0) == (len(data), 2)
    big = b"".join(item(ITEM, v, order=">") for v in (b"", b"\x01\x02")) + item(SEQUENCE_DELIMITER, order=">")
    assert walk_fragments(big, 0, little=False) == (len(big), 1)


@pytest.mark.parametrize(
    "data, message",
    [
        (item(ITEM) + item(ITEM, b"\x00\x00"), "no Sequence Delimitation Item"),
        (item(ITEM) + item(ITEM, b"\x00\x00")[:-1], "fragment is truncated"),
        (item(ITEM) + item(ITEM, b"", UNDEFINED_LENGTH), "other than items"),
        (item(ITEM) + implicit(0x00100010, b"AB"), "other than items"),
    ],
)
def test_broken_encapsulated_pixel_data_is_refused(data, message):
    with pytest.raises(EncodingError, match=message):
        walk_fragments(data, 0)
