"""Bounded large reads for pynetdicom's association socket.

pynetdicom reads each PDU with ``socket.recv(4096)`` in a Python loop, appending every chunk to a
``bytearray``: a 6 MB radiograph costs some 1,500 calls and as many re-allocations, which on loopback is a
large part of its receive time. :class:`LargeReadSocket` reads the same bytes with ``recv_into`` straight
into one buffer of the PDU's length, taking whatever the kernel has ready on each call. Its contract is
pynetdicom's ``AssociationSocket.recv``: block until ``nr_bytes`` arrived, or return what arrived before the
peer closed the connection; timeouts and errors propagate the same way. Only associations our SCP accepts
use it (:func:`large_reads`).

A buffer of the PDU's length is allocated only once that length has been checked against the connection's
:class:`~service.dicom.fastpath.frontdoor.Admission` (PS3.8 §9.3.1: pynetdicom's DUL reads the 6-byte header, then
asks for the declared length): at most :data:`~service.dicom.fastpath.frontdoor.ASSOCIATE_RQ_LIMIT` before the
association is negotiated, the Maximum Length we advertised after. Beyond it the peer gets an A-ABORT and
the connection is shut down. Every read before negotiation blocks at most until the negotiation deadline,
every later one at most the network timeout, so no peer holds a reading thread forever.
"""

from __future__ import annotations

import socket
import struct

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from service.dicom.fastpath.frontdoor import INVALID_PARAMETER, Admission, abort_pdu
from service.logs import get_logger

log = get_logger("scp")

_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))


class LargeReadSocket(AssociationSocket):
    admission: Admission | None = None
    _declared: tuple[int, int] | None = None  # (type, length) of the PDU whose header was just read
    _timeout: float | None | bool = False  # what the socket's timeout was last set to (False: never set)

    def recv(self, nr_bytes: int) -> bytearray:  # type: ignore[override]
        if self.socket is None:  # closed by another thread (a kill, a timeout): nothing more arrives
            return bytearray()
        admission = self.admission
        body_of: int | None = None  # the type of the PDU whose body this read is
        if admission is not None and self._declared is not None:
            (body_of, declared), self._declared = self._declared, None
            if declared > admission.read_limit():
                self._refuse(admission, declared)
                return bytearray()  # short: pynetdicom's DUL takes it as the transport closing (Evt17)
        if admission is None:
            return self._read(nr_bytes, None)
        buffer = bytearray(nr_bytes)
        try:
            got = self._read_into(buffer, admission)
        except (OSError, AttributeError) as exc:  # AttributeError: the socket was closed meanwhile
            # Timed out (the negotiation deadline or the network timeout) or broken: the connection is
            # shut and the read ends short, which pynetdicom's DUL takes as the transport closing (Evt17).
            if isinstance(exc, TimeoutError):
                log.warning("connection_timed_out", negotiated=admission.negotiated)
            got = 0
            self._shut()
        if got < nr_bytes:
            del buffer[got:]
        if len(buffer) < nr_bytes:
            self._ended(admission)
        elif body_of is None and nr_bytes == 6:
            pdu_type, _, length = struct.unpack(">BBL", buffer)
            if pdu_type in _KNOWN_PDU_TYPES:  # else pynetdicom reads no body
                self._declared = (pdu_type, length)
        elif body_of == 0x01:
            admission.request_received = True
        return buffer

    def _read(self, nr_bytes: int, admission: Admission | None) -> bytearray:
        buffer = bytearray(nr_bytes)
        got = self._read_into(buffer, admission)
        if got < nr_bytes:
            del buffer[got:]
        return buffer

    def _read_into(self, buffer: bytearray, admission: Admission | None) -> int:
        """Fill ``buffer``; how many bytes arrived before the peer closed the connection."""
        sock = self.socket
        got, wanted = 0, len(buffer)
        with memoryview(buffer) as view:
            while got < wanted:
                if admission is not None:
                    self._set_timeout(sock, admission.read_timeout())  # type: ignore[arg-type]
                n = sock.recv_into(view[got:], wanted - got)  # type: ignore[union-attr]
                if n == 0:
                    break
                got += n
        return got

    def _shut(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            pass

    def _set_timeout(self, sock: socket.socket, timeout: float | None) -> None:
        # Changing it costs system calls; once negotiated it stays the network timeout.
        if timeout != self._timeout:
            sock.settimeout(timeout)
            self._timeout = timeout

    def _refuse(self, admission: Admission, declared: int) -> None:
        log.warning("pdu_refused", reason="PDU longer than allowed", length=declared, limit=admission.read_limit(),
                    negotiated=admission.negotiated)
        sock = self.socket
        try:
            sock.settimeout(1.0)  # type: ignore[union-attr]
            sock.sendall(abort_pdu(INVALID_PARAMETER))  # type: ignore[union-attr]
        except (OSError, AttributeError):
            pass
        self._shut()
        self._ended(admission)

    def _ended(self, admission: Admission | None) -> None:
        """The transport ended (closed, broken, timed out or refused)."""
        if admission is None or admission.closed:
            return
        admission.closed = True
        admission.release()
        if not admission.negotiated and not admission.request_received:
            # pynetdicom's acceptor waits for an A-ASSOCIATE-RQ until its ACSE timeout; ``None`` is what
            # that wait returns on a timeout, so the association thread ends now instead of holding on.
            dul = getattr(self.assoc, "dul", None)
            if dul is not None:
                dul.to_user_queue.put(None)


def large_reads(assoc: Association, admission: Admission | None = None) -> Association:
    """Give a freshly created association's socket bounded large reads (before it starts); returns it."""
    sock = getattr(assoc.dul, "socket", None)
    if type(sock) is AssociationSocket:
        sock.__class__ = LargeReadSocket
        sock.admission = admission  # type: ignore[attr-defined]
    return assoc
