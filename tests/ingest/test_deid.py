"""De-identification (PS3.15 Annex E Basic Profile with retain options): what goes, what stays, what is marked."""

from __future__ import annotations

import copy

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive import deid_table
from service.archive.deid import RETAINED_FOR_TRAINING, Deidentifier, coarse_age
from service.archive.store import Store
from service.archive.uids import is_valid_uid
from service.config import DeidConfig
from service.data.phantom import phantom_dataset
from tests.helpers import make_config
from tests.ingest.util import PHI, part10, with_phi


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(b"secret-one")


def _phi_dataset(**kwargs) -> Dataset:
    ds = with_phi(phantom_dataset(16, 16, **kwargs))
    ds.add_new(0x00091010, "LO", "private vendor note DOE")  # a private element
    ds.add_new(0x00090010, "LO", "ACME")
    person = Dataset()
    person.PersonName = "WATSON^JOHN"
    person.CodeMeaning = "kept"
    ds.ContentSequence = Sequence([person])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ref.ScheduledPerformingPhysicianName = "GREY^MEREDITH"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.add_new(0x60000010, "US", 16)  # Overlay Rows, group 6000
    ds.add_new(0x60004000, "LT", "DOE JANE overlay")  # Overlay Comments
    ds.add_new(0x60003000, "OW", b"\x00" * 32)
    ds.ImageComments = "patient DOE fell"
    ds.StationName = "XR-ROOM-3"
    ds.DeviceSerialNumber = "SN-12345"
    return ds


def test_training_attributes_are_in_no_row_of_the_table():
    # Kept because the profile keeps them, not by an exception of ours.
    from pydicom.datadict import tag_for_keyword

    assert len(deid_table.TABLE) > 600
    for keyword in RETAINED_FOR_TRAINING:
        assert tag_for_keyword(keyword) not in deid_table.TABLE, keyword


def test_identifying_attributes_are_gone(deid):
    ds, exclusion = deid(_phi_dataset())
    encoded = part10(ds)
    for value in list(PHI.values()) + ["WATSON", "GREY^MEREDITH", "XR-ROOM-3", "SN-12345", "DOE fell", "vendor note"]:
        assert value.encode() not in encoded, value
    assert exclusion == ""
    assert not any(elem.tag.is_private for elem in ds)
    assert not any(0x6000 <= elem.tag.group <= 0x60FF for elem in ds)
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""
    assert "ImageComments" not in ds and "ContentSequence" not in ds
    assert ds.InstitutionName == "ANONYMIZED"  # X/Z/D: a dummy keeps any IOD valid (Type 1 somewhere)


def test_marks_and_method_codes(deid):
    ds, _ = deid(_phi_dataset())
    assert ds.PatientIdentityRemoved == "YES"
    codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM")]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "Basic Profile" in ds.DeidentificationMethod


