"""The durable outbox and its sender: queue semantics, backoff, leases, and real C-STORE to dcmtk storescp."""

from __future__ import annotations

import random

import pydicom
import pytest

from service.archive.store import Store
from service.config import ConfigError
from service.dicom.scu import echo, storage_contexts_for
from service.synthetic.outbox import Outbox, OutboxSender, backoff_delay
from tests.helpers import free_port, make_config
from tests.synthetic.conftest import StoreSCP, config_with_peers, wait_for, write_synthetic_study

FAST = {"outbox.backoff_initial_s": 0.2, "outbox.backoff_max_s": 1.0, "outbox.health_interval_s": 0}


def test_backoff_doubles_up_to_the_cap_with_jitter():
    rng = random.Random(1)
    assert backoff_delay(0, 2, 300) == 0
    for attempts, base in [(1, 2), (2, 4), (3, 8), (9, 300), (60, 300)]:
        d = backoff_delay(attempts, 2, 300, rng)
        assert base / 2 <= d <= base


def test_enqueue_is_idempotent_and_a_sent_item_can_be_sent_again(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)])
    store = Store(cfg)
    try:
        out = write_synthetic_study(cfg, store, count=2)
        uids = [i.sop_instance_uid for i in out.instances]
        box = Outbox(cfg, store.index)
        first = box.enqueue(uids, "PACS")
        assert box.enqueue(uids, "PACS") == first
        assert [i.state for i in box.items()] == ["pending", "pending"]
        claimed = box.claim("PACS", 10)
        assert {c.sop_instance_uid for c in claimed} == set(uids)
        assert all(c.path and c.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7" for c in claimed)
        assert box.claim("PACS", 10) == []  # leased
        box.enqueue(uids, "PACS")  # re-queue while sending: left alone
        assert {i.state for i in box.items()} == {"sending"}
        for c in claimed:
            box.mark_sent(c, 0)
        assert {i.state for i in box.items()} == {"sent"}
        box.enqueue(uids[:1], "PACS")
        assert [i.state for i in box.items()] == ["pending", "sent"]
    finally:
        store.index.close()


def test_unknown_destinations_are_refused_with_the_configured_ones_listed(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)])
    store = Store(cfg)
    try:
        with pytest.raises(ValueError, match="configured destinations: PACS"):
            Outbox(cfg, store.index).enqueue(["1.2.3"], "ELSEWHERE")
    finally:
        store.index.close()


def test_retries_back_off_and_give_up_after_max_attempts(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)], **{**FAST, "outbox.max_attempts": 2})
    store = Store(cfg)
    try:
        box = Outbox(cfg, store.index)
        uid = write_synthetic_study(cfg, store, count=1).instances[0].sop_instance_uid
        box.enqueue([uid], "PACS")
        (item,) = box.claim("PACS", 1)
        assert box.mark_retry(item, "peer said no", status=0xA700) == "pending"
        row = box.items()[0]
        assert row.attempts == 1 and row.last_status == 0xA700 and row.last_error == "peer said no"
        assert box.claim("PACS", 1) == []  # backing off
        (item,) = wait_for(lambda: box.claim("PACS", 1), timeout=5)
        assert box.mark_retry(item, "peer said no again") == "failed"
        row = box.items()[0]
        assert row.state == "failed" and row.attempts == 2
        assert box.claim("PACS", 1) == []
    finally:
        store.index.close()


def test_failed_items_come_back_with_retry(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)], **{**FAST, "outbox.max_attempts": 1})
    store = Store(cfg)
    try:
        box = Outbox(cfg, store.index)
        uid = write_synthetic_study(cfg, store, count=1).instances[0].sop_instance_uid
        box.enqueue([uid], "PACS")
        (item,) = box.claim("PACS", 1)
        assert box.mark_retry(item, "refused") == "failed"
        assert box.claim("PACS", 1) == []
        assert box.make_due(destination="PACS") == 1
        row = box.items()[0]
        assert row.state == "pending" and row.attempts == 0
        assert len(box.claim("PACS", 1)) == 1
    finally:
        store.index.close()


def test_a_crashed_senders_items_return_when_the_lease_ends(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)])
    store = Store(cfg)
    try:
        uid = write_synthetic_study(cfg, store, count=1).instances[0].sop_instance_uid
        crashed = Outbox(cfg, store.index, lease_s=0.3)
        crashed.enqueue([uid], "PACS")
        assert len(crashed.claim("PACS", 1)) == 1  # ...and the process dies here
        survivor = Outbox(cfg, store.index)
        assert survivor.claim("PACS", 1) == []
        assert wait_for(lambda: survivor.claim("PACS", 1), timeout=5)
    finally:
        store.index.close()


