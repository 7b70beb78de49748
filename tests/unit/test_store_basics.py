"""The store's core contract: durable, indexed, UID-validated, duplicates by policy, nothing left on failure."""

import copy
import io
import os

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from service.archive import status
from service.archive.store import Store, StoreError
from service.data.phantom import phantom_dataset
from tests.helpers import make_config


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def store(home):
    s = Store(make_config(home, **{"deid.enabled": False}))
    yield s
    s.index.close()


def test_put_writes_file_and_index(store):
    ds = phantom_dataset(64, 64)
    result = store.put_bytes(_bytes(ds), source="import", source_ae="TESTSCU")
    assert result.outcome == "stored"
    rec = store.index.get(ds.SOPInstanceUID)
    assert rec.study_uid == ds.StudyInstanceUID and rec.rows == 64 and rec.source_ae == "TESTSCU"
    path = store.path_of(rec)
    assert path.relative_to(store.root).parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm")
    back = pydicom.dcmread(path)
    assert back.PixelData == ds.PixelData
    assert not list(store.tmp.iterdir())


def test_identical_resend_changes_nothing(store):
    data = _bytes(phantom_dataset(32, 32))
    first = store.put_bytes(data, source="import")
    again = store.put_bytes(data, source="cstore")
    assert again.outcome == "identical" and again.record.received_at == first.record.received_at
    assert store.index.stats()["instances"] == 1


@pytest.mark.parametrize("policy, outcome", [("keep", "kept"), ("replace", "replaced")])
def test_different_instance_same_uid_follows_policy(home, policy, outcome):
    store = Store(make_config(home, **{"deid.enabled": False, "store.duplicate_policy": policy}))
    a = phantom_dataset(32, 32, seed=1)
    b = phantom_dataset(32, 32, seed=2, sop_uid=a.SOPInstanceUID, study_uid=a.StudyInstanceUID, series_uid=a.SeriesInstanceUID)
    store.put_bytes(_bytes(a), source="import")
    assert store.put_bytes(_bytes(b), source="import").outcome == outcome
    kept = pydicom.dcmread(store.path_of(store.index.get(a.SOPInstanceUID)))
    assert kept.PixelData == (a.PixelData if policy == "keep" else b.PixelData)


def test_reject_policy_answers_duplicate_failure(home):
    store = Store(make_config(home, **{"deid.enabled": False, "store.duplicate_policy": "reject"}))
    a = phantom_dataset(32, 32, seed=1)
    b = phantom_dataset(32, 32, seed=2, sop_uid=a.SOPInstanceUID, study_uid=a.StudyInstanceUID, series_uid=a.SeriesInstanceUID)
    store.put_bytes(_bytes(a), source="import")
    with pytest.raises(StoreError) as err:
        store.put_bytes(_bytes(b), source="import")
    assert err.value.status == status.DUPLICATE_SOP_INSTANCE


@pytest.mark.parametrize("bad", ["1.2.3/../../etc", "1.2.abc", "1." + "2" * 70, "", "1..2", "01.2"])
def test_invalid_uids_are_refused_before_any_path_exists(store, bad):
    ds = phantom_dataset(16, 16)
    ds.SOPInstanceUID = bad
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    with pytest.raises(StoreError) as err:
        store.put_bytes(_bytes(ds), source="import")
    assert err.value.status == status.CANNOT_UNDERSTAND
    assert store.index.stats()["instances"] == 0
    assert [p for p in store.root.rglob("*") if p.is_file() and p.suffix == ".dcm"] == []


def test_failing_disk_write_leaves_nothing(store, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StoreError) as err:
        store.put_bytes(_bytes(phantom_dataset(16, 16)), source="import")
    assert err.value.status == status.OUT_OF_RESOURCES
    assert store.index.stats()["instances"] == 0
    assert not list(store.tmp.iterdir())
    assert [p for p in store.root.rglob("*.dcm")] == []


