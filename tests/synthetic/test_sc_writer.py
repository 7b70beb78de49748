"""The synthetic Secondary Capture writer: every marker of ARCHITECTURE.md, dciodvfy, bad input."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pydicom
import pytest

from service.synthetic.sc_writer import (
    Provenance,
    SyntheticSeries,
    SyntheticWriteError,
    burn_in_synthetic_label,
    full_range_window,
    synthetic_image,
)
from tests.helpers import require_tool

PROV = Provenance("demo-dcgan", 3, 42, 0.7, architecture="dcgan", weights_sha256="ab" * 32, dataset="fracatlas@v2")


def _pixels(bits: int, shape=(96, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    return rng.integers(0, top + 1, size=shape).astype(np.uint8 if bits == 8 else np.uint16)


def _roundtrip(ds) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("bits", [8, 16])
def test_every_synthetic_marker_is_written(bits):
    series = SyntheticSeries.new("demo-dcgan", 3, psi=0.7)
    pixels = _pixels(bits)
    ds = _roundtrip(synthetic_image(pixels, PROV, series, instance_number=2))

    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert ds.SyntheticData == "YES"
    assert ds.ConversionType == "SYN"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SeriesDescription.startswith("SYNTHETIC")
    assert ds.StudyDescription.startswith("SYNTHETIC")
    assert "SYNTHETIC" in str(ds.PatientName) and ds.PatientID.startswith("SYNTHETIC-")
    assert ds.PatientBirthDate in ("", None) and ds.PatientSex in ("", None)
    assert ds.BurnedInAnnotation == "NO"
    assert ds.Modality == "OT"
    assert ds.InstanceNumber == 2
    # Contributing Equipment: synthesizing equipment naming model, version and software (IHE AIR style).
    synth = [item for item in ds.ContributingEquipmentSequence if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
    assert len(synth) == 1
    item = synth[0]
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert item.ManufacturerModelName == "demo-dcgan"
    assert "demo-dcgan:v3" in list(item.SoftwareVersions)
    assert any(v.startswith("synthpacs ") for v in item.SoftwareVersions)
    # Image Comments carry what regenerates the pixels, and read back to the same provenance.
    for text in ("model=demo-dcgan", "version=3", "seed=42", "psi=0.7"):
        assert text in ds.ImageComments
    assert Provenance.from_dataset(ds) == PROV
    # Pixels untouched, MONOCHROME2, a full-range VOI window.
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsAllocated == bits and ds.BitsStored == bits and ds.HighBit == bits - 1
    assert np.array_equal(ds.pixel_array, pixels)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == full_range_window(bits)
    # UIDs are fresh 2.25 UUID-derived ones by default.
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith("2.25.")


def test_uids_are_under_the_configured_root_and_fresh():
    series = SyntheticSeries.new("demo-dcgan", 1, uid_root="1.2.826.0.1.3680043.10.999")
    a = synthetic_image(_pixels(8), PROV, series, 1)
    b = synthetic_image(_pixels(8), PROV, series, 2)
    for ds in (a, b):
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("1.2.826.0.1.3680043.10.999.") and len(uid) <= 64
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID
    other = SyntheticSeries.new("demo-dcgan", 1, uid_root="1.2.826.0.1.3680043.10.999")
    assert other.study_instance_uid != series.study_instance_uid


def test_burned_in_label_marks_the_pixels_and_the_header():
    series = SyntheticSeries.new("demo-dcgan", 1)
    pixels = np.full((256, 256), 100, np.uint8)
    ds = synthetic_image(pixels, PROV, series, 1, burn_in_label=True)
    assert ds.BurnedInAnnotation == "YES"
    out = ds.pixel_array
    assert out.max() == 255 and out.min() == 0  # white letters on a black box
    assert np.array_equal(out[60:, 60:], pixels[60:, 60:])  # only the corner changed
    # The label is deterministic: the same input gives the same labelled pixels.
    assert np.array_equal(burn_in_synthetic_label(pixels), out)
    assert np.array_equal(burn_in_synthetic_label(np.full((256, 256), 7, np.uint16)).max(), 65535)


def test_series_description_always_begins_synthetic():
    s = SyntheticSeries.new("m", 1, series_description="knee AP for teaching")
    assert s.series_description == "SYNTHETIC knee AP for teaching"
    assert SyntheticSeries.new("m", 1, series_description="synthetic already").series_description == "synthetic already"
    assert len(SyntheticSeries.new("m", 1, series_description="x" * 200).series_description) == 64


def test_modality_and_laterality_can_be_set():
    s = SyntheticSeries.new("m", 1, modality="CR", laterality="L", body_part_examined="knee")
    ds = synthetic_image(_pixels(8), PROV, s, 1)
    assert ds.Modality == "CR" and ds.Laterality == "L" and ds.BodyPartExamined == "KNEE"


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((4, 4), np.float32), "uint8 or uint16"),
        (np.zeros((2, 4, 4), np.uint8), r"one \(rows, columns\) image"),
        ([[0, 1], [2, 3]], "numpy array"),
        (np.zeros((0, 4), np.uint8), "cannot be stored"),
    ],
)
def test_bad_pixels_are_refused_with_a_clear_error(pixels, message):
    with pytest.raises(SyntheticWriteError, match=message):
        synthetic_image(pixels, PROV, SyntheticSeries.new("m", 1), 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="bad name"), "model name"),
        (dict(version=0), "version"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(psi=float("nan")), "psi"),
    ],
)
def test_bad_provenance_is_refused(kwargs, message):
    args = dict(model="m", version=1, seed=1, psi=1.0)
    args.update(kwargs)
    with pytest.raises(SyntheticWriteError, match=message):
        Provenance(**args)


def test_bad_series_arguments_are_refused():
    with pytest.raises(SyntheticWriteError, match="Modality"):
        SyntheticSeries.new("m", 1, modality="x-ray")
    with pytest.raises(SyntheticWriteError, match="Laterality"):
        SyntheticSeries.new("m", 1, laterality="left")
    with pytest.raises(SyntheticWriteError, match="uid_root"):
        SyntheticSeries.new("m", 1, uid_root="1.2.abc")
    with pytest.raises(SyntheticWriteError, match="instance number"):
        synthetic_image(_pixels(8), PROV, SyntheticSeries.new("m", 1), 0)
    with pytest.raises(SyntheticWriteError, match="too small"):
        burn_in_synthetic_label(np.zeros((8, 8), np.uint8))


def test_provenance_is_not_read_from_a_real_image():
    from service.data.phantom import phantom_dataset

    with pytest.raises(SyntheticWriteError, match="not marked synthetic"):
        Provenance.from_dataset(phantom_dataset(32, 32))


@pytest.mark.integration
@pytest.mark.parametrize("bits, label", [(8, False), (16, True)])
def test_dciodvfy_finds_no_error_but_the_unknown_synthetic_data_tag(tmp_path, bits, label):
    """dicom3tools 2022 does not know (0008,001C) yet: exactly that one Error line is allowed."""
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    ds = synthetic_image(_pixels(bits, (128, 128)), PROV, SyntheticSeries.new("demo-dcgan", 3), 1, burn_in_label=label)
    path = tmp_path / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert errors == ["Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? "], out
    assert "SCImage" in out


# What dicom3tools 2022 says about (0008,001C) because its dictionary predates it: nothing else is allowed.
_UNKNOWN_TAG_LINES = {
    "Error - Attribute with an even group number is not a recognized standard attribute - (0x0008,0x001c)  ? ",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0008,0x001c)  ? ",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
}
_SIDE_UNKNOWN = ("Warning - is only permitted to be empty when actually unknown; should be absent (not empty) if an unpaired "
                 "body part, and have a value if a paired body part - attribute <Laterality>")


@pytest.mark.integration
@pytest.mark.parametrize(
    "body_part, side, laterality, side_unknown_warning",
    [
        ("CHEST", "", "absent", False),  # not a paired structure: the Type 2C condition does not hold
        ("SKULL", "", "absent", False),
        ("HAND", "R", "R", False),  # the caller knows the side
        ("HAND", "", "", True),  # paired, side unknown: Type 2, empty; dciodvfy's reminder is exactly our case
        ("", "", "", True),  # no body part: nothing says it is unpaired, so the side is unknown, not absent
    ],
)
def test_laterality_follows_the_type_2c_condition_and_dciodvfy_reports_only_the_dictionary_gap(
        tmp_path, body_part, side, laterality, side_unknown_warning):
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    series = SyntheticSeries.new("demo-dcgan", 3, body_part_examined=body_part, laterality=side)
    ds = synthetic_image(_pixels(8, (128, 128)), PROV, series, 1)
    if laterality == "absent":
        assert "Laterality" not in ds
    else:
        assert "Laterality" in ds and (ds.Laterality or "") == laterality
    path = tmp_path / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    reported = {line for line in out.splitlines() if line.startswith(("Error", "Warning"))}
    assert reported - _UNKNOWN_TAG_LINES == ({_SIDE_UNKNOWN} if side_unknown_warning else set()), out
    assert "Error - Missing attribute" not in out
