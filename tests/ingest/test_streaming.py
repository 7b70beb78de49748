"""Datasets written while they arrive give the very bytes of the whole-dataset path, or step aside."""

from __future__ import annotations

import copy
import hashlib

import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.archive import status
from service.archive.store import Store
from service.data.phantom import phantom_dataset
from tests.helpers import make_config
from tests.ingest.util import scu, send, with_phi
from tests.peers import RunningSCP

pytestmark = pytest.mark.integration


def _datasets():
    rg3 = with_phi(pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")))  # native, trailing padding
    j2k = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))  # encapsulated
    small = with_phi(phantom_dataset(64, 64))
    return [rg3, j2k, small]


def _stored(scp: RunningSCP) -> dict[str, str]:
    return {r.sop_instance_uid: hashlib.sha256(scp.store.path_of(r).read_bytes()).hexdigest() for r in scp.store.index.instances()}


@pytest.mark.parametrize("deid", [True, False])
def test_streamed_and_whole_paths_store_the_same_bytes(tmp_path, deid, monkeypatch):
    results = []
    originals = _datasets()
    for stream in (True, False):
        cfg = make_config(tmp_path / f"home-{stream}", **{"dicom.stream_writes": stream, "deid.enabled": deid, "dicom.max_pdu": 16384})
        scp = RunningSCP(cfg)
        try:
            if stream:  # the whole-dataset path must not be needed for these
                def refuse(*a, **k):
                    raise AssertionError("the stream stepped aside")

                monkeypatch.setattr(scp.store, "put_bytes", refuse)
            contexts = [(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in originals]
            ae = scu(contexts=contexts)
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="SYNTHPACS")
            assert assoc.is_established
            statuses = [int(assoc.send_c_store(copy.deepcopy(ds)).Status) for ds in originals]
            assoc.release()
            ae.shutdown()
            assert statuses == [0, 0, 0]
            results.append(_stored(scp))
            assert scp.store.verify() == {"missing": [], "corrupt": [], "orphans": []}
            assert list(scp.store.tmp.iterdir()) == []
        finally:
            monkeypatch.undo()
            scp.stop()
    assert results[0] == results[1] and len(results[0]) == 3


def test_refused_and_unusual_datasets_step_aside(home):
    scp = RunningSCP(make_config(home, **{"dicom.max_pdu": 16384}))
    try:
        huge = phantom_dataset(64, 64)
        huge.Rows = huge.Columns = 65535
        statuses = send(scp.port, [huge, phantom_dataset(32, 32)])
        assert statuses == [status.CANNOT_UNDERSTAND, status.SUCCESS]
        assert scp.store.index.stats()["instances"] == 1 and list(scp.store.tmp.iterdir()) == []
    finally:
        scp.stop()


def test_stream_matches_put_bytes_for_a_file(home, tmp_path):
    """The stream's bytes equal what ingest (put_bytes of the file) stores for the same instance."""
    ds = with_phi(pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")))
    scp = RunningSCP(make_config(home, **{"dicom.max_pdu": 16384}))
    try:
        assert send(scp.port, [ds]) == [0]
        streamed = next(scp.store.index.instances())
    finally:
        scp.stop()
    other = Store(make_config(tmp_path / "other"))
    try:
        path = tmp_path / "rg3.dcm"
        ds.save_as(path, enforce_file_format=True)
        imported = other.put_bytes(path.read_bytes(), source="import").record
    finally:
        other.close()
    assert imported.sha256 == streamed.sha256 and imported.sop_instance_uid == streamed.sop_instance_uid