@pytest.mark.parametrize("resend", [False, True])
def test_failing_folder_fsync_leaves_nothing(store, monkeypatch, resend):
    # The folder's fsync runs while the row is added; when it fails, the row and the file go again.
    import stat

    data = _bytes(phantom_dataset(16, 16))
    real_fsync = os.fsync

    def folders_fail(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folders_fail)
    with pytest.raises(StoreError) as err:
        store.put_bytes(data, source="import")
    assert err.value.reason == "write_failed" and err.value.status == status.OUT_OF_RESOURCES
    assert store.index.stats()["instances"] == 0
    assert not list(store.tmp.iterdir())
    assert [p for p in store.root.rglob("*.dcm")] == []
    if resend:  # the disk is back: the same bytes are stored as if nothing had happened
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert store.put_bytes(data, source="import").outcome == "stored"


@pytest.mark.parametrize("policy", ["replace", "keep", "reject"])
def test_a_row_whose_file_is_gone_is_healed_by_a_resend(home, policy):
    store = Store(make_config(home, **{"deid.enabled": False, "store.duplicate_policy": policy}))
    data = _bytes(phantom_dataset(16, 16))
    first = store.put_bytes(data, source="import")
    path = store.path_of(first.record)
    stored = path.read_bytes()
    path.unlink()  # as a power loss before the folder's fsync landed would leave it
    again = store.put_bytes(data, source="import")
    assert again.outcome == "replaced"
    assert path.read_bytes() == stored
    assert store.index.get(first.record.sop_instance_uid).sha256 == first.record.sha256
    assert store.put_bytes(data, source="import").outcome == "identical"
    store.index.close()


def test_huge_header_is_refused(store):
    ds = phantom_dataset(16, 16)
    ds.Rows = ds.Columns = 65535
    with pytest.raises(StoreError, match="65535 x 65535"):
        store.put_bytes(_bytes(ds), source="import")


def test_garbage_bytes_are_refused(store):
    with pytest.raises(StoreError) as err:
        store.put_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300), source="import")
    assert err.value.status == status.CANNOT_UNDERSTAND
    assert store.index.stats()["instances"] == 0


def test_truncated_file_is_refused(store):
    data = _bytes(phantom_dataset(64, 64))
    with pytest.raises(StoreError) as err:
        store.put_bytes(data[: len(data) // 2], source="import")
    assert err.value.status == status.CANNOT_UNDERSTAND
    assert store.index.stats()["instances"] == 0


def _reread(ds, implicit: bool) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("implicit", [False, True])
def test_index_fields_read_raw_give_what_pydicom_gives(implicit):
    """The store reads index fields from the raw elements (fast); each must equal pydicom's value."""
    from service.archive.store import _int, _text, _uid

    ds = phantom_dataset(48, 40)
    ds.SeriesNumber, ds.InstanceNumber = "  +12 ", "-3"
    ds.NumberOfFrames = ""
    ds.AcquisitionNumber = "1\\2"  # several values: pydicom's MultiValue, which is no int
    ds.StudyDescription = "KNEE^LEFT  "
    ds.ReferringPhysicianName = "HOUSE^GREGORY="
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + "\0" if len(ds.SeriesInstanceUID) % 2 else ds.SeriesInstanceUID
    raw = _reread(ds, implicit)
    converted = _reread(ds, implicit)
    for keyword in ("Rows", "Columns", "BitsStored", "SeriesNumber", "InstanceNumber", "NumberOfFrames", "AcquisitionNumber", "PatientWeight"):
        value = converted.get(keyword)
        try:
            expected = int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            expected = None
        assert _int(raw, keyword) == expected, keyword
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"):
        assert _uid(raw, keyword) == str(converted[keyword].value), keyword
    assert _uid(raw, "FrameOfReferenceUID") is None
    assert _text(raw, "StudyDescription") == "KNEE^LEFT"
    assert _text(raw, "ReferringPhysicianName") == str(converted.ReferringPhysicianName) == "HOUSE^GREGORY"


def test_iso_2022_text_is_decoded_by_pydicom():
    """A value with ISO 2022 escape sequences is ASCII bytes but not ASCII text (PS3.5 §6.1.2.5.3)."""
    from service.archive.store import _text

    ds = phantom_dataset(16, 16)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    raw = _reread(ds, False)
    assert _text(raw, "PatientName") == "Yamada^Tarou=山田^太郎"
