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
