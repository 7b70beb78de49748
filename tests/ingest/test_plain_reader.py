"""The plain header reader (encoded._read_plain) gives exactly what pydicom's read_dataset gives.

Every stored byte depends on it: a header read differently would store different bytes, and a re-sent
instance would no longer be recognized as identical. So the reader is compared with pydicom element by
element on every file pydicom and pydicom-data ship, at every cut of a streamed header, and through the
store, which must write the same bytes whichever reader parsed the instance.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from service.archive import encoded
from service.archive.encoded import _INCOMPLETE, _UNSUPPORTED, _read_plain, _stop_at_pixels, parse_header
from service.archive.store import Store, StoreError
from service.data.phantom import phantom_dataset
from tests.helpers import make_config


def _corpus() -> list[Path]:
    """Local files only (pydicom's getters would try to download the rest)."""
    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    files = sorted(p for root in roots for p in root.rglob("*.dcm") if p.stat().st_size < 4_000_000)
    return files


def encode_body(ds: pydicom.Dataset, ts: UID) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = ts.is_little_endian, ts.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


def _body(path: Path) -> tuple[bytes, UID] | None:
    data = path.read_bytes()
    try:
        fp = io.BytesIO(data)
        pydicom.filereader.read_preamble(fp, False)
        meta = pydicom.filereader._read_file_meta_info(fp)
    except Exception:
        return None
    ts = getattr(meta, "TransferSyntaxUID", None)
    if not ts:
        return None
    return data[fp.tell():], UID(str(ts))


# Files without File Meta Information (a few of pydicom's) have no transfer syntax to read them with.
CORPUS = [p for p in _corpus() if _body(p) is not None]


def _same_dataset(ours, theirs) -> None:
    assert list(ours.keys()) == list(theirs.keys())
    for tag in theirs.keys():
        a, b = ours.get_item(tag, keep_deferred=True), theirs.get_item(tag, keep_deferred=True)
        assert type(a) is type(b) and type(a.tag) is type(b.tag)
        assert tuple(a) == tuple(b), f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    assert ours._character_set == theirs._character_set


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_plain_reader_reads_what_pydicom_reads(path):
    body, ts = _body(path)  # type: ignore[misc]
    plain = _read_plain(memoryview(body), ts)
    if not isinstance(plain, tuple):
        assert plain in (_INCOMPLETE, _UNSUPPORTED)
        return
    ds, offset = plain
    fp = io.BytesIO(body)
    expected = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_stop_at_pixels)
    _same_dataset(ds, expected)
    assert offset == fp.tell()


def test_most_of_the_corpus_takes_the_plain_path():
    # Guards the test above against passing because everything fell back to pydicom.
    taken = 0
    for path in CORPUS:
        body, ts = _body(path)  # type: ignore[misc]
        taken += isinstance(_read_plain(memoryview(body), ts), tuple)
    assert len(CORPUS) > 50
    assert taken > len(CORPUS) // 2


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_every_cut_of_a_streamed_header_reads_as_with_pydicom(ts, monkeypatch):
    ds = phantom_dataset(rows=8, columns=8, seed=3)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstitutionName = "Hôpital"
    body = encode_body(ds, ts)
    fast = [parse_header(body[:cut], ts) for cut in range(len(body) + 1)]
    monkeypatch.setattr(encoded, "_read_plain", lambda view, tsyntax: _UNSUPPORTED)
    slow = [parse_header(body[:cut], ts) for cut in range(len(body) + 1)]
    assert [s is None for s in fast] == [s is None for s in slow]
    assert any(s is not None for s in fast)
    for a, b in zip(fast, slow):
        if a is not None:
            assert (a.pixel_offset, a.pixel_header_length, a.pixel_length) == (b.pixel_offset, b.pixel_header_length, b.pixel_length)
            _same_dataset(a.instance.dataset, b.instance.dataset)


def test_undefined_lengths_and_other_encodings_are_left_to_pydicom():
    ds = phantom_dataset(rows=8, columns=8, seed=4)
    item = pydicom.Dataset()
    item.CodeValue = "T-12345"
    ds.AnatomicRegionSequence = [item]
    defined = encode_body(ds, ExplicitVRLittleEndian)
    plain = _read_plain(memoryview(defined), ExplicitVRLittleEndian)
    assert isinstance(plain, tuple)  # a sequence of defined length is one raw element, as in pydicom
    _same_dataset(plain[0], read_dataset(io.BytesIO(defined), False, True, stop_when=_stop_at_pixels))
    ds["AnatomicRegionSequence"].is_undefined_length = True
    explicit = encode_body(ds, ExplicitVRLittleEndian)
    assert _read_plain(memoryview(explicit), ExplicitVRLittleEndian) == _UNSUPPORTED
    # Explicit VR bytes under an implicit transfer syntax: pydicom switches encoding, so must we not.
    assert _read_plain(memoryview(explicit), ImplicitVRLittleEndian) == _UNSUPPORTED
    assert _read_plain(memoryview(explicit), UID("1.2.840.10008.1.2.2")) == _UNSUPPORTED
    # An unknown VR.
    bad = bytearray(encode_body(phantom_dataset(rows=8, columns=8, seed=5), ExplicitVRLittleEndian))
    bad[4:6] = b"QQ"
    assert _read_plain(memoryview(bytes(bad)), ExplicitVRLittleEndian) == _UNSUPPORTED


