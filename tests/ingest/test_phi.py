"""Known names and IDs go in; none of them may come out in the logs, the stored files or the index."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service.data.phantom import phantom_dataset
from tests.helpers import require_tool
from tests.ingest.util import PHI, SCPProcess, chunked_sending, encode_body, send, storescu, with_phi, write_raw_file

pytestmark = pytest.mark.integration


def _secrets(originals: list[pydicom.Dataset]) -> list[bytes]:
    values = [v.encode() for v in PHI.values()]
    for ds in originals:  # the original UIDs identify the study too: only hashes may appear
        values += [str(ds.StudyInstanceUID).encode(), str(ds.SOPInstanceUID).encode()]
    return values


def test_no_patient_data_in_logs_store_or_index(tmp_path):
    require_tool("storescu", "dcmtk")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    originals = []
    for i in range(3):
        ds = with_phi(phantom_dataset(64, 64, seed=i, study_uid=generate_uid()))
        ds.save_as(inbox / f"p{i}.dcm", enforce_file_format=True)
        originals.append(ds)
    rg3 = with_phi(pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")))
    rg3.save_as(inbox / "rg3.dcm", enforce_file_format=True)
    originals.append(rg3)

    server = SCPProcess(tmp_path / "home").start()  # logs at debug level: the most it ever says
    try:
        out = storescu(server.port, inbox)
        assert out.returncode == 0, out.stderr
        assert storescu(server.port, inbox).returncode == 0  # duplicates are logged too
        # Refusals log details: a huge header and a broken UID, both carrying the names.
        huge = with_phi(phantom_dataset(16, 16))
        huge.Rows = huge.Columns = 65535
        bad_uid = with_phi(phantom_dataset(16, 16))
        bad_uid.StudyInstanceUID = "1.2.3.DOE.JANE"
        with chunked_sending():
            statuses = send(server.port, [write_raw_file(tmp_path / "a.dcm", encode_body(huge)), write_raw_file(tmp_path / "b.dcm", encode_body(bad_uid))])
        assert statuses == [0xC000, 0xC000]
    finally:
        server.stop()

    log = server.log().encode()
    assert b"instance_refused" in log and b"association_released" in log
    secrets = _secrets(originals)
    for value in secrets:
        assert value not in log, f"{value!r} reached the log"
    store_files = [p for p in (tmp_path / "home" / "store").rglob("*") if p.is_file()]
    assert len([p for p in store_files if p.suffix == ".dcm"]) == len(originals)
    for path in store_files:  # the DICOM files and the SQLite index with its WAL
        data = path.read_bytes()
        for value in secrets:
            assert value not in data, f"{value!r} is in {path.name}"


def test_every_table_e11_attribute_planted_reaches_neither_store_nor_index_nor_log(tmp_path):
    # PS3.15 Table E.1-1 in full through the real SCP: every attribute of the table (and, inside every
    # sequence, a name, a comment, a UID and a coded concept with free-text meaning) carries a marker.
    import os
    import subprocess

    from tests.ingest.deid_dataset import markers, planted

    require_tool("storescu", "dcmtk")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(2):
        ds = phantom_dataset(32, 32, seed=i, study_uid=generate_uid())
        planted(ds)
        ds.save_as(inbox / f"table{i}.dcm", enforce_file_format=True)
    server = SCPProcess(tmp_path / "home").start()
    try:
        cmd = ["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "SYNTHPACS", "+sd", "+r", "127.0.0.1", str(server.port), str(inbox)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, TCP_NODELAY="1"))
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()
    log = server.log().encode()
    assert log.count(b"instance_stored") == 2 and b"instance_refused" not in log
    store_files = [p for p in (tmp_path / "home" / "store").rglob("*") if p.is_file()]
    stored = [pydicom.dcmread(p) for p in store_files if p.suffix == ".dcm"]
    assert len(stored) == 2
    for ds in stored:  # the planted attributes arrived and were acted on, not lost on the way
        assert ds.InstitutionName == "ANONYMIZED" and ds.LabelText == "" and "CameraOwnerName" not in ds
        assert ds.ReferencedImageSequence[0].CodeMeaning == "Basic Application Confidentiality Profile"
    for marker in markers():
        assert marker not in log, f"{marker!r} reached the log"
        for path in store_files:
            assert marker not in path.read_bytes(), f"{marker!r} is in {path.name}"
