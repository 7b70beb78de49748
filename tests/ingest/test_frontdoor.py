"""The listener's front door over the network: what a connection may cost before and after negotiation.

Each case is an adversary on loopback (service/dicom/fastpath/frontdoor.py): a PDU header declaring 1 GiB, before and
after negotiation, on the direct loop and on pynetdicom's path; half-open connections that never negotiate;
a connection that sends nothing; a burst of associations. Every case ends with a listed peer served and
``store/.tmp`` empty.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from structlog.testing import capture_logs

from service.archive import status
from service.config import DicomPeer
from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset
from service.dicom.fastpath.frontdoor import PendingConnections
from tests.helpers import make_config, require_tool
from tests.ingest.util import SCPProcess, assert_no_temp_files, echo_ok, phantom_files, scu, send
from tests.peers import RunningSCP

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_temp_left")]

GIB = 1 << 30


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the resident high-water mark) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _until_closed(sock: socket.socket, bound_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (a bounded wait, not a timing)."""
    sock.settimeout(bound_s)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def _wait(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


A_ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


def test_a_declared_gigabyte_pdu_costs_no_memory_and_is_aborted(tmp_path):
    # A negotiation timeout far away: whatever closes these connections, it is the PDU limit.
    server = SCPProcess(tmp_path / "home", env={"SYNTHPACS_DICOM_NEGOTIATION_TIMEOUT": "300"}).start()
    try:
        pid = server.proc.pid  # type: ignore[union-attr]
        assert echo_ok(server.port)
        assert send(server.port, [phantom_dataset(32, 32, seed=1)]) == [status.SUCCESS]
        before = _memory(pid)
        # Before negotiation: A-ASSOCIATE-RQ headers declaring 1 GiB.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"\x01\x00" + struct.pack(">I", GIB))
                assert _until_closed(sock) == A_ABORT_INVALID_PARAMETER
        # After negotiation: a P-DATA-TF declaring 1 GiB on the direct loop and on pynetdicom's path (Q/R).
        for contexts in ([(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)],
                         [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)]):
            ae = scu("BIGPDU", contexts)
            try:
                assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
                assert assoc.is_established
                assoc.dul.socket.send(b"\x04\x00" + struct.pack(">I", GIB) + b"\x00" * 1000)
                assert _wait(lambda: assoc.is_aborted or not assoc.is_established), "the association was not ended"
            finally:
                ae.shutdown()
        after = _memory(pid)
        assert after["VmHWM"] - before["VmHWM"] < 64 << 20, (before, after)
        assert echo_ok(server.port)
        assert send(server.port, [phantom_dataset(32, 32, seed=2)]) == [status.SUCCESS]
        assert '"pdu_refused"' in server.log()
    finally:
        server.stop()
    assert_no_temp_files(tmp_path / "home")


def test_a_pdu_over_the_advertised_maximum_is_aborted_on_both_paths(home):
    running = RunningSCP(make_config(home, **{"dicom.max_pdu": 16384}))
    try:
        for contexts in ([(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)],
                         [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)]):
            ae = scu("OVERSIZE", contexts)
            try:
                assoc = ae.associate("127.0.0.1", running.port, ae_title="SYNTHPACS")
                assert assoc.is_established and assoc.acceptor.maximum_length == 16384
                # One byte more than advertised (PS3.8 Annex D.1: the PDU's length field).
                assoc.dul.socket.send(b"\x04\x00" + struct.pack(">I", 16385) + b"\x00" * 16385)
                assert _wait(lambda: assoc.is_aborted or not assoc.is_established)
            finally:
                ae.shutdown()
        assert echo_ok(running.port)
        assert send(running.port, [phantom_dataset(64, 64, seed=3)]) == [status.SUCCESS]
    finally:
        running.stop()
    assert_no_temp_files(home)


def test_a_silent_or_trickling_connection_is_closed_after_the_negotiation_timeout(home):
    running = RunningSCP(make_config(home, **{"dicom.negotiation_timeout": 1.0, "dicom.acse_timeout": 120}))
    try:
        with capture_logs():
            silent = socket.create_connection(("127.0.0.1", running.port))
            trickle = socket.create_connection(("127.0.0.1", running.port))
            trickle.sendall(b"\x01\x00\x00\x00")  # half a PDU header, then nothing
            body = socket.create_connection(("127.0.0.1", running.port))
            body.sendall(b"\x01\x00" + struct.pack(">I", 400) + b"\x00" * 10)  # a header and a little body
            for sock in (silent, trickle, body):
                # Well before the ACSE timeout of 120 s: the negotiation timeout ended them.
                assert _until_closed(sock, bound_s=60.0) in (b"",), "the server kept a pending connection open"
                sock.close()
        assert _wait(lambda: running.scp.server.pending.count() == 0)  # type: ignore[union-attr]
        assert echo_ok(running.port)
    finally:
        running.stop()


def _half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections from 127.0.0.1 that never negotiate: half send a 6-byte header, half nothing."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            sock.sendall(b"\x01\x00" + struct.pack(">I", 60000))
        socks.append(sock)
    return socks