def test_options_change_codes_and_actions():
    d = Deidentifier(b"k", DeidConfig(retain_longitudinal_dates=True, retain_device_identity=True, retain_patient_characteristics=False))
    ds, _ = d(_phi_dataset())
    codes = [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106", "113109"]
    assert ds.StudyDate == "20240102" and ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert ds.StationName == "XR-ROOM-3" and ds.DeviceSerialNumber == "SN-12345"
    assert "PatientAge" not in ds and ds.PatientSex == ""


def test_training_attributes_are_kept(deid):
    original = _phi_dataset()
    kept = {kw: original.get(kw) for kw in RETAINED_FOR_TRAINING if kw in original}
    ds, _ = deid(_phi_dataset())
    for keyword, value in kept.items():
        assert ds.get(keyword) == value, keyword
    assert ds.PatientSex == "O" and ds.PatientAge == "055Y"
    assert ds.PixelData == original.PixelData


def test_uids_are_remapped_consistently_and_class_uids_kept(deid):
    a = _phi_dataset()
    b = _phi_dataset(study_uid=a.StudyInstanceUID, series_uid=a.SeriesInstanceUID)
    da, _ = deid(copy.deepcopy(a))
    db, _ = deid(copy.deepcopy(b))
    assert da.StudyInstanceUID == db.StudyInstanceUID != a.StudyInstanceUID
    assert da.SeriesInstanceUID == db.SeriesInstanceUID
    assert da.SOPInstanceUID != db.SOPInstanceUID
    assert da.SOPClassUID == a.SOPClassUID
    ref = da.ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert ref.ReferencedSOPInstanceUID == deid.remap_uid("1.2.3.4.5.6.7")
    assert "ScheduledPerformingPhysicianName" not in ref
    assert all(is_valid_uid(str(u)) for u in (da.StudyInstanceUID, da.SeriesInstanceUID, da.SOPInstanceUID))
    other = Deidentifier(b"secret-two")
    assert other.remap_uid(str(a.StudyInstanceUID)) != da.StudyInstanceUID


def test_every_study_gets_a_keyed_study_id_in_place_of_the_original(deid):
    """Study ID is Z in PS3.15 Table E.1-1; a dummy keyed on the remapped study lets a DICOMDIR name the study."""
    a = _phi_dataset(seed=1)
    a.StudyID = "S-4711"
    b = _phi_dataset(seed=1, study_uid=a.StudyInstanceUID)
    del b.StudyID  # a study whose sender wrote no Study ID gets one too
    other = _phi_dataset(seed=2)
    da, db, dother = (deid(copy.deepcopy(ds))[0] for ds in (a, b, other))
    assert da.StudyID == db.StudyID != dother.StudyID
    assert da.StudyID.startswith("ANON-") and len(da.StudyID) <= 16 and "4711" not in da.StudyID
    assert deid(copy.deepcopy(a))[0].StudyID == da.StudyID  # a re-send: the same
    assert Deidentifier(b"secret-two")(copy.deepcopy(a))[0].StudyID != da.StudyID


def test_one_patient_one_pseudonym_across_studies(deid):
    first, _ = deid(_phi_dataset(seed=1))
    second, _ = deid(_phi_dataset(seed=2))  # another study of the same patient
    other = _phi_dataset()
    other.PatientID = "SOMEONE-ELSE"
    stranger, _ = deid(other)
    assert first.PatientID == second.PatientID == deid.pseudonym(PHI["PatientID"])
    assert first.PatientName == second.PatientName
    assert first.PatientID.startswith("ANON-") and "SYN" not in first.PatientID
    assert stranger.PatientID != first.PatientID


def test_dates_shift_by_one_offset_per_patient(deid):
    ds = _phi_dataset()
    ds.AcquisitionDate = "20240105"
    ds.AcquisitionDateTime = "20240105093000.123"
    out, _ = deid(ds)
    import datetime as dt

    study = dt.datetime.strptime(out.StudyDate, "%Y%m%d")
    acq = dt.datetime.strptime(out.AcquisitionDate, "%Y%m%d")
    assert (acq - study).days == 3 and out.StudyDate != "20240102"
    # A DT moves on its date as a DA does and on its time as a TM does (PS3.15 E.3.6, Modified Dates).
    assert out.AcquisitionDateTime[:8] == out.AcquisitionDate
    assert out.AcquisitionDateTime[8:] != "093000.123" and out.AcquisitionDateTime.endswith(".123")
    again, _ = deid(_phi_dataset(seed=5))
    assert again.StudyDate == out.StudyDate


def test_same_input_gives_the_same_bytes(deid):
    ds = _phi_dataset()
    assert part10(deid(copy.deepcopy(ds))[0]) == part10(deid(copy.deepcopy(ds))[0])


def test_burned_in_annotation_is_flagged(deid):
    ds = _phi_dataset()
    ds.BurnedInAnnotation = "YES"
    out, exclusion = deid(ds)
    assert exclusion == "burned-in annotation" and out.BurnedInAnnotation == "YES"


@pytest.mark.parametrize(
    "age, birth, on, expected",
    [
        ("055Y", "", None, "055Y"), ("057Y", "", None, "055Y"), ("093Y", "", None, "090Y"), ("006M", "", None, "006M"),
        ("003W", "", None, "000M"), ("", "20100315", "2024-03-14", "010Y"), ("", "", None, ""), ("abc", "", None, ""),
    ],
)
def test_coarse_age(age, birth, on, expected):
    import datetime as dt

    day = dt.date.fromisoformat(on) if on else None
    assert coarse_age(age, birth, day) == expected


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm", "RG3_J2KR.dcm"])
def test_real_radiographs_lose_their_identity(deid, name):
    original = pydicom.dcmread(get_testdata_file(name))
    out, _ = deid(pydicom.dcmread(get_testdata_file(name)))
    encoded = part10(out)
    for keyword in ("PatientName", "PatientID", "InstitutionName", "ReferringPhysicianName", "AccessionNumber"):
        value = str(original.get(keyword) or "")
        if len(value) >= 4:
            assert value.encode() not in encoded, keyword
    assert out.Modality == original.Modality and out.BodyPartExamined == original.BodyPartExamined
    assert out.PixelData == original.PixelData


def test_store_deduplicates_deidentified_resends(home):
    store = Store(make_config(home))
    try:
        data = part10(_phi_dataset())
        first = store.put_bytes(data, source="cstore")
        again = store.put_bytes(data, source="cstore")
        assert first.outcome == "stored" and again.outcome == "identical"
        rec = first.record
        assert rec.patient_id.startswith("ANON-") and rec.patient_birth_date == "" and rec.accession_number == ""
        stored = store.path_of(rec).read_bytes()
        for value in PHI.values():
            assert value.encode() not in stored
    finally:
        store.close()


def test_synthetic_instances_are_not_deidentified(home):
    store = Store(make_config(home))
    try:
        ds = phantom_dataset(16, 16, patient_name="SYNTHETIC^MODEL", patient_id="SYNTHETIC-1")
        result = store.put(ds, source="synthetic", synthetic=True)
        assert result.record.patient_id == "SYNTHETIC-1" and result.record.sop_instance_uid == ds.SOPInstanceUID
        assert result.record.synthetic
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID  # the caller's object is untouched
    finally:
        store.close()


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(
    "charset, vr, value",
    [
        (None, "LO", "BENCH-0001"),
        (None, "LO", "  padded  "),
        (None, "LO", ""),
        (None, "LO", "A\\B"),  # two values: pydicom's MultiValue text, kept as it was
        (None, "LO", "TAB\tINSIDE"),
        ("ISO_IR 100", "PN", "MÜLLER^JÜRGEN"),
        ("ISO_IR 192", "PN", "ΔΗΜΗΤΡΙΟΥ^ΝΙΚΟΣ"),
        ("ISO 2022 IR 87", "PN", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"),
        ("ISO_IR 13", "LO", "~ABC"),
        (None, "UN", "UNKNOWN-VR"),
        (None, "DA", "20240102"),
        (None, "PN", "DOE^JOHN^^^"),
        (None, "PN", "DOE^JOHN=DOE^J=  "),
        (None, "PN", "^^^^"),
        (None, "PN", " LEADING^SPACE"),
        (None, "UI", "1.2.840.10008.5.1.4.1.1.1"),
        (None, "UI", "1.2.3"),
        (None, "CS", "YES "),
        (None, "AS", "055Y"),
    ],
)
def test_text_read_from_raw_bytes_is_what_pydicom_converts(implicit, charset, vr, value):
    # _text_of skips pydicom's conversion for plain ASCII; whatever the bytes, it must agree with it.
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    from service.archive.deid import _str, _text_of

    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    # StudyDate, PatientName, StudyInstanceUID, BurnedInAnnotation, PatientAge, else PatientID
    tag = {"DA": 0x00080020, "PN": 0x00100010, "UI": 0x0020000D, "CS": 0x00280301, "AS": 0x00101010}.get(vr, 0x00100020)
    ds.add_new(tag, vr, value.encode("ascii") if vr == "UN" else value)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    raw = read_dataset(pydicom.filebase.DicomBytesIO(fp.getvalue()), implicit, True)
    expected = _str(copy.deepcopy(raw).get(tag))
    assert _text_of(raw, tag) == expected
    assert _text_of(raw, 0x00100030) == ""  # absent


def test_the_plan_cache_is_bounded():
    from service.archive import deid as module

    d = Deidentifier(b"k")
    for element in range(module._PLAN_CACHE_LIMIT + 500):
        assert d._plan(0x00110000 | element, "LO")[0] == "X"  # private: removed, cached or not
    assert len(d._plans) == module._PLAN_CACHE_LIMIT


def test_deferred_values_are_read_before_they_are_judged(tmp_path, deid):
    # dcmread(defer_size=...) leaves values on disk until asked for: a UID must still be remapped.
    path = tmp_path / "deferred.dcm"
    original = _phi_dataset()
    original.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path, defer_size=1)
    out, _ = deid(ds)
    assert out.StudyInstanceUID == deid.remap_uid(str(original.StudyInstanceUID))
    assert out.PatientID.startswith("ANON-") and "ImageComments" not in out
