"""The Query/Retrieve SCP: matching rules, and dcmtk findscu/getscu/movescu against synthpacs' own AE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from service.archive.store import Store
from service.data.phantom import phantom_dataset
from service.dicom.qr import QueryRetrieveSCP, match_value
from tests.helpers import free_port, require_tool
from tests.synthetic.conftest import RunningService, StoreSCP, config_with_peers, write_synthetic_study

# -- matching rules (PS3.4 C.2.2.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, value, vr, expected",
    [
        ("", "anything", "LO", True),
        ("*", "", "LO", True),
        ("KNEE", "KNEE", "CS", True),
        ("KNEE", "knee", "CS", False),
        ("KN*", "KNEE", "CS", True),
        ("K?EE", "KNEE", "CS", True),
        ("K?E", "KNEE", "CS", False),
        ("CR\\DX", "DX", "CS", True),
        ("smith^j*", "SMITH^JOHN", "PN", True),
        ("SMITH^JOHN", "SMITH^JOHN^^^", "PN", True),
        ("SYNTHETIC*", "PHANTOM^TEST", "PN", False),
        ("1.2.3\\1.2.4", "1.2.4", "UI", True),
        ("1.2.*", "1.2.4", "UI", False),
        ("20240101-20240131", "20240115", "DA", True),
        ("20240101-20240131", "20240201", "DA", False),
        ("-20240131", "20231231", "DA", True),
        ("20240201-", "20240131", "DA", False),
        ("20240101-20240131", "", "DA", False),
        ("1000-1200", "115959.999", "TM", True),
        ("1000-1200", "120100", "TM", False),
        ("1015", "101545", "TM", True),
        ("1015", "101600", "TM", False),
        ("3", "3", "IS", True),
        ("3", "4", "IS", False),
        ("[x]*", "[x]ray", "LO", True),
    ],
)
def test_matching_rules(query, value, vr, expected):
    assert match_value(query, value, vr) is expected


# -- C-FIND in process ----------------------------------------------------------------------------------


@pytest.fixture
def archive(home):
    """Two received CR studies (de-identification off, so values are known) and one synthetic study."""
    cfg = config_with_peers(home, [], **{"deid.enabled": False})
    store = Store(cfg)
    a = phantom_dataset(32, 32, seed=1, patient_name="DOE^JANE", patient_id="P1", body_part="KNEE")
    a.StudyDate = "20240115"
    b = phantom_dataset(32, 32, seed=2, patient_name="ROE^RICHARD", patient_id="P2", body_part="TIBIA")
    b.StudyDate = "20240220"
    b2 = phantom_dataset(32, 32, seed=3, patient_name="ROE^RICHARD", patient_id="P2", study_uid=b.StudyInstanceUID,
                         series_uid=b.SeriesInstanceUID, instance_number=2, body_part="TIBIA")
    b2.StudyDate = "20240220"
    for ds in (a, b, b2):
        store.put(ds, source="import")
    synthetic = write_synthetic_study(cfg, store, count=2)
    yield cfg, store, {"a": a, "b": b, "synthetic": synthetic}
    store.index.close()


def _find(cfg, store, level, **keys) -> list[Dataset]:
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    return QueryRetrieveSCP(cfg, store).find(ident, level)


def test_study_level_find_returns_requested_and_computed_keys(archive):
    cfg, store, data = archive
    found = _find(cfg, store, "STUDY", StudyInstanceUID="", PatientName="", StudyDate="", ModalitiesInStudy="",
                  NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries="", StudyDescription="", AccessionNumber="")
    assert len(found) == 3
    by_uid = {ds.StudyInstanceUID: ds for ds in found}
    b = by_uid[data["b"].StudyInstanceUID]
    assert b.PatientName == "ROE^RICHARD" and b.StudyDate == "20240220"
    assert b.NumberOfStudyRelatedInstances == 2 and b.NumberOfStudyRelatedSeries == 1
    assert list(b.ModalitiesInStudy) == ["CR"] if b["ModalitiesInStudy"].VM > 1 else b.ModalitiesInStudy == "CR"
    syn = by_uid[data["synthetic"].study_instance_uid]
    assert str(syn.PatientName).startswith("SYNTHETIC^") and syn.ModalitiesInStudy == "OT"
    assert all(ds.RetrieveAETitle == cfg.dicom.ae_title and ds.QueryRetrieveLevel == "STUDY" for ds in found)


def test_wildcards_ranges_and_lists_narrow_the_matches(archive):
    cfg, store, data = archive
    assert [ds.StudyInstanceUID for ds in _find(cfg, store, "STUDY", StudyInstanceUID="", PatientName="SYNTHETIC*")] == [
        data["synthetic"].study_instance_uid
    ]
    jan = _find(cfg, store, "STUDY", StudyInstanceUID="", StudyDate="20240101-20240131")
    assert [ds.StudyInstanceUID for ds in jan] == [data["a"].StudyInstanceUID]
    two = _find(cfg, store, "STUDY", StudyInstanceUID=f"{data['a'].StudyInstanceUID}\\{data['b'].StudyInstanceUID}")
    assert len(two) == 2
    assert len(_find(cfg, store, "STUDY", StudyInstanceUID="", ModalitiesInStudy="OT")) == 1
    assert _find(cfg, store, "STUDY", StudyInstanceUID="", PatientName="nobody*") == []


def test_series_and_image_levels(archive):
    cfg, store, data = archive
    series = _find(cfg, store, "SERIES", StudyInstanceUID=data["b"].StudyInstanceUID, SeriesInstanceUID="", Modality="",
                   BodyPartExamined="", NumberOfSeriesRelatedInstances="")
    assert len(series) == 1 and series[0].BodyPartExamined == "TIBIA" and series[0].NumberOfSeriesRelatedInstances == 2
    images = _find(cfg, store, "IMAGE", SeriesInstanceUID=data["b"].SeriesInstanceUID, SOPInstanceUID="", InstanceNumber="",
                   SOPClassUID="", Rows=None, ImageComments="")
    assert [int(ds.InstanceNumber) for ds in images] == [1, 2]
    assert all(ds.Rows == 32 and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" for ds in images)
    # A key the index does not hold is read from the stored header.
    syn = _find(cfg, store, "IMAGE", SeriesInstanceUID=data["synthetic"].series_instance_uid, SOPInstanceUID="",
                ImageComments="", SyntheticData="")
    assert len(syn) == 2 and all("seed=" in ds.ImageComments and ds.SyntheticData == "YES" for ds in syn)


def test_patient_root_patient_level(archive):
    cfg, store, _ = archive
    found = _find(cfg, store, "PATIENT", PatientID="P2", PatientName="", NumberOfPatientRelatedStudies="",
                  NumberOfPatientRelatedInstances="")
    assert len(found) == 1
    assert found[0].PatientName == "ROE^RICHARD" and found[0].NumberOfPatientRelatedInstances == 2


def test_synthetic_only_hides_received_studies(archive):
    cfg, store, data = archive
    import dataclasses

    only = dataclasses.replace(cfg, qr=dataclasses.replace(cfg.qr, synthetic_only=True))
    found = _find(only, store, "STUDY", StudyInstanceUID="")
    assert [ds.StudyInstanceUID for ds in found] == [data["synthetic"].study_instance_uid]
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = data["a"].StudyInstanceUID
    assert QueryRetrieveSCP(only, store).retrieve_records(ident, "STUDY") == []


def test_results_stop_at_max_results(archive):
    cfg, store, _ = archive
    import dataclasses

    capped = dataclasses.replace(cfg, qr=dataclasses.replace(cfg.qr, max_results=2))
    assert len(_find(capped, store, "STUDY", StudyInstanceUID="")) == 2
    assert len(_find(cfg, store, "STUDY", StudyInstanceUID="")) == 3


# -- dcmtk against the running service -------------------------------------------------------------------


@pytest.fixture
def service(home, tmp_path):
    port = free_port()
    storescp = StoreSCP(tmp_path / "moved")
    cfg = config_with_peers(home, [("STORESCP", "127.0.0.1", storescp.port)], **{"deid.enabled": False, "dicom.port": port,
                                                                                   "outbox.health_interval_s": 0})
    svc = RunningService(cfg)
    a = phantom_dataset(48, 48, seed=5, patient_name="DOE^JANE", patient_id="P1")
    svc.store.put(a, source="import")
    syn = write_synthetic_study(cfg, svc.store, count=3)
    yield svc, storescp, a, syn
    svc.stop()
    storescp.stop()


def _dcmtk(tool: str, args: list[str], cwd: Path) -> str:
    proc = subprocess.run([require_tool(tool, "dcmtk"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    return proc.stdout + proc.stderr


def _responses(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


@pytest.mark.integration
def test_findscu_finds_the_synthetic_study_at_every_level(service, tmp_path):
    svc, _storescp, _a, syn = service
    out = tmp_path / "find"
    out.mkdir()
    base = ["-S", "-X", "-od", str(out), "127.0.0.1", str(svc.port), "-aec", svc.ae_title]
    log = _dcmtk("findscu", [*base, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName=SYNTHETIC*",
                             "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", "-k", "StudyDescription"], tmp_path)
    (study,) = _responses(out)
    assert study.StudyInstanceUID == syn.study_instance_uid, log
    assert study.NumberOfStudyRelatedInstances == 3 and study.StudyDescription.startswith("SYNTHETIC")
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    _dcmtk("findscu", [*base, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={syn.study_instance_uid}",
                       "-k", "SeriesInstanceUID", "-k", "SeriesDescription", "-k", "Modality"], tmp_path)
    (series,) = _responses(out)
    assert series.SeriesInstanceUID == syn.series_instance_uid and series.SeriesDescription.startswith("SYNTHETIC")
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    _dcmtk("findscu", [*base, "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={syn.study_instance_uid}",
                       "-k", f"SeriesInstanceUID={syn.series_instance_uid}", "-k", "SOPInstanceUID", "-k", "InstanceNumber"], tmp_path)
    assert {ds.SOPInstanceUID for ds in _responses(out)} == {i.sop_instance_uid for i in syn.instances}


@pytest.mark.integration
def test_findscu_patient_root_and_a_refused_level(service, tmp_path):
    svc, _storescp, a, _syn = service
    out = tmp_path / "find"
    out.mkdir()
    _dcmtk("findscu", ["-P", "-X", "-od", str(out), "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=PATIENT",
                       "-k", "PatientID=P1", "-k", "PatientName", "-k", "NumberOfPatientRelatedStudies"], tmp_path)
    (patient,) = _responses(out)
    assert patient.PatientName == "DOE^JANE" and patient.NumberOfPatientRelatedStudies == 1
    # The Study Root model has no PATIENT level: a failure status, no matches (findscu exits 0 either way).
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    log = _dcmtk("findscu", ["-v", "-S", "-X", "-od", str(out), "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=PATIENT",
                             "-k", "PatientID"], tmp_path)
    assert _responses(out) == []
    assert "datasetdoesnotmatchsopclass" in log.lower(), log


@pytest.mark.integration
def test_getscu_retrieves_the_synthetic_study(service, tmp_path):
    svc, _storescp, _a, syn = service
    out = tmp_path / "got"
    out.mkdir()
    log = _dcmtk("getscu", ["-S", "-od", str(out), "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={syn.study_instance_uid}"], tmp_path)
    got = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert got == {i.sop_instance_uid for i in syn.instances}, log
    for p in out.iterdir():
        ds = pydicom.dcmread(p)
        assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN"


@pytest.mark.integration
def test_movescu_sends_the_study_to_a_configured_destination(service, tmp_path):
    svc, storescp, _a, syn = service
    log = _dcmtk("movescu", ["-S", "-aem", "STORESCP", "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=SERIES",
                             "-k", f"StudyInstanceUID={syn.study_instance_uid}", "-k", f"SeriesInstanceUID={syn.series_instance_uid}"], tmp_path)
    moved = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.files()}
    assert moved == {i.sop_instance_uid for i in syn.instances}, log
    # An AE title that is not a configured peer: Move Destination Unknown, nothing sent.
    log = _dcmtk("movescu", ["-v", "-S", "-aem", "NOWHERE", "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=STUDY",
                             "-k", f"StudyInstanceUID={syn.study_instance_uid}"], tmp_path)
    assert "movedestinationunknown" in log.lower(), log
    assert len(storescp.files()) == 3


@pytest.mark.integration
def test_a_retrieve_without_its_unique_key_fails(service, tmp_path):
    svc, storescp, _a, _syn = service
    out = tmp_path / "got"
    out.mkdir()
    log = _dcmtk("getscu", ["-v", "-S", "-od", str(out), "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*"], tmp_path)
    assert list(out.iterdir()) == []
    assert "datasetdoesnotmatchsopclass" in log.lower(), log


@pytest.mark.integration
def test_compressed_instances_are_decompressed_for_peers_that_want_them_uncompressed(service, tmp_path):
    """getscu and a default storescp accept only uncompressed syntaxes; a JPEG 2000 instance still arrives."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_J2KR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG3_J2KR.dcm is not installed")
    svc, storescp, _a, _syn = service
    original = pydicom.dcmread(path)
    rec = svc.store.put(pydicom.dcmread(path), source="import").record
    assert rec.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    keys = ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={rec.study_uid}", "-k", f"SeriesInstanceUID={rec.series_uid}",
            "-k", f"SOPInstanceUID={rec.sop_instance_uid}"]
    out = tmp_path / "got"
    out.mkdir()
    log = _dcmtk("getscu", ["-S", "-od", str(out), "127.0.0.1", str(svc.port), *keys], tmp_path)
    (got,) = [pydicom.dcmread(p) for p in out.iterdir()] or [None]
    assert got is not None, log
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, original.pixel_array)
    _dcmtk("movescu", ["-S", "-aem", "STORESCP", "127.0.0.1", str(svc.port), *keys], tmp_path)
    (moved,) = [pydicom.dcmread(p) for p in storescp.files()]
    assert not moved.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(moved.pixel_array, original.pixel_array)