def test_fifty_half_open_connections_do_not_stop_a_listed_peer(home, tmp_path):
    echoscu = require_tool("/usr/bin/echoscu", "dcmtk")
    storescu = require_tool("/usr/bin/storescu", "dcmtk")
    cfg = make_config(home, **{"dicom.allow_loopback": False, "dicom.peers": [DicomPeer("LISTED", "127.0.0.1")],
                               "dicom.negotiation_timeout": 60.0})
    running = RunningSCP(cfg)
    files = phantom_files(tmp_path / "files", 3)
    socks = _half_open(running.port, 50)
    try:
        for attempt in range(2):  # twice: the peer's own connections must not be what made room
            echo = subprocess.run([echoscu, "-aet", "LISTED", "-aec", "SYNTHPACS", "127.0.0.1", str(running.port)],
                                  capture_output=True, text=True, timeout=120)
            assert echo.returncode == 0, echo.stdout + echo.stderr
            store = subprocess.run([storescu, "-aet", "LISTED", "-aec", "SYNTHPACS", "127.0.0.1", str(running.port),
                                    *map(str, files)], capture_output=True, text=True, timeout=120)
            assert store.returncode == 0, store.stdout + store.stderr
            socks += _half_open(running.port, 10)
        assert running.store.index.stats()["instances"] == 3
        # Never more pending than the total bound, whatever the flood (the per-host bound closes the old ones).
        assert running.scp.server.pending.count() <= cfg.dicom.max_pending  # type: ignore[union-attr]
    finally:
        for sock in socks:
            sock.close()
        running.stop()
    assert_no_temp_files(home)


def test_fifty_associations_opened_at_once_all_succeed(home):
    running = RunningSCP(make_config(home, **{"dicom.max_associations": 64}))
    start = threading.Barrier(50)
    results: list[bool] = []
    lock = threading.Lock()

    def one(seed: int) -> None:
        ae = scu(f"BURST{seed}")
        ok = False
        try:
            start.wait(timeout=60)
            assoc = ae.associate("127.0.0.1", running.port, ae_title="SYNTHPACS")
            if assoc.is_established:
                rsp = assoc.send_c_store(phantom_dataset(16, 16, seed=seed % 4))
                ok = rsp is not None and rsp.Status == status.SUCCESS
                assoc.release()
        finally:
            ae.shutdown()
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert results == [True] * 50
        assert running.store.index.stats()["instances"] == 50
    finally:
        running.stop()
    assert_no_temp_files(home)


def test_pending_connections_evict_the_oldest_beyond_their_limits():
    young = PendingConnections(per_host=1, total=10)  # within the grace period nobody is closed for a host
    pair = [socket.socketpair() for _ in range(3)]
    tickets = [young.admit("10.0.0.9", a) for a, _b in pair]
    assert not any(t.evicted for t in tickets) and young.count("10.0.0.9") == 3
    for a, b in pair:
        a.close()
        b.close()
    pending = PendingConnections(per_host=2, total=3, grace_s=0.0)
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        a1 = pending.admit("10.0.0.1", pairs[0][0])
        a2 = pending.admit("10.0.0.1", pairs[1][0])
        a3 = pending.admit("10.0.0.1", pairs[2][0])  # the host's third: its oldest goes
        assert a1.evicted and not a2.evicted and pending.count("10.0.0.1") == 2
        assert pairs[0][1].recv(10) == b""  # its socket was shut down
        b1 = pending.admit("10.0.0.2", pairs[3][0])
        b2 = pending.admit("10.0.0.3", pairs[4][0])  # four in all: the oldest overall goes
        assert a2.evicted and not a3.evicted and not b1.evicted and pending.count() == 3
        for ticket in (a3, b1, b2, a3):  # done is idempotent
            ticket.done()
        assert pending.count() == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _tls_contexts(folder: Path):
    """A self-signed server certificate for 127.0.0.1 and the two SSL contexts (server, client) trusting it."""
    import ssl

    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    return server, client


def test_a_stalled_tls_handshake_neither_blocks_accepts_nor_outlives_the_negotiation_timeout(home, tmp_path):
    require_tool("openssl", "openssl")
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    running = RunningSCP(make_config(home, **{"dicom.negotiation_timeout": 2.0}))
    # The TLS settings are another part's; here only the listener's handling of a handshake is under test.
    running.scp.server.ssl_context = server_ctx  # type: ignore[union-attr]
    try:
        stalled = socket.create_connection(("127.0.0.1", running.port))  # connects, never says hello
        ae = scu("TLSPEER")
        try:
            # pynetdicom's own server would be stuck in this handshake inside its accept loop.
            assoc = ae.associate("127.0.0.1", running.port, ae_title="SYNTHPACS", tls_args=(client_ctx, "127.0.0.1"))
            assert assoc.is_established
            assert assoc.send_c_echo().Status == status.SUCCESS
            assoc.release()
        finally:
            ae.shutdown()
        assert _until_closed(stalled, bound_s=60.0) == b"", "the stalled handshake was not closed"
        stalled.close()
    finally:
        running.stop()
