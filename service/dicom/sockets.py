"""Large reads for pynetdicom's association socket.

pynetdicom reads each PDU with ``socket.recv(4096)`` in a Python loop, appending every chunk to a
``bytearray``: a 6 MB radiograph costs some 1,500 calls and as many re-allocations, which on loopback is a
large part of its receive time. :class:`LargeReadSocket` reads the same bytes with ``recv_into`` straight
into one buffer of the PDU's length, taking whatever the kernel has ready on each call. Its contract is
pynetdicom's ``AssociationSocket.recv``: block until ``nr_bytes`` arrived, or return what arrived before the
peer closed the connection; timeouts and errors propagate the same way. Only associations our SCP accepts
use it (:func:`large_reads`).
"""

from __future__ import annotations

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket


class LargeReadSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:  # type: ignore[override]
        sock = self.socket
        buffer = bytearray(nr_bytes)
        got = 0
        with memoryview(buffer) as view:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], nr_bytes - got)  # type: ignore[union-attr]
                if n == 0:  # the peer closed the connection: what arrived so far
                    break
                got += n
        if got < nr_bytes:
            del buffer[got:]
        return buffer


def large_reads(assoc: Association) -> Association:
    """Give a freshly created association's socket large reads (before it starts); returns it."""
    sock = getattr(assoc.dul, "socket", None)
    if type(sock) is AssociationSocket:
        sock.__class__ = LargeReadSocket
    return assoc