def test_an_instance_deleted_from_the_store_fails_without_retrying(home):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)])
    store = Store(cfg)
    try:
        box = Outbox(cfg, store.index)
        uid = write_synthetic_study(cfg, store, count=1).instances[0].sop_instance_uid
        box.enqueue([uid], "PACS")
        store.index.delete(uid)
        (item,) = box.claim("PACS", 1)
        assert item.path == ""
    finally:
        store.index.close()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"outbox.backoff_initial_s": 0}, "backoff_initial_s"),
        ({"outbox.backoff_initial_s": 10, "outbox.backoff_max_s": 1}, "backoff_max_s"),
        ({"outbox.concurrency_per_destination": 0}, "concurrency"),
        ({"outbox.max_attempts": -1}, "max_attempts"),
    ],
)
def test_bad_outbox_settings_are_refused(home, overrides, message):
    cfg = make_config(home, **overrides)
    store = Store(cfg)
    try:
        with pytest.raises(ConfigError, match=message):
            Outbox(cfg, store.index)
    finally:
        store.index.close()


def test_contexts_offer_the_stored_syntax_and_uncompressed_fallbacks():
    sc = "1.2.840.10008.5.1.4.1.1.7"
    (cx,) = storage_contexts_for([(sc, "1.2.840.10008.1.2")])
    assert cx.transfer_syntax == ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
    j2k = storage_contexts_for([("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.4.90")])
    assert [c.transfer_syntax for c in j2k] == [["1.2.840.10008.1.2.4.90"], ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]]
    with pytest.raises(ValueError, match="at most 128"):
        storage_contexts_for([(f"1.2.3.{i}", "1.2.840.10008.1.2.4.90") for i in range(70)])


# -- against dcmtk storescp ----------------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path):
    peer = StoreSCP(tmp_path / "received")
    yield peer
    peer.stop()


def _sender_setup(home, peer_port, **overrides):
    cfg = config_with_peers(home, [("STORESCP", "127.0.0.1", peer_port)], **{**FAST, **overrides})
    store = Store(cfg)
    return cfg, store


@pytest.mark.integration
def test_c_echo_tells_a_live_destination_from_a_dead_one(home, storescp):
    cfg = config_with_peers(home, [("STORESCP", "127.0.0.1", storescp.port), ("DEAD", "127.0.0.1", free_port())])
    assert echo(cfg, cfg.peer("STORESCP")).ok
    dead = echo(cfg, cfg.peer("DEAD"), timeout=5)
    assert not dead.ok and "DEAD" in dead.detail


@pytest.mark.integration
def test_the_sender_delivers_a_study_to_storescp(home, storescp):
    cfg, store = _sender_setup(home, storescp.port)
    sender = OutboxSender(cfg, store)
    try:
        out = write_synthetic_study(cfg, store, count=5, destination="STORESCP")
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
        assert [r.state for r in rows] == ["sent"] * 5, rows
        received = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.files()}
        assert received == {i.sop_instance_uid for i in out.instances}
        health = sender.outbox.health()["STORESCP"]
        assert health.healthy and health.consecutive_failures == 0
    finally:
        sender.stop()
        store.index.close()


@pytest.mark.integration
def test_a_peer_that_only_accepts_implicit_vr_gets_implicit_vr(home, tmp_path):
    peer = StoreSCP(tmp_path / "implicit", extra=("+xi",))
    cfg, store = _sender_setup(home, peer.port)
    sender = OutboxSender(cfg, store)
    try:
        out = write_synthetic_study(cfg, store, count=2, bits=16, destination="STORESCP")
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
        assert [r.state for r in rows] == ["sent", "sent"]
        for path in peer.files():
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
            original = store.read(ds.SOPInstanceUID)
            assert ds.pixel_array.tobytes() == original.pixel_array.tobytes()
    finally:
        sender.stop()
        store.index.close()
        peer.stop()


