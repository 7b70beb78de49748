"""service/archive/pixel_header.py: the one-pass reader gives what pydicom gives, or steps aside.

Every file it accepts must come out of the pipeline exactly as it does through pydicom (image and
info); every file outside its plain case must be left to pydicom (None), never misread.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from service.archive.pixel_header import HeaderDataset, read_header
from service.data.phantom import phantom_dataset
from service.data.pixels import PixelOptions, SkipImage, prepare
from service.data.worker import process_file


def _encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=syntax != ExplicitVRBigEndian)
    return buf.getvalue()


def _through_both(data: bytes, opts: PixelOptions | None = None):
    lean = read_header(data)
    assert isinstance(lean, HeaderDataset), "the plain file was left to pydicom"
    full = pydicom.dcmread(io.BytesIO(data))
    results = []
    for ds in (lean, full):
        try:
            results.append(prepare(ds, opts))
        except SkipImage as exc:
            results.append((exc.reason, str(exc)))
    return results


def _signed() -> Dataset:
    ds = phantom_dataset(48, 40, bits_stored=12, seed=3)
    ds.PixelRepresentation = 1
    ds.PixelData = (ds.pixel_array.astype(np.int32) - 2048).astype(np.int16).tobytes()
    ds.PixelPaddingValue = -2048  # SS: the pixels are signed
    return ds


def _variants() -> dict[str, Dataset]:
    base = phantom_dataset(60, 44, bits_stored=12, seed=1)
    v: dict[str, Dataset] = {"phantom 12-bit, no window": base}
    v["8-bit"] = phantom_dataset(50, 70, bits_stored=8, seed=2)
    v["MONOCHROME1 with header window"] = phantom_dataset(40, 40, bits_stored=10, photometric="MONOCHROME1", window=(600, 800))
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        ds = copy.deepcopy(base)
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500, 1200, function
        v[f"window {function}"] = ds
    ds = copy.deepcopy(base)
    ds.WindowCenter, ds.WindowWidth = [1500, 2000], [1200, 3000]  # several windows: the first counts
    v["two windows"] = ds
    ds = copy.deepcopy(base)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 2500, 3000
    v["rescale"] = ds
    ds = copy.deepcopy(base)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4095, 4000
    v["padding range"] = ds
    v["signed with padding"] = _signed()
    ds = copy.deepcopy(base)
    ds.PresentationLUTShape = "INVERSE"
    v["presentation LUT inverse"] = ds
    ds = copy.deepcopy(base)
    ds.WindowCenter, ds.WindowWidth = "", ""  # present but empty: no header window
    v["empty window"] = ds
    ds = copy.deepcopy(base)
    ds.PixelData = bytes(len(ds.PixelData))  # all zero
    v["blank"] = ds
    ds = copy.deepcopy(base)
    ds.PixelData = ds.PixelData[:100]  # shorter than Rows x Columns
    v["short pixel data"] = ds
    ds = copy.deepcopy(base)
    ds.Rows = 0
    v["zero rows"] = ds
    return v


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("name", list(_variants()))
def test_plain_files_give_what_pydicom_gives(name, syntax):
    data = _encode(_variants()[name], syntax)
    (a, b) = _through_both(data, PixelOptions(resolution=32))
    if isinstance(a[0], str):
        assert a == b
    else:
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm"])
def test_real_files_give_what_pydicom_gives(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        (a, b) = _through_both(_encode(ds, syntax))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]


def _nested_undefined_length() -> Dataset:
    """Sequences of undefined length, nested, before Pixel Data: walked over, not misread."""
    ds = phantom_dataset(32, 32, bits_stored=12, seed=4, window=(2000, 3000))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = [inner]
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    ds.SourceImageSequence = [item, copy.deepcopy(item)]
    ds["SourceImageSequence"].is_undefined_length = True
    ds.DeidentificationMethodCodeSequence = [copy.deepcopy(inner)]  # defined length
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_of_undefined_length_are_skipped(syntax):
    data = _encode(_nested_undefined_length(), syntax)
    assert b"\xfe\xff\xdd\xe0" in data  # the sequence delimiter is there
    lean = read_header(data)
    assert lean is not None and lean.get("WindowCenter") == 2000.0 and lean.get("Rows") == 32
    (a, b) = _through_both(data)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.filterwarnings("ignore:.*(VR IS|VR DS|elements with a VR of IS)")
def test_files_outside_the_plain_case_are_left_to_pydicom():
    base = phantom_dataset(32, 32, bits_stored=12, seed=5)
    plain = _encode(base)
    assert read_header(plain) is not None
    assert read_header(plain[128:]) is None  # no preamble
    assert read_header(b"") is None
    assert read_header(b"\0" * 128 + b"DICM") is None
    for syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        assert read_header(_encode(base, syntax)) is None, syntax
    j2k = copy.deepcopy(base)
    j2k.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    j2k["PixelData"].is_undefined_length = True
    assert read_header(_encode(j2k, JPEG2000Lossless)) is None
    for change in (
        {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3},
        {"PhotometricInterpretation": "PALETTE COLOR"},
        {"NumberOfFrames": 2},
        {"BitsAllocated": 32},
        {"PhotometricInterpretation": ["MONOCHROME2", "MONOCHROME1"]},
        {"NumberOfFrames": "1.5"},
        {"WindowCenter": "nan"},
    ):
        ds = copy.deepcopy(base)
        for k, value in change.items():
            setattr(ds, k, value)
        assert read_header(_encode(ds)) is None, change
    for keyword in ("ModalityLUTSequence", "VOILUTSequence"):
        ds = copy.deepcopy(base)
        setattr(ds, keyword, [Dataset()])
        assert read_header(_encode(ds)) is None, keyword
    no_pixels = copy.deepcopy(base)
    del no_pixels.PixelData
    assert read_header(_encode(no_pixels)) is None


def test_truncated_files_are_left_to_pydicom():
    data = _encode(phantom_dataset(32, 32, bits_stored=12, seed=6))
    header_end = data.index(b"\xe0\x7f\x10\x00")
    for cut in (140, 300, header_end + 4, header_end + 20, len(data) - 1):
        assert read_header(data[:cut]) is None, cut


def test_the_build_worker_gives_the_same_with_and_without_the_reader(tmp_path, monkeypatch):
    files = {}
    for i, (name, ds) in enumerate(_variants().items()):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(_encode(ds))
        files[name] = path
    opts = PixelOptions(resolution=32)
    fast = {name: process_file(path, "", opts) for name, path in files.items()}
    monkeypatch.setattr("service.data.worker.read_header", lambda data: None)
    slow = {name: process_file(path, "", opts) for name, path in files.items()}
    for name in files:
        (ia, a), (ib, b) = fast[name], slow[name]
        assert a == b, name
        if ia is None:
            assert ib is None, name
        else:
            np.testing.assert_array_equal(ia, ib)
