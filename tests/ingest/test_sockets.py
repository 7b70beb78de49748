"""LargeReadSocket keeps pynetdicom's recv contract: all ``n`` bytes, or what came before the peer closed."""

from __future__ import annotations

import socket
import threading

from service.dicom.fastpath.sockets import LargeReadSocket


def _reader(sock: socket.socket) -> LargeReadSocket:
    reader = LargeReadSocket.__new__(LargeReadSocket)  # only .socket is used by recv
    reader.socket = sock
    return reader


def test_reads_exactly_the_requested_bytes_across_many_sends():
    a, b = socket.socketpair()
    payload = bytes(range(256)) * 4000  # ~1 MB, more than one kernel buffer
    sender = threading.Thread(target=lambda: [a.sendall(payload[i : i + 7000]) for i in range(0, len(payload), 7000)])
    sender.start()
    try:
        got = _reader(b).recv(len(payload) - 10)
        assert bytes(got) == payload[:-10]
        assert bytes(_reader(b).recv(10)) == payload[-10:]
    finally:
        sender.join()
        a.close()
        b.close()


def test_returns_what_arrived_when_the_peer_closes():
    a, b = socket.socketpair()
    a.sendall(b"partial PDU")
    a.close()
    try:
        assert bytes(_reader(b).recv(1000)) == b"partial PDU"
    finally:
        b.close()
