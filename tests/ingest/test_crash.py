"""SIGKILL the server in the middle of a stream: every acknowledged instance survives, nothing partial stays."""

from __future__ import annotations

import hashlib
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid

from service.archive.deid import Deidentifier
from service.archive.index import Index
from service.data.phantom import phantom_dataset
from tests.ingest.util import SCPProcess, scu

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILL_AFTER = 12


def test_sigkill_mid_stream_keeps_every_acknowledged_instance(tmp_path):
    home = tmp_path / "home"
    server = SCPProcess(home).start()
    study, series = generate_uid(), generate_uid()
    datasets = [phantom_dataset(512, 512, seed=i % 3, study_uid=study, series_uid=series, instance_number=i + 1) for i in range(40)]
    acknowledged: list[pydicom.Dataset] = []
    ack_count = threading.Semaphore(0)

    def killer() -> None:
        for _ in range(KILL_AFTER):
            if not ack_count.acquire(timeout=60):
                break
        server.kill()  # while instance KILL_AFTER + 1 is in flight

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    ae = scu("CRASHER")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
    assert assoc.is_established
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            if rsp is None or "Status" not in rsp or not assoc.is_established:
                break
            if rsp.Status == 0:
                acknowledged.append(ds)
                ack_count.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
        thread.join(timeout=60)
    assert KILL_AFTER <= len(acknowledged) < len(datasets), "the kill did not land in the middle of the stream"

    restarted = SCPProcess(home, port=server.port).start()
    try:
        tmp_left = list((home / "store" / ".tmp").glob("*.part"))
        assert tmp_left == []
        deid = Deidentifier(b"test-secret")
        index = Index(home / "store" / "index.sqlite")
        try:
            for ds in acknowledged:
                rec = index.get(deid.remap_uid(str(ds.SOPInstanceUID)))
                assert rec is not None
                data = (home / "store" / rec.path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == rec.sha256
                assert pydicom.dcmread(home / "store" / rec.path).PixelData == ds.PixelData
            # Nothing half-written anywhere: every file in the store is indexed with its digest.
            files = {str(p.relative_to(home / "store")) for p in (home / "store").rglob("*.dcm") if ".tmp" not in p.parts}
            indexed = {r.path for r in index.instances()}
            assert files == indexed
        finally:
            index.close()
        assert "index_recovered" not in restarted.log()  # a process crash loses no committed row
    finally:
        restarted.stop()
