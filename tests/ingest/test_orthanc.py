"""Orthanc as the hospital PACS: configured with synthpacs as a modality, told over REST to send a study."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.config import DicomPeer
from tests.helpers import make_config
from tests.ingest.util import PHI, part10, phantom_files, with_phi
from tests.peers import RunningSCP, start_orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_orthanc_sends_a_study_to_synthpacs(home, tmp_path):
    # Orthanc is a listed peer (AE title and host); loopback is not trusted by default here.
    cfg = make_config(home, **{"dicom.allow_loopback": False, "dicom.peers": [DicomPeer("ORTHANC", "127.0.0.1")]})
    scp = RunningSCP(cfg)
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"synthpacs": ["SYNTHPACS", "127.0.0.1", scp.port]})
    try:
        files = phantom_files(tmp_path / "study", 3, size=64)
        for path in files:
            ds = with_phi(pydicom.dcmread(path))
            orthanc.post("/instances", part10(ds))
        orthanc.post("/instances", open(get_testdata_file("RG3_J2KR.dcm"), "rb").read())
        studies = orthanc.get("/studies")
        assert len(studies) == 2
        orthanc.post("/modalities/synthpacs/echo", {})  # Orthanc's C-ECHO to us; an HTTP error if it fails
        for study in studies:
            job = orthanc.post("/modalities/synthpacs/store", {"Resources": [study], "Synchronous": True})
            assert job.get("FailedInstancesCount", 0) == 0, job
        stats = scp.store.index.stats()
        assert stats["instances"] == 4 and stats["studies"] == 2 and stats["by_source_ae"] == {"ORTHANC": 4}
        assert scp.store.verify() == {"missing": [], "corrupt": [], "orphans": []}
        j2k = [r for r in scp.store.index.instances() if r.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"]
        assert len(j2k) == 1  # Orthanc sends what it stores; we keep it as received
        for rec in scp.store.index.instances():
            data = scp.store.path_of(rec).read_bytes()
            assert not any(v.encode() in data for v in PHI.values())
        # A second send of the same study changes nothing (de-identification is deterministic).
        orthanc.post("/modalities/synthpacs/store", {"Resources": [studies[0]], "Synchronous": True})
        assert scp.store.index.stats()["instances"] == 4
    finally:
        orthanc.stop()
        scp.stop()
