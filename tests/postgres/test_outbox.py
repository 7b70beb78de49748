"""The outbox as a work queue shared by senders of several processes on one PostgreSQL index.

Claims lock rows with SKIP LOCKED (a second sender neither waits for nor takes rows another claim holds);
a sender killed mid-send, even on another host, has its rows made due by the live senders as soon as
its database session ends; delivery to a real peer (dcmtk storescp) is complete, at least once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pydicom
from pydicom.uid import generate_uid

from service.archive.index import Index
from service.archive.store import Store
from service.data.phantom import phantom_dataset
from service.synthetic.outbox import Outbox, OutboxSender
from tests.helpers import REPO, make_config
from tests.synthetic.conftest import StoreSCP, wait_for

PEER = {"ae_title": "P", "host": "127.0.0.1", "port": 104}


def _cfg(home, url, peers=(PEER,)):
    return make_config(home, **{"store.index_url": url, "dicom.peers": list(peers), "deid.enabled": False})


def test_a_claim_skips_rows_another_claim_holds_without_waiting(home, pg_url):
    cfg = _cfg(home, pg_url)
    a_index, b_index = Index(url=pg_url), Index(url=pg_url)
    try:
        a, b = Outbox(cfg, a_index), Outbox(cfg, b_index)
        ids = a.enqueue([generate_uid() for _ in range(6)], "P")
        with a_index.write() as conn:  # sender A's claim, caught between its SELECT and its COMMIT
            held = [r[0] for r in conn.execute(
                "SELECT o.id FROM outbox o WHERE o.state = 'pending' ORDER BY o.id LIMIT 3" + a_index.dialect.lock_rows("o")).fetchall()]
            assert held == ids[:3]
            taken = [c.id for c in b.claim("P", 10)]  # returns at once, without A's rows
            assert taken == ids[3:]
        assert [c.id for c in a.claim("P", 10)] == ids[:3]
        assert {r.state for r in a.items()} == {"sending"}
        assert {r["lease_owner"].split(" ")[-1] for r in a_index.reader.execute("SELECT lease_owner FROM outbox")} == {
            a.owner.split(" ")[-1], b.owner.split(" ")[-1]}
    finally:
        a_index.close()
        b_index.close()


def test_two_senders_racing_claim_every_item_exactly_once(home, pg_url):
    cfg = _cfg(home, pg_url)
    indexes = [Index(url=pg_url) for _ in range(2)]
    try:
        outboxes = [Outbox(cfg, i) for i in indexes]
        ids = set(outboxes[0].enqueue([generate_uid() for _ in range(80)], "P"))
        claimed: list[list[int]] = [[], []]
        start = threading.Barrier(2)

        def work(n):
            start.wait()
            for _ in range(200):  # bounded: 80 items in batches of 3 need at most 27 claims
                batch = outboxes[n].claim("P", 3)
                if not batch:
                    return
                claimed[n] += [c.id for c in batch]
                for item in batch:
                    outboxes[n].mark_sent(item, 0)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        every = claimed[0] + claimed[1]
        assert sorted(every) == sorted(ids)  # each item claimed once, by one sender, none left
        assert {r.state for r in outboxes[0].items()} == {"sent"}
    finally:
        for i in indexes:
            i.close()


# A sender in a process of its own that claims every due item and hangs until it is killed. It counts as
# another host, so nothing but its PostgreSQL session can tell that it died.
_WORKER = """
import json, socket, sys, time
socket.gethostname = lambda: "another-host"
from service.archive.index import Index
from service.config import load_config
from service.synthetic.outbox import Outbox
overrides = json.loads(sys.argv[1])
cfg = load_config(path=None, env={}, overrides=overrides)
outbox = Outbox(cfg, Index(url=overrides["store.index_url"]))
print(json.dumps({"claimed": len(outbox.claim("STORESCP", 100)), "owner": outbox.owner}), flush=True)
time.sleep(600)
"""


def test_a_killed_senders_items_are_reclaimed_at_once_and_delivered(home, tmp_path, pg_url):
    peer = StoreSCP(tmp_path / "peer")
    cfg = _cfg(home, pg_url, peers=({"ae_title": "STORESCP", "host": "127.0.0.1", "port": peer.port},))
    store = Store(cfg)
    worker = None
    sender = None
    try:
        study, series = generate_uid(), generate_uid()
        uids = [store.put(phantom_dataset(32, 32, seed=n, study_uid=study, series_uid=series, instance_number=n + 1), source="import")
                .record.sop_instance_uid for n in range(5)]
        outbox = Outbox(cfg, store.index)
        outbox.enqueue(uids, "STORESCP")
        overrides = {"home": str(home), "store.index_url": pg_url, "metrics.enabled": False,
                     "dicom.peers": [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": peer.port}]}
        worker = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(overrides)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))
        line = json.loads(worker.stdout.readline())
        assert line["claimed"] == 5 and line["owner"].startswith("another-host ")
        assert outbox.release_orphans() == 0  # its session is alive: its lease stands
        sender = OutboxSender(cfg, store, outbox, poll_interval_s=0.2)
        sender.start()
        # The running sender sends nothing of the live worker's (its lease holds 120 s and more) ...
        assert {r.state for r in outbox.items()} == {"sending"}
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        # ... and everything once the worker is gone: the server ended its session, the sender saw it.
        rows = sender.drain(timeout=60, sop_instance_uids=uids)
        assert [r.state for r in rows] == ["sent"] * 5, rows
        assert wait_for(lambda: len(peer.files()) >= 5, timeout=30)
        assert {pydicom.dcmread(p).SOPInstanceUID for p in peer.files()} == set(uids)
    finally:
        if sender is not None:
            sender.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        store.close()
        peer.stop()


def test_the_same_instance_queued_by_two_processes_at_once_is_one_row(home, pg_url):
    cfg = _cfg(home, pg_url)
    indexes = [Index(url=pg_url) for _ in range(2)]
    try:
        outboxes = [Outbox(cfg, i) for i in indexes]
        uids = [generate_uid() for _ in range(30)]
        got: list[list[int]] = [[], []]

        def queue(n):
            for uid in uids:  # one transaction each, interleaved with the other process's
                got[n] += outboxes[n].enqueue([uid], "P")

        threads = [threading.Thread(target=queue, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got[0] == got[1] and len(set(got[0])) == 30
        assert len(outboxes[0].items()) == 30
    finally:
        for i in indexes:
            i.close()


def test_a_sender_whose_session_ended_leases_under_a_new_one(home, pg_url):
    """After a server restart (here: its session terminated) a live sender must not look dead to the others."""
    import psycopg

    cfg = _cfg(home, pg_url)
    a_index, b_index = Index(url=pg_url), Index(url=pg_url)
    try:
        a, b = Outbox(cfg, a_index), Outbox(cfg, b_index)
        a.enqueue([generate_uid() for _ in range(4)], "P")
        before = a.owner
        pid = int(before.split(" ")[3].split(":")[1])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert wait_for(lambda: b_index.backend.sessions_gone([before.split(" ")[3]]), timeout=30)
        claimed = a.claim("P", 4)
        assert len(claimed) == 4 and a.owner != before
        assert b.release_orphans() == 0  # a's rows are leased under its live session
        assert {r.state for r in b.items()} == {"sending"}
    finally:
        a_index.close()
        b_index.close()
