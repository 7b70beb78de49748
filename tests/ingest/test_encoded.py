"""Header-only parsing, pixel bytes kept as received, and the fast header encoder (byte-identical to pydicom)."""

from __future__ import annotations

import io
import zlib

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from service.archive import status
from service.archive.deid import Deidentifier
from service.archive.encoded import EncodingError, encode_dataset, file_meta_bytes, parse_dataset, parse_file
from service.archive.store import Store, StoreError
from service.data.phantom import phantom_dataset
from tests.helpers import make_config
from tests.ingest.util import encode_body, part10

FILES = ["RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG1_UNCR.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "rtplan.dcm"]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("deidentify", [False, True])
def test_fast_encoder_matches_pydicom(name, deidentify):
    data = open(get_testdata_file(name), "rb").read()
    enc = parse_file(data)
    if deidentify:
        Deidentifier(b"k")(enc.dataset)
    ds = enc.dataset
    ours = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(enc.transfer_syntax), "1.2.3.4", "SYNTHPACS")
    ours += encode_dataset(ds, enc.transfer_syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID, meta.ImplementationClassUID = enc.transfer_syntax, "1.2.3.4"
    meta.ImplementationVersionName = "SYNTHPACS"
    ds.file_meta = meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    assert ours[128:] == buf.getvalue()[128:]  # pydicom keeps the source's preamble; ours is zeros


def test_native_pixel_data_is_split_not_parsed():
    ds = phantom_dataset(32, 32)
    enc = parse_file(part10(ds))
    assert "PixelData" not in enc.dataset and enc.pixel_length == len(ds.PixelData)
    assert bytes(enc.pixel_element)[-len(ds.PixelData):] == ds.PixelData
    assert enc.trailing_tags == ()


def test_encapsulated_fragments_are_counted():
    enc = parse_file(open(get_testdata_file("RG3_J2KR.dcm"), "rb").read())
    assert enc.encapsulated and enc.fragments >= 1


def test_trailing_padding_is_reported():
    enc = parse_file(open(get_testdata_file("RG3_UNCR.dcm"), "rb").read())
    assert enc.trailing_tags == (0xFFFCFFFC,)


def test_bare_dataset_in_implicit_vr():
    ds = phantom_dataset(16, 16)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    enc = parse_dataset(fp.getvalue(), ImplicitVRLittleEndian)
    assert enc.dataset.PatientID == ds.PatientID and enc.pixel_length == len(ds.PixelData)


def test_deflated_dataset_is_parsed_whole():
    ds = phantom_dataset(16, 16)
    body = encode_body(ds)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body) + compressor.flush()
    enc = parse_dataset(deflated, DeflatedExplicitVRLittleEndian)
    assert enc.complete and enc.dataset.PixelData == ds.PixelData
    with pytest.raises(EncodingError):
        parse_dataset(b"\x00garbage" * 10, DeflatedExplicitVRLittleEndian)


def test_truncated_pixel_data_is_an_error():
    body = encode_body(phantom_dataset(32, 32))
    with pytest.raises(EncodingError, match="truncated"):
        parse_dataset(body[:-100], "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("keep", [200, 700, 1000])
def test_header_cut_short_is_refused_by_the_store(home, keep):
    body = encode_body(phantom_dataset(32, 32))
    store = Store(make_config(home))
    try:
        with pytest.raises(StoreError) as err:
            store.put_bytes(body[:keep], source="cstore", transfer_syntax="1.2.840.10008.1.2.1")
        assert err.value.status == status.CANNOT_UNDERSTAND
        assert store.index.stats()["instances"] == 0
    finally:
        store.close()


def test_store_keeps_trailing_elements_without_deid(home):
    store = Store(make_config(home, **{"deid.enabled": False}))
    try:
        data = open(get_testdata_file("RG3_UNCR.dcm"), "rb").read()
        rec = store.put_bytes(data, source="import").record
        back = pydicom.dcmread(store.path_of(rec))
        assert "DataSetTrailingPadding" in back and back.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
    finally:
        store.close()


def test_store_deidentifies_elements_after_pixel_data(home):
    ds = phantom_dataset(16, 16)
    body = encode_body(ds) + _element_after_pixels()
    store = Store(make_config(home))
    try:
        rec = store.put_bytes(body, source="cstore", transfer_syntax="1.2.840.10008.1.2.1").record
        stored = store.path_of(rec).read_bytes()
        assert b"TRAILING-SECRET" not in stored
        assert pydicom.dcmread(store.path_of(rec)).PixelData == ds.PixelData
    finally:
        store.close()


def _element_after_pixels() -> bytes:
    # (FFFA,FFFA) Digital Signatures Sequence would be rejected by pydicom; a private tag in group 7FE1 works.
    value = b"TRAILING-SECRET "
    return b"\xe1\x7f\x10\x00LO" + len(value).to_bytes(2, "little") + value


def test_encapsulated_without_fragments_is_refused(home):
    ds = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"))
    body = encode_body(ds)
    start = body.index(b"\xe0\x7f\x10\x00")
    empty = body[:start] + b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    store = Store(make_config(home))
    try:
        with pytest.raises(StoreError) as err:
            store.put_bytes(empty, source="cstore", transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
        assert err.value.status == status.CANNOT_UNDERSTAND and err.value.reason == "pixel_data_empty"
    finally:
        store.close()


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34", "", "1.2.840.10008.5.1.4.1.1.1"])
def test_converted_uids_are_written_as_pydicom_writes_them(implicit, uid):
    ds = pydicom.Dataset()
    ds.SOPClassUID = uid
    ds.add_new(0x00080018, "UN", (uid + "\x00" * (len(uid) % 2)).encode("ascii"))  # read as UN, known as UI
    ts = ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    read = pydicom.filereader.read_dataset(io.BytesIO(fp.getvalue()), implicit, True)
    str(read.SOPClassUID), str(read.SOPInstanceUID)  # converted, as the store's encoder meets them
    expected = DicomBytesIO()
    expected.is_implicit_VR, expected.is_little_endian = implicit, True
    write_dataset(expected, read)
    assert encode_dataset(read, ts) == expected.getvalue()