def test_the_store_writes_the_same_bytes_whichever_reader_parsed_the_instance(home, monkeypatch):
    store = Store(make_config(home))
    files = CORPUS[:80]

    def digests() -> list[str]:
        out = []
        for path in files:
            body, ts = _body(path)  # type: ignore[misc]
            try:
                result = store.put_bytes(body, source="cstore", transfer_syntax=str(ts))
            except StoreError as exc:
                out.append(f"refused {exc.reason}")
                continue
            stored = store.root / result.record.path
            out.append(hashlib.sha256(stored.read_bytes()).hexdigest())
            store.index.delete(result.record.sop_instance_uid)
            stored.unlink()
        return out

    fast = digests()
    monkeypatch.setattr(encoded, "_read_plain", lambda view, tsyntax: _UNSUPPORTED)
    assert digests() == fast
    assert sum(not d.startswith("refused") for d in fast) > 40


def test_a_header_larger_than_the_first_read_is_read_whole():
    ds = phantom_dataset(rows=8, columns=8, seed=6)
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 400)  # Encapsulated Document: 100 KB before the pixels
    body = encode_body(ds, ExplicitVRLittleEndian)
    assert len(body) > encoded._FIRST_READ
    plain = _read_plain(memoryview(body), ExplicitVRLittleEndian)
    assert isinstance(plain, tuple)
    fp = io.BytesIO(body)
    _same_dataset(plain[0], read_dataset(fp, False, True, stop_when=_stop_at_pixels))
    assert plain[1] == fp.tell()
    cut = encoded._FIRST_READ + 10  # inside the big element: more bytes are needed
    assert _read_plain(memoryview(body[:cut]), ExplicitVRLittleEndian) == _INCOMPLETE


def _parsed_both_ways(path: Path, monkeypatch) -> tuple:
    data = path.read_bytes()
    outcomes = []
    for plain in (True, False):
        with monkeypatch.context() as m:
            if not plain:
                m.setattr(encoded, "_plain_file", lambda data: None)
            try:
                outcomes.append(encoded.parse_file(data))
            except Exception as exc:  # the same refusal both ways
                outcomes.append(type(exc))
    return tuple(outcomes)


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_a_part10_file_reads_the_same_without_pydicom(path, monkeypatch):
    """parse_file's plain path (File Meta walked, dataset by _read_plain) gives what dcmread gives."""
    fast, slow = _parsed_both_ways(path, monkeypatch)
    if isinstance(slow, type) or isinstance(fast, type):
        assert fast == slow
        return
    ours, theirs = fast.dataset, slow.dataset
    assert list(ours.keys()) == list(theirs.keys())
    for tag in theirs.keys():
        a, b = ours.get_item(tag, keep_deferred=True), theirs.get_item(tag, keep_deferred=True)
        assert type(a) is type(b) and type(a.tag) is type(b.tag)
        if isinstance(a, pydicom.dataelem.RawDataElement):
            assert tuple(a) == tuple(b), f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        else:  # converted as it was read (Specific Character Set)
            assert (a.tag, a.VR, a.value) == (b.tag, b.VR, b.value)
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    assert ours._character_set == theirs._character_set
    assert fast.transfer_syntax == slow.transfer_syntax
    assert str(fast.dataset.file_meta.TransferSyntaxUID) == str(slow.dataset.file_meta.TransferSyntaxUID)
    assert bytes(fast.pixel_element or b"") == bytes(slow.pixel_element or b"")
    assert (fast.pixel_tag, fast.pixel_length, fast.fragments, fast.trailing_tags, fast.complete) == (
        slow.pixel_tag, slow.pixel_length, slow.fragments, slow.trailing_tags, slow.complete)
    assert bytes(fast.trailing) == bytes(slow.trailing)


def test_most_part10_files_take_the_plain_path():
    taken = sum(encoded._plain_file(p.read_bytes()) is not None for p in CORPUS)
    assert taken > len(CORPUS) // 2


def test_the_store_writes_the_same_bytes_from_a_part10_file_whichever_reader(home, monkeypatch):
    store = Store(make_config(home))
    files = CORPUS[:80]

    def digests() -> list[str]:
        out = []
        for path in files:
            try:
                result = store.put_bytes(path.read_bytes(), source="import")
            except StoreError as exc:
                out.append(f"refused {exc.reason}")
                continue
            stored = store.root / result.record.path
            out.append(hashlib.sha256(stored.read_bytes()).hexdigest())
            store.index.delete(result.record.sop_instance_uid)
            stored.unlink()
        return out

    fast = digests()
    monkeypatch.setattr(encoded, "_plain_file", lambda data: None)
    assert digests() == fast
    assert sum(not d.startswith("refused") for d in fast) > 40