@pytest.mark.integration
def test_compressed_instances_fall_back_to_uncompressed(home, tmp_path):
    """A JPEG 2000 instance goes decompressed to a peer that accepts only uncompressed syntaxes."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_J2KR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG3_J2KR.dcm is not installed")
    peer = StoreSCP(tmp_path / "plain", extra=("+xi",))
    cfg, store = _sender_setup(home, peer.port, **{"deid.enabled": False})
    sender = OutboxSender(cfg, store)
    try:
        original = pydicom.dcmread(path)
        rec = store.put(original, source="import").record
        sender.outbox.enqueue([rec.sop_instance_uid], "STORESCP")
        sender.start()
        (row,) = sender.drain(timeout=120, sop_instance_uids=[rec.sop_instance_uid])
        assert row.state == "sent", row
        (got,) = peer.files()
        ds = pydicom.dcmread(got)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert (ds.pixel_array == pydicom.dcmread(path).pixel_array).all()
    finally:
        sender.stop()
        store.index.close()
        peer.stop()


@pytest.mark.integration
def test_queued_sends_survive_a_restart(home, storescp):
    """Items queued by one process (which then ends without sending) are delivered by the next."""
    cfg, store = _sender_setup(home, storescp.port)
    out = write_synthetic_study(cfg, store, count=3, destination="STORESCP")
    store.index.close()

    cfg2, store2 = _sender_setup(home, storescp.port)
    sender = OutboxSender(cfg2, store2)
    try:
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
        assert [r.state for r in rows] == ["sent"] * 3
        assert len(storescp.files()) == 3
    finally:
        sender.stop()
        store2.index.close()


@pytest.mark.integration
def test_an_unreachable_destination_is_marked_down_and_retried(home, tmp_path):
    port = free_port()
    cfg, store = _sender_setup(home, port)
    sender = OutboxSender(cfg, store)
    peer = None
    try:
        out = write_synthetic_study(cfg, store, count=2, destination="STORESCP")
        uids = [i.sop_instance_uid for i in out.instances]
        sender.start()
        assert wait_for(lambda: all(r.attempts >= 1 for r in sender.outbox.items()), timeout=30)
        rows = sender.outbox.items()
        assert all(r.state in ("pending", "sending") and r.last_error for r in rows)
        assert not sender.outbox.health()["STORESCP"].healthy
        # The destination comes up on the same port: C-ECHO notices and everything goes.
        peer = StoreSCP(tmp_path / "late", port=port)
        rows = sender.drain(timeout=60, sop_instance_uids=uids)
        assert [r.state for r in rows] == ["sent", "sent"], rows
        assert wait_for(lambda: sender.outbox.health()["STORESCP"].healthy, timeout=10)
        assert len(peer.files()) == 2
    finally:
        sender.stop()
        store.index.close()
        if peer is not None:
            peer.stop()


class _CountingSCP:
    """An in-process pynetdicom Storage SCP that records how many associations were open at once."""

    def __init__(self, delay: float = 0.05):
        import threading

        from pynetdicom import AE, evt
        from pynetdicom.sop_class import SecondaryCaptureImageStorage

        self.lock = threading.Lock()
        self.open = self.most = self.stored = 0
        self.delay = delay
        ae = AE(ae_title="COUNTER")
        ae.add_supported_context(SecondaryCaptureImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_ESTABLISHED, self._up), (evt.EVT_RELEASED, self._down), (evt.EVT_ABORTED, self._down), (evt.EVT_C_STORE, self._store),
        ])

    def _up(self, _event):
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)

    def _down(self, _event):
        with self.lock:
            self.open -= 1

    def _store(self, _event):
        import time

        time.sleep(self.delay)  # a slow PACS, so that associations overlap
        with self.lock:
            self.stored += 1
        return 0x0000

    def stop(self):
        self.server.shutdown()


@pytest.mark.integration
@pytest.mark.parametrize("concurrency", [1, 2])
def test_associations_per_destination_never_exceed_the_setting(home, concurrency):
    peer = _CountingSCP()
    cfg = config_with_peers(home, [("COUNTER", "127.0.0.1", peer.port)],
                            **{**FAST, "outbox.concurrency_per_destination": concurrency, "outbox.batch_size": 3})
    store = Store(cfg)
    sender = OutboxSender(cfg, store)
    try:
        out = write_synthetic_study(cfg, store, count=12, destination="COUNTER")
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
        assert [r.state for r in rows] == ["sent"] * 12
        assert peer.stored == 12
        assert peer.most == concurrency
    finally:
        sender.stop()
        store.close()
        peer.stop()


@pytest.mark.integration
def test_an_attempt_against_a_closed_port_says_connection_refused_and_names_the_destination(home):
    port = free_port()  # nothing listens there
    cfg, store = _sender_setup(home, port)
    sender = OutboxSender(cfg, store)
    try:
        write_synthetic_study(cfg, store, count=1, destination="STORESCP")
        sender.start()
        assert wait_for(lambda: all(r.attempts >= 1 for r in sender.outbox.items()), timeout=30)
        (row,) = sender.outbox.items()
        assert f"STORESCP@127.0.0.1:{port}" in row.last_error and "connection refused" in row.last_error, row.last_error
        assert "aborted" not in row.last_error
        health = sender.outbox.health()["STORESCP"]
        assert not health.healthy and "connection refused" in health.last_error and f":{port}" in health.last_error
    finally:
        sender.stop()
        store.index.close()
    dead = echo(cfg, cfg.peer("STORESCP"), timeout=5)
    assert not dead.ok and dead.detail == f"STORESCP@127.0.0.1:{port}: connection refused: nothing listens on 127.0.0.1:{port}"
