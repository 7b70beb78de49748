"""Synthetic studies and Orthanc as the hospital PACS: outbox C-STORE, findscu against Orthanc, Orthanc
querying synthpacs and pulling with C-MOVE as a viewer would, and an outage of the PACS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.helpers import free_port, require_tool
from tests.peers import start_orthanc
from tests.synthetic.conftest import RunningService, config_with_peers, wait_for, write_synthetic_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"outbox.backoff_initial_s": 0.3, "outbox.backoff_max_s": 2.0, "outbox.health_interval_s": 0, "deid.enabled": False}


@pytest.fixture
def pacs(tmp_path, home):
    """Orthanc knowing synthpacs (for C-FIND/C-MOVE), and synthpacs knowing Orthanc (outbox and C-MOVE destination)."""
    our_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"synthpacs": ["SYNTHPACS", "127.0.0.1", our_port]})
    cfg = config_with_peers(home, [("ORTHANC", "127.0.0.1", orthanc.dicom_port)], **FAST, **{"dicom.port": our_port})
    svc = RunningService(cfg)
    yield orthanc, svc
    svc.stop()
    orthanc.stop()


def _findscu(port: int, keys: list[str], out: Path, aec: str = "ORTHANC") -> list[pydicom.Dataset]:
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [require_tool("findscu", "dcmtk"), "-S", "-X", "-od", str(out), "-aet", "SYNTHPACS", "-aec", aec, "127.0.0.1", str(port)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    # findscu exits 0 even when the peer aborts: the responses are the result.
    found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    if not found:
        print(proc.stdout, proc.stderr)
    return found


def test_outbox_delivers_to_orthanc_and_findscu_finds_it_there(pacs, tmp_path):
    orthanc, svc = pacs
    study = write_synthetic_study(svc.cfg, svc.store, count=3, bits=16, destination="ORTHANC")
    rows = svc.sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in study.instances])
    assert [r.state for r in rows] == ["sent"] * 3, rows
    assert len(orthanc.instances()) == 3

    out = tmp_path / "find"
    (st,) = _findscu(orthanc.dicom_port, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}", "PatientName",
                                          "PatientID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"], out)
    assert str(st.PatientName).startswith("SYNTHETIC^") and st.PatientID.startswith("SYNTHETIC-")
    assert st.StudyDescription.startswith("SYNTHETIC") and st.ModalitiesInStudy == "OT"
    assert int(st.NumberOfStudyRelatedInstances) == 3
    (se,) = _findscu(orthanc.dicom_port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.study_instance_uid}",
                                          "SeriesInstanceUID", "SeriesDescription", "Modality"], out)
    assert se.SeriesInstanceUID == study.series_instance_uid and se.SeriesDescription.startswith("SYNTHETIC")
    images = _findscu(orthanc.dicom_port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study.study_instance_uid}",
                                           f"SeriesInstanceUID={study.series_instance_uid}", "SOPInstanceUID", "ImageComments",
                                           "ImageType", "SOPClassUID"], out)
    assert {ds.SOPInstanceUID for ds in images} == {i.sop_instance_uid for i in study.instances}
    for ds in images:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert "seed=" in ds.ImageComments and "model=fixture-model" in ds.ImageComments
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    # What Orthanc stored is our instance, markers and pixels intact.
    tags = orthanc.get(f"/instances/{orthanc.instances()[0]}/tags?simplify")
    assert tags["ConversionType"] == "SYN" and tags["BurnedInAnnotation"] == "NO"
    raw = orthanc.get(f"/instances/{orthanc.instances()[0]}/file")
    sent = pydicom.dcmread(__import__("io").BytesIO(raw))
    assert sent.SyntheticData == "YES"
    assert sent.pixel_array.tobytes() == svc.store.read(sent.SOPInstanceUID).pixel_array.tobytes()


def test_orthanc_queries_synthpacs_and_pulls_the_study_with_c_move(pacs):
    """What a viewer does through its PACS: C-FIND synthpacs, then C-MOVE the study to the PACS."""
    orthanc, svc = pacs
    study = write_synthetic_study(svc.cfg, svc.store, count=2)  # kept in our archive, not sent
    query = orthanc.post("/modalities/synthpacs/query", {"Level": "Study", "Query": {"PatientName": "SYNTHETIC*", "StudyDescription": ""}})
    answers = orthanc.get(f"/queries/{query['ID']}/answers?expand")
    assert len(answers) == 1
    content = orthanc.get(f"/queries/{query['ID']}/answers/0/content?simplify")
    assert content["StudyInstanceUID"] == study.study_instance_uid and content["StudyDescription"].startswith("SYNTHETIC")
    orthanc.post(f"/queries/{query['ID']}/answers/0/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
    assert wait_for(lambda: len(orthanc.instances()) == 2, timeout=60)
    got = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.instances()}
    assert got == {i.sop_instance_uid for i in study.instances}


def test_nothing_is_lost_while_orthanc_is_down_and_duplicates_are_harmless(pacs):
    orthanc, svc = pacs
    orthanc.stop()
    study = write_synthetic_study(svc.cfg, svc.store, count=4, destination="ORTHANC")
    uids = [i.sop_instance_uid for i in study.instances]
    # Attempts fail while the PACS is down; the items wait, the destination is marked down.
    assert wait_for(lambda: all(r.attempts >= 1 for r in svc.sender.outbox.items(sop_instance_uids=uids)), timeout=30)
    assert all(r.state in ("pending", "sending") for r in svc.sender.outbox.items(sop_instance_uids=uids))
    assert not svc.sender.outbox.health()["ORTHANC"].healthy
    orthanc.start()
    rows = svc.sender.drain(timeout=90, sop_instance_uids=uids)
    assert [r.state for r in rows] == ["sent"] * 4, rows
    assert len(orthanc.instances()) == 4
    # At least once: sending everything again leaves Orthanc with the same four instances.
    svc.sender.outbox.enqueue(uids, "ORTHANC")
    rows = svc.sender.drain(timeout=60, sop_instance_uids=uids)
    assert [r.state for r in rows] == ["sent"] * 4
    assert len(orthanc.instances()) == 4
