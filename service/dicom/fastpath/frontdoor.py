"""What a connection may cost the listener before it is an association.

The allow-list can only look at a caller once its A-ASSOCIATE-RQ has arrived (the calling AE title is inside
it, PS3.8 §9.3.2), so everything before that must hold against anyone who can reach the port:

* the listen backlog (``dicom.listen_backlog``) absorbs a burst of connections, as Orthanc's 50 does;
* a connection accepted and not yet negotiated is *pending*. Pending connections are counted apart from
  established associations (``dicom.max_associations``), per source host (``dicom.max_pending_per_host``)
  and in all (``dicom.max_pending``). Beyond a host's limit, its oldest pending connections that have had
  :data:`PENDING_GRACE_S` to negotiate are closed (a burst of associations from one PACS negotiates well
  within it and is not touched); beyond the total, the oldest pending connection is closed whatever its
  age. An idle flood thus makes room for a peer that negotiates at once instead of locking it out;
* a pending connection has ``dicom.negotiation_timeout`` seconds, TLS handshake included, to have its
  A-ASSOCIATE-RQ answered; every read before that runs against this one deadline, whatever the peer
  trickles in;
* PDU lengths are checked before anything is allocated for them: the A-ASSOCIATE-RQ against
  :data:`ASSOCIATE_RQ_LIMIT`, every later PDU against the Maximum Length we advertised (PS3.8 Annex D.1);
  beyond it the connection gets an A-ABORT (service-provider, invalid PDU parameter value, PS3.8 Table 9-26)
  and is closed.

:class:`Admission` is one connection's standing (its pending ticket, its deadline, its PDU limit); the
socket reader (:mod:`service.dicom.fastpath.sockets`) and the direct loop (:mod:`service.dicom.fastpath.direct`) consult it.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pynetdicom.transport import ThreadedAssociationServer

from service import metrics
from service.logs import get_logger

log = get_logger("scp")

# The largest A-ASSOCIATE-RQ a real sender makes: 128 presentation contexts (the most PS3.8 §9.3.2.2's odd
# context IDs allow) of one abstract syntax and 20 transfer syntaxes each come to ~77 KB.
ASSOCIATE_RQ_LIMIT = 128 * 1024
# With ``dicom.max_pdu = 0`` (no maximum advertised) a PDU is still refused beyond this.
UNLIMITED_PDU_LIMIT = 64 << 20
# A command set (PS3.7 §6.3, group 0000) is a few hundred bytes; beyond this the association is aborted.
COMMAND_SET_LIMIT = 64 * 1024
# The dataset of any request other than a C-STORE (a C-FIND identifier, ...) is a query, not an image.
QUERY_DATASET_LIMIT = 1 << 20
# A pending connection younger than this is never closed to make room for its host's newer ones.
PENDING_GRACE_S = 2.0
# A-ABORT source and reasons (PS3.8 Table 9-26).
SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED, UNEXPECTED_PDU, INVALID_PARAMETER = 0x00, 0x02, 0x06


def pdu_limit(max_pdu: int) -> int:
    """The longest PDU (its length field) accepted on an association that advertised ``max_pdu``."""
    return max_pdu if max_pdu > 0 else UNLIMITED_PDU_LIMIT


def abort_pdu(reason: int) -> bytes:
    """A-ABORT from the service provider (PS3.8 §9.3.8)."""
    return b"\x07\x00\x00\x00\x00\x04\x00\x00" + bytes((SERVICE_PROVIDER, reason))


class Ticket:
    """One pending connection's place in :class:`PendingConnections`."""

    def __init__(self, registry: "PendingConnections", host: str, sock: socket.socket):
        self.registry, self.host, self.sock = registry, host, sock
        self.admitted_at = time.monotonic()
        self.evicted = False

    def done(self) -> None:
        """No longer pending (negotiated, refused or gone). Idempotent."""
        self.registry._remove(self)

    def evict(self) -> None:
        self.evicted = True
        try:
            # Wakes a read blocked on this socket in another thread (close would not).
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class PendingConnections:
    """Connections accepted and not yet negotiated, oldest first, with limits per host and in all."""

    def __init__(self, per_host: int, total: int, grace_s: float = PENDING_GRACE_S):
        self.per_host, self.total, self.grace_s = per_host, total, grace_s
        self._lock = threading.Lock()
        self._tickets: OrderedDict[int, Ticket] = OrderedDict()

    def admit(self, host: str, sock: socket.socket) -> Ticket:
        ticket = Ticket(self, host, sock)
        evicted: list[Ticket] = []
        with self._lock:
            self._tickets[id(ticket)] = ticket
            same_host = [t for t in self._tickets.values() if t.host == host]
            excess = len(same_host) - self.per_host
            for oldest in same_host:
                if excess <= 0 or ticket.admitted_at - oldest.admitted_at < self.grace_s:
                    break  # oldest first: the rest are younger still
                evicted.append(self._tickets.pop(id(oldest)))
                excess -= 1
            while len(self._tickets) > self.total:
                evicted.append(self._tickets.popitem(last=False)[1])
        for old in evicted:
            log.warning("pending_connection_closed", host=old.host, reason="too many pending connections")
            metrics.ASSOCIATIONS.labels(outcome="pending_evicted").inc()
            old.evict()
        return ticket

    def _remove(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.pop(id(ticket), None)

    def count(self, host: str | None = None) -> int:
        with self._lock:
            return sum(1 for t in self._tickets.values() if host is None or t.host == host)


@dataclass
class Admission:
    """One connection's standing at the front door: pending until negotiated, then limited by its PDU size."""

    ticket: Ticket | None
    deadline: float  # time.monotonic() by which negotiation must be complete
    max_pdu: int  # the Maximum Length we advertised (0: none)
    network_timeout: float | None
    negotiated: bool = False
    request_received: bool = False  # the A-ASSOCIATE-RQ arrived whole
    closed: bool = field(default=False)

    @classmethod
    def start(cls, ticket: Ticket | None, negotiation_timeout: float, max_pdu: int, network_timeout: float | None) -> "Admission":
        return cls(ticket, time.monotonic() + negotiation_timeout, max_pdu, network_timeout)

    def read_limit(self) -> int:
        return pdu_limit(self.max_pdu) if self.negotiated else ASSOCIATE_RQ_LIMIT

    def read_timeout(self) -> float | None:
        """Seconds a read may block now; raises TimeoutError once the negotiation deadline has passed."""
        if self.negotiated:
            return self.network_timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("association negotiation timed out")
        return left

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def negotiation_done(self) -> None:
        self.negotiated = True
        self.release()

    def release(self) -> None:
        if self.ticket is not None:
            self.ticket.done()


class AcceptorContexts(list):
    """The presentation contexts a server accepts, cheap to copy for each association.

    pynetdicom gives every association its own ``copy.deepcopy`` of the server's contexts
    (``RequestHandler._create_association``). For the storage SCP's 171 contexts and 2,553 transfer syntax
    UIDs that took 26 ms of CPU with the GIL held, per association: as much as storing four 512 x 512
    radiographs, paid again by a PACS that opens one association per study. A context's only mutable
    parts are its lists (the transfer syntaxes); its UIDs are immutable strings. Copying each context and
    its lists isolates associations from one another and from the server exactly as the deep copy did,
    in 0.25 ms.
    """

    def __deepcopy__(self, memo: dict) -> list:
        copies = []
        for context in self:
            twin = object.__new__(type(context))
            twin.__dict__ = {k: (list(v) if isinstance(v, list) else v) for k, v in context.__dict__.items()}
            copies.append(twin)
        return copies


class FrontDoorServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a listen backlog sized for bursts and a TLS handshake off the accept loop.

    pynetdicom wraps an accepted socket with ``ssl_context.wrap_socket`` inside ``get_request``, i.e. in the
    one thread that accepts every connection: a client that never finishes its handshake would stop all
    accepts. Here the socket is wrapped without a handshake; the connection's own thread performs it, bounded
    by the negotiation timeout (see ``scp._request_handler``).
    """

    daemon_threads = True

    def __init__(self, *args, backlog: int, pending: PendingConnections, negotiation_timeout: float, **kwargs):
        self.request_queue_size = backlog  # read by server_activate's listen()
        self.pending = pending
        self.negotiation_timeout = negotiation_timeout
        super().__init__(*args, **kwargs)
        self.contexts = AcceptorContexts(self.contexts)

    def get_request(self):  # type: ignore[override]
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


def tls_handshake(sock: socket.socket, admission: Admission, timeout: float | None = None, host: str = "") -> bool:
    """Complete a deferred server-side TLS handshake (PS3.15 Annex B); False: it failed and the socket is closed.

    The deadline bounds the whole handshake, not each read, so a caller that dribbles its ClientHello a
    byte at a time is closed as surely as a silent one: the earlier of ``timeout``
    (``dicom.tls_handshake_timeout``) and what is left of the negotiation deadline.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return True
    budget = admission.remaining() if timeout is None else min(timeout, admission.remaining())
    deadline = time.monotonic() + max(budget, 0.001)
    try:
        sock.setblocking(False)
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                ready = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]
            except ssl.SSLWantWriteError:
                ready = select.select([], [sock], [], max(0.0, deadline - time.monotonic()))[1]
            if not ready:
                raise TimeoutError("handshake not completed in time")
        sock.setblocking(True)
        return True
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = f"timed out after {budget:g} s" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None) or type(exc).__name__
        metrics.ASSOCIATIONS.labels(outcome="rejected_tls").inc()
        log.warning("tls_handshake_failed", host=host, reason=str(reason)[:80])
        try:
            sock.close()
        except OSError:
            pass
        return False
