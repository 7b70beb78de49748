"""Outbox hand-offs of a sender killed mid-send are due at once when a sender starts again.

A real ``synthpacs scp`` process claims a study for dcmtk storescp while storescp is stopped (SIGSTOP: the
kernel accepts the connection, nobody answers), so the items sit in 'sending' under that process's lease.
The process is killed with SIGKILL; the lease is made far longer than the test may wait, so only the
release on start can deliver the items in time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3

import pydicom
import pytest

from service.archive.store import Store
from service.synthetic.outbox import Outbox, OutboxSender, owner_gone, process_token
from tests.helpers import make_config
from tests.ingest.util import SCPProcess
from tests.synthetic.conftest import StoreSCP, wait_for, write_synthetic_study

pytestmark = pytest.mark.integration

# Every timeout long: the first sender must stay stuck in 'sending', and its lease (4 x dimse_timeout)
# must outlast the test by far.
SLOW = {"dicom.acse_timeout": 900.0, "dicom.dimse_timeout": 900.0, "dicom.network_timeout": 900.0, "outbox.health_interval_s": 0}


def test_tokens_name_live_and_dead_processes():
    assert not owner_gone(process_token())  # ourselves
    assert not owner_gone("another-host 1 123")  # not ours to judge
    assert not owner_gone("garbage")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    token = process_token(dead)
    os.waitpid(dead, 0)
    assert owner_gone(token)
    assert owner_gone(f"{socket.gethostname()} {os.getpid()} 1") is False  # our own pid is never gone


def test_items_of_a_sender_killed_mid_send_are_sent_at_once_on_start(home, tmp_path):
    peer = StoreSCP(tmp_path / "received")
    peers = [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": peer.port}]
    cfg = make_config(home, **{"dicom.peers": peers, **SLOW})
    store = Store(cfg)
    study = write_synthetic_study(cfg, store, count=3, destination="STORESCP")
    uids = [i.sop_instance_uid for i in study.instances]
    store.close()

    os.kill(peer.process.pid, signal.SIGSTOP)
    env = {"SYNTHPACS_DICOM_PEERS": json.dumps(peers), **{"SYNTHPACS_" + k.upper().replace(".", "_"): str(v) for k, v in SLOW.items()}}
    first = SCPProcess(home, env=env).start()
    try:
        probe = make_config(home, **{"dicom.peers": peers, **SLOW})
        probe_store = Store(probe)
        outbox = Outbox(probe, probe_store.index)
        claimed = wait_for(lambda: [r for r in outbox.items(sop_instance_uids=uids) if r.state == "sending"], timeout=60)
        assert len(claimed) == 3, first.log()[-2000:]
        owner = probe_store.index.reader.execute("SELECT DISTINCT lease_owner FROM outbox WHERE state = 'sending'").fetchall()
        assert [o[0].split(" ")[1] for o in owner] == [str(first.proc.pid)]
        first.kill()  # SIGKILL while its association request waits for an answer
    finally:
        first.kill()
        os.kill(peer.process.pid, signal.SIGCONT)
    assert all(r.state == "sending" for r in outbox.items(sop_instance_uids=uids))  # the dead sender's lease stands

    sender = OutboxSender(probe, probe_store)
    try:
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=uids)
        assert [r.state for r in rows] == ["sent"] * 3, rows
        assert {pydicom.dcmread(p).SOPInstanceUID for p in peer.files()} == set(uids)
    finally:
        sender.stop()
        probe_store.close()
        peer.stop()


def test_an_older_outbox_table_gains_the_owner_column(home):
    cfg = make_config(home, **{"dicom.peers": [{"ae_title": "P", "host": "127.0.0.1", "port": 104}]})
    Store(cfg).close()
    # The database as an earlier release left it: schema version 1, and the outbox table its first start made.
    with sqlite3.connect(home / "store" / "index.sqlite") as conn:
        conn.execute("DROP TABLE outbox")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM schema_migrations WHERE version = 2")
        conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, sop_instance_uid TEXT NOT NULL, "
                     "destination TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, "
                     "next_attempt_at REAL NOT NULL, lease_until REAL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
                     "sent_at TEXT, last_status INTEGER, last_error TEXT, UNIQUE (sop_instance_uid, destination))")
        conn.execute("INSERT INTO outbox (sop_instance_uid, destination, state, next_attempt_at, lease_until, created_at, updated_at) "
                     "VALUES ('1.2.3', 'P', 'sending', 0, 1e12, 'x', 'x')")
    store = Store(cfg)  # migrates it to version 2: the owner column is added
    try:
        assert store.index.migration.applied == (2,)
        outbox = Outbox(cfg, store.index)
        assert outbox.release_orphans() == 0  # an owner nobody recorded: its lease runs its course
        assert [r.state for r in outbox.items()] == ["sending"]
        Outbox(cfg, store.index)  # and a second start finds the column there
    finally:
        store.close()
