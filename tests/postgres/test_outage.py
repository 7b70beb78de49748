"""The PostgreSQL server goes away under a running SCP: C-STOREs fail (never a success without a committed
row), nothing half-stored is left, and the SCP stores again once the server is back, without a restart."""

from __future__ import annotations

import threading

import pytest
from pydicom.uid import generate_uid

from service.archive import status
from service.data.phantom import phantom_dataset
from tests.helpers import make_config
from tests.ingest.util import send
from tests.pg import started_or_skip
from tests.synthetic.conftest import RunningService


@pytest.fixture
def own_server():
    """A server of this test's own: it is stopped and started again here."""
    yield from started_or_skip()


@pytest.mark.integration
def test_an_index_outage_fails_c_stores_and_the_scp_recovers_by_itself(home, own_server):
    cfg = make_config(home, **{"store.index_url": own_server.new_database(), "deid.enabled": False})
    study, series = generate_uid(), generate_uid()
    datasets = [phantom_dataset(32, 32, seed=n, study_uid=study, series_uid=series, instance_number=n + 1) for n in range(3)]
    svc = RunningService(cfg, outbox=False)
    try:
        assert send(svc.port, [datasets[0]]) == [status.SUCCESS]
        # Several pooled connections, all of which the outage will break.
        readers = [threading.Thread(target=lambda: svc.store.index.reader.execute("SELECT pg_sleep(0.2)")) for _ in range(4)]
        for t in readers:
            t.start()
        for t in readers:
            t.join(30)
        own_server.stop_server()
        failed = send(svc.port, [datasets[1]])
        assert failed[0] not in (status.SUCCESS, -1) and failed[0] >> 12 in (0xA, 0xC), failed  # a failure status, answered
        # Not indexed means not stored: no file of it either.
        assert not list((home / "store").rglob(f"{datasets[1].SOPInstanceUID}.dcm"))
        own_server.start()
        # Every C-STORE after the server is back succeeds: stale pooled connections are replaced, not used.
        assert send(svc.port, [datasets[1], datasets[2]]) == [status.SUCCESS, status.SUCCESS]
        assert {r.sop_instance_uid for r in svc.store.index.instances()} == {str(ds.SOPInstanceUID) for ds in datasets}
        assert svc.store.verify() == {"missing": [], "corrupt": [], "orphans": []}
    finally:
        svc.stop()
