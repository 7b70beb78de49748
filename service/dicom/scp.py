"""The DICOM SCP: one application entity for Verification, Storage and Query/Retrieve.

Built the pynetdicom way: a declaratively configured AE (contexts, timeouts, PDU size) and a list of
``(event, handler)`` pairs. Two things pynetdicom does not do on its own are added here:

* an allow-list of calling AE titles *with their hosts*, checked during association negotiation so an
  unknown peer gets an A-ASSOCIATE-RJ "calling AE title not recognized" (PS3.8 §9.3.4);
* DICOM TLS (PS3.15 Annex B, :mod:`service.dicom.tls`) when ``dicom.tls_cert`` is set: the handshake runs
  in the connection's own thread under ``dicom.tls_handshake_timeout``, not in the accept loop where
  pynetdicom does it, so a caller that never finishes its handshake holds up nobody else; with
  ``dicom.tls_require_client_cert`` a listed AE title must also present its own certificate;
* TCP_NODELAY on every accepted socket: with Nagle and delayed ACK, each C-STORE response waits
  40-80 ms on loopback (ARCHITECTURE.md);
* a front door (:mod:`service.dicom.fastpath.frontdoor`): connections still negotiating are counted apart from
  established associations and limited per host, must negotiate within ``dicom.negotiation_timeout``, and
  may not declare a PDU longer than allowed; ``dicom.max_associations`` counts established associations;
* associations that carry only Storage and Verification (what a PACS or a modality opens) are served,
  once established, straight from the socket by :class:`service.dicom.fastpath.direct.DirectLoop` instead of
  pynetdicom's two polling reactors; associations that also carry Query/Retrieve keep pynetdicom, with
  shorter poll intervals while busy (:mod:`service.dicom.fastpath.polling`) and PDUs read with a few large
  ``recv_into`` calls instead of its 4 KB loop (:mod:`service.dicom.fastpath.sockets`).
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification
from pynetdicom.transport import RequestHandler

from service import metrics
from service.archive import status
from service.archive.backends import DATABASE_ERRORS
from service.archive.store import Store, StoreError
from service.archive.uids import InvalidUID, validate_uid
from service.config import Config, DicomPeer
from service.dicom import fastpath
from service.dicom.fastpath.direct import DirectLoop, eligible
from service.dicom.fastpath.frontdoor import Admission, FrontDoorServer, PendingConnections, tls_handshake
from service.dicom.fastpath.polling import ResponsiveAssociation, ResponsiveDUL, responsive
from service.dicom.fastpath.sockets import large_reads
from service.dicom.fastpath.streaming import StreamingDIMSE, streaming
from service.dicom.tls import certificate_matches, certificate_names, peer_certificate, server_context
from service.logs import get_logger, where

log = get_logger("scp")

# Transfer syntaxes accepted for storage (PS3.5 §10 and Annex A). Instances are stored as received.
STORAGE_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
)
UNCOMPRESSED_TRANSFER_SYNTAXES = STORAGE_TRANSFER_SYNTAXES[:3]

_assoc_ids = itertools.count(1)


def storage_sop_classes() -> list[str]:
    """Every Storage SOP Class pynetdicom knows (PS3.4 Annex B.5)."""
    return sorted(set(_STORAGE_CLASSES.values()))


STORAGE_SOP_CLASSES = frozenset(storage_sop_classes())


def storage_contexts() -> list:
    return [build_context(uid, list(STORAGE_TRANSFER_SYNTAXES)) for uid in storage_sop_classes()]


@dataclass(frozen=True)
class AllowList:
    """Which peers may open an association: listed (AE title, host) pairs, plus anyone on loopback."""

    peers: frozenset[tuple[str, str]]
    allow_loopback: bool
    # Under dicom.tls_require_client_cert: the listed peers, whose callers must present their own certificate.
    certified: tuple[DicomPeer, ...] | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "AllowList":
        pairs = set()
        for peer in cfg.dicom.peers:
            for host in _resolve(peer.host):
                pairs.add((peer.ae_title.strip(), host))
        certified = cfg.dicom.peers if cfg.dicom.tls_cert and cfg.dicom.tls_require_client_cert else None
        return cls(frozenset(pairs), cfg.dicom.allow_loopback, certified)

    def certificate_allows(self, calling_ae: str, cert: dict | None) -> bool:
        """A caller using a listed AE title must present a certificate naming that peer (PS3.15 Annex B:
        certificates authenticate the nodes); unlisted AE titles only need the CA-signed certificate."""
        if self.certified is None:
            return True
        listed = [p for p in self.certified if p.ae_title.strip() == calling_ae.strip()]
        if not listed:
            return cert is not None
        names = certificate_names(cert)
        return any(certificate_matches(p, names) for p in listed)

    def allows(self, calling_ae: str, host: str) -> bool:
        host = _normalize_host(host)
        if self.allow_loopback and ipaddress.ip_address(host).is_loopback:
            return True
        return (calling_ae.strip(), host) in self.peers


def _normalize_host(host: str) -> str:
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _resolve(host: str) -> set[str]:
    try:
        return {_normalize_host(host)}
    except ValueError:
        pass
    try:
        return {_normalize_host(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        log.warning("peer_host_unresolvable", host=host)
        return set()


class _DirectAssociation(ResponsiveAssociation):
    """An acceptor association that, once established, may be served by a :class:`DirectLoop`."""

    direct_loop: DirectLoop | None = None

    def _run_reactor(self) -> None:
        if self.direct_loop is None:
            return super()._run_reactor()
        self.direct_loop.run()


def awaiting_answer(dul: Any, timeout: float = 2.0) -> str:
    """The DUL's state once it awaits our answer to the A-ASSOCIATE-RQ (Sta3), or the state it left for.

    pynetdicom's state machine runs an action, then moves to the next state (``fsm.StateMachine.do_action``):
    AE-6 hands the A-ASSOCIATE indication to the association thread and only then enters Sta3. On a busy
    machine the association thread can negotiate and answer inside that window, while the machine still
    reads Sta2; an A-ASSOCIATE-AC then was never sent and the peer waited until we aborted (8 associations
    started at once against one SCP: 1 in 8 runs of ``python -m bench scaleout``). Sta2 here can only be
    that window, so it is waited out (bounded); any other state is the peer's doing and is returned as is.
    """
    deadline = time.monotonic() + timeout
    state = dul.state_machine.current_state
    while state == "Sta2" and time.monotonic() < deadline:
        time.sleep(0.0002)
        state = dul.state_machine.current_state
    return state


class _AllowListACSE(ACSE):
    """ACSE that rejects callers not on the allow-list before any other negotiation, and hands
    storage-only associations to a :class:`DirectLoop` (``direct``) as it accepts them."""

    allow_list: AllowList
    direct: Callable[[Any], DirectLoop] | None = None

    max_associations: int = 0  # established associations at most (0: pynetdicom's own count decides)

    def send_accept(self) -> None:
        assoc = self.assoc
        if self.direct is not None and isinstance(assoc, _DirectAssociation) and isinstance(assoc.dul, ResponsiveDUL) and eligible(assoc, STORAGE_SOP_CLASSES):
            assoc.direct_loop = self.direct(assoc)
            # Before the A-ASSOCIATE-AC leaves: from then on only the loop reads the socket.
            assoc.dul.handed_off = True
        admission: Admission | None = getattr(assoc, "front_door", None)
        if admission is not None:
            # Negotiated: no longer pending; PDUs up to our Maximum Length; the ACSE timeout of an established association.
            admission.negotiation_done()
            assoc.acse_timeout = getattr(assoc, "established_acse_timeout", assoc.acse_timeout)
        if awaiting_answer(self.dul) != "Sta3":
            # The peer aborted, closed or sent an invalid PDU while we negotiated: the DUL has left the state
            # that awaits our answer, and pynetdicom's state machine would stop its reactor on an
            # A-ASSOCIATE-AC now (InvalidEventError). Nothing is sent; the association ends as aborted.
            return
        super().send_accept()

    def send_reject(self, result: int, source: int, diagnostic: int) -> None:
        admission: Admission | None = getattr(self.assoc, "front_door", None)
        if admission is not None:
            admission.release()
        awaiting_answer(self.dul)  # an A-ASSOCIATE-RJ in Sta2 would be dropped as an invalid event, as the AC would
        super().send_reject(result, source, diagnostic)

    def _negotiate_as_acceptor(self) -> None:
        calling = self.requestor.primitive.calling_ae_title  # type: ignore[union-attr]
        host = self.assoc.requestor.address
        if not self.allow_list.allows(calling, host):
            log.warning("association_rejected", reason="peer not allowed", calling_ae=calling, host=host)
            metrics.ASSOCIATIONS.labels(outcome="rejected_not_allowed").inc()
            self.assoc._rejected_by_allow_list = True  # type: ignore[attr-defined]
            # Rejected (permanent), service-user, calling AE title not recognized (PS3.8 Table 9-21).
            self.send_reject(0x01, 0x01, 0x03)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        if not self.allow_list.certificate_allows(calling, peer_certificate(getattr(self.assoc.dul.socket, "socket", None))):
            log.warning("association_rejected", reason="certificate does not name the calling peer", calling_ae=calling, host=host)
            metrics.ASSOCIATIONS.labels(outcome="rejected_certificate").inc()
            self.assoc._rejected_by_allow_list = True  # type: ignore[attr-defined]
            self.send_reject(0x01, 0x01, 0x03)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        if self.max_associations and self._established_elsewhere() >= self.max_associations:
            # Only established associations count: connections still negotiating are limited apart
            # (frontdoor.PendingConnections), so they cannot lock listed peers out.
            log.warning("association_rejected", reason="too many associations", calling_ae=calling, host=host)
            # Rejected (transient), service-provider (presentation), local limit exceeded (PS3.8 Table 9-21).
            self.send_reject(0x02, 0x03, 0x02)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()

    def _established_elsewhere(self) -> int:
        return sum(1 for a in self.assoc.ae.active_associations if a is not self.assoc and a.is_acceptor and a.is_established)


def _end_streams(assoc: Any) -> None:
    """The association's thread ended (release, abort, protocol error, exception): remove its temporary files."""
    if isinstance(assoc.dimse, StreamingDIMSE):
        try:
            assoc.dimse.abort_streams()
        except Exception as exc:  # the thread is ending anyway; say where, never what
            log.error("stream_cleanup_failed", error=type(exc).__name__, where=where(exc))


@dataclass(frozen=True)
class _Door:
    """What the request handler needs to admit a connection (service/dicom/fastpath/frontdoor.py)."""

    pending: PendingConnections
    negotiation_timeout: float
    acse_timeout: float | None
    network_timeout: float | None
    max_pdu: int
    tls_handshake_timeout: float | None = None


def _request_handler(allow_list: AllowList, store: Store | None, direct: Callable[[Any], DirectLoop] | None = None,
                     door: _Door | None = None, max_associations: int = 0, max_dataset_bytes: int = 2 << 30,
                     fast_path: bool = True) -> type[RequestHandler]:
    class Handler(RequestHandler):
        admission: Admission | None = None

        def handle(self) -> None:
            """pynetdicom's handle (create, announce, start), with the connection admitted as pending first."""
            if door is not None:
                ticket = door.pending.admit(_normalize_host(self.client_address[0]), self.request)
                self.admission = Admission.start(ticket, door.negotiation_timeout, door.max_pdu, door.network_timeout)
                if not tls_handshake(self.request, self.admission, door.tls_handshake_timeout, _normalize_host(self.client_address[0])):
                    self.admission.release()
                    self.server.shutdown_request(self.request)
                    return
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            if self.admission is not None:
                admission, run = self.admission, assoc.run

                def run_then_release() -> None:
                    try:
                        run()
                    finally:
                        admission.release()
                        _end_streams(assoc)

                assoc.run = run_then_release  # type: ignore[method-assign]
            assoc.start()

        def _create_association(self):  # type: ignore[override]
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = super()._create_association()
            assoc = large_reads(responsive(assoc) if fast_path else assoc, self.admission)
            if self.admission is not None:
                assoc.front_door = self.admission
                # Waiting for the A-ASSOCIATE-RQ is bounded by what is left of the negotiation deadline;
                # the ACSE timeout of an established association is restored once it is accepted.
                assoc.acse_timeout = max(self.admission.remaining(), 0.001)
                assoc.established_acse_timeout = door.acse_timeout  # type: ignore[union-attr]
            if direct is not None and type(assoc) is ResponsiveAssociation:
                assoc.__class__ = _DirectAssociation
            streaming(assoc, store, max_dataset_bytes)
            acse = _AllowListACSE(assoc)
            acse.allow_list = allow_list
            acse.direct = direct
            acse.max_associations = max_associations
            assoc.acse = acse
            return assoc

    return Handler


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # Error Comment (0000,0902) is at most 64 characters (PS3.7 Annex C).
        ds.ErrorComment = comment[:64]
    return ds


class StorageSCP:
    """The running AE. ``start()`` listens in background threads; ``stop()`` ends it."""

    def __init__(self, cfg: Config, store: Store, extra_handlers: list[tuple[Any, Callable]] | None = None, extra_contexts: list | None = None):
        self.cfg = cfg
        self.store = store
        self.ae = AE(ae_title=cfg.dicom.ae_title)
        # Established associations are counted by _AllowListACSE; pynetdicom's own count would include
        # connections still negotiating, which limits apart (frontdoor.py).
        self.ae.maximum_associations = cfg.dicom.max_associations + cfg.dicom.max_pending + 1
        self.ae.maximum_pdu_size = cfg.dicom.max_pdu
        self.ae.acse_timeout = cfg.dicom.acse_timeout
        self.ae.dimse_timeout = cfg.dicom.dimse_timeout
        self.ae.network_timeout = cfg.dicom.network_timeout
        self.ae.require_called_aet = cfg.dicom.require_called_ae_title
        self.contexts = [build_context(Verification, list(UNCOMPRESSED_TRANSFER_SYNTAXES))] + storage_contexts()
        self.contexts += extra_contexts or []
        self.handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
        ] + (extra_handlers or [])
        self.server: FrontDoorServer | None = None
        self._thread: threading.Thread | None = None
        self._ids: dict[int, int] = {}
        self._counts: dict[int, Counter] = {}

    @property
    def address(self) -> tuple[str, int]:
        if self.server is None:
            raise RuntimeError("the SCP is not running")
        host, port = self.server.server_address[:2]
        return host, port

    def start(self) -> tuple[str, int]:
        d = self.cfg.dicom
        tls_context = server_context(self.cfg)  # before listening: a bad certificate file stops the start
        fast = fastpath.enabled(d)
        if d.fast_path and not fast:
            log.warning("fast_path_off", reason=f"pynetdicom {fastpath.pynetdicom_version()} is outside the tested releases "
                        f">={fastpath.PYNETDICOM_TESTED[0]},<{fastpath.PYNETDICOM_TESTED[1]}")
        door = _Door(PendingConnections(d.max_pending_per_host, d.max_pending), d.negotiation_timeout, d.acse_timeout,
                     d.network_timeout, d.max_pdu, d.tls_handshake_timeout)
        server = FrontDoorServer(
            self.ae,
            (d.bind, d.port),
            d.ae_title,
            self.contexts,
            evt_handlers=self.handlers,
            request_handler=_request_handler(
                AllowList.from_config(self.cfg),
                self.store if d.stream_writes and fast else None,
                self._direct_loop if d.direct_receive and fast else None,
                door,
                d.max_associations,
                d.max_dataset_bytes,
                fast,
            ),
            backlog=d.listen_backlog,
            pending=door.pending,
            negotiation_timeout=d.negotiation_timeout,
            ssl_context=tls_context,
        )
        self.ae._servers.append(server)
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        self._thread.start()
        self.server = server
        host, port = self.address
        log.info("scp_listening", ae_title=self.cfg.dicom.ae_title, bind=host, port=port, max_pdu=self.cfg.dicom.max_pdu,
                 tls=tls_context is not None, client_certificates=self.cfg.dicom.tls_require_client_cert)
        return host, port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            if self.server in self.ae._servers:
                self.ae._servers.remove(self.server)
            self.server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
        log.info("scp_stopped")

    # -- handlers ------------------------------------------------------------------------------------

    def assoc_id(self, assoc: Any) -> int:
        return self._ids.get(id(assoc), 0)

    def _bind(self, event: evt.Event) -> None:
        structlog.contextvars.bind_contextvars(association=self.assoc_id(event.assoc))

    def _on_established(self, event: evt.Event) -> None:
        assoc_id = next(_assoc_ids)
        self._ids[id(event.assoc)] = assoc_id
        self._counts[id(event.assoc)] = Counter()
        metrics.ASSOCIATIONS.labels(outcome="accepted").inc()
        metrics.ACTIVE_ASSOCIATIONS.inc()
        log.info(
            "association_accepted", association=assoc_id, calling_ae=event.assoc.requestor.ae_title,
            host=event.assoc.requestor.address, max_pdu=event.assoc.requestor.maximum_length,
        )

    def _on_closed(self, event: evt.Event) -> None:
        if isinstance(event.assoc.dimse, StreamingDIMSE):
            event.assoc.dimse.abort_stream()  # released in the middle of a message: it will never complete
        metrics.ACTIVE_ASSOCIATIONS.dec()
        counts = self._counts.pop(id(event.assoc), Counter())
        log.info("association_released", association=self._ids.pop(id(event.assoc), 0), **_summary(counts))

    def _on_aborted(self, event: evt.Event) -> None:
        if isinstance(event.assoc.dimse, StreamingDIMSE):
            event.assoc.dimse.abort_stream()  # the message in flight will never complete
        if id(event.assoc) in self._ids:
            metrics.ACTIVE_ASSOCIATIONS.dec()
        metrics.ASSOCIATIONS.labels(outcome="aborted").inc()
        counts = self._counts.pop(id(event.assoc), Counter())
        # Whatever was in flight was never stored: the store only sees complete datasets.
        log.warning("association_aborted", association=self._ids.pop(id(event.assoc), 0), **_summary(counts))

    def _on_rejected(self, event: evt.Event) -> None:
        if not getattr(event.assoc, "_rejected_by_allow_list", False):
            metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
        log.info("association_rejected_sent", calling_ae=event.assoc.requestor.ae_title, host=event.assoc.requestor.address)

    def _on_echo(self, event: evt.Event) -> int:
        return self.echo_received(event.assoc)

    def echo_received(self, assoc: Any) -> int:
        structlog.contextvars.bind_contextvars(association=self.assoc_id(assoc))
        log.info("c_echo", association=self.assoc_id(assoc))
        return status.SUCCESS

    def _direct_loop(self, assoc: Any) -> DirectLoop:
        return DirectLoop(assoc, self, self.store if self.cfg.dicom.stream_writes else None, self.cfg.dicom.network_timeout,
                          self.cfg.dicom.max_dataset_bytes)

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE through pynetdicom's reactors (associations that also carry Query/Retrieve)."""
        try:
            # The dataset as received, without a copy; it is parsed in the context's transfer syntax.
            received = event.request.DataSet
            data = received.getbuffer()
            tsyntax = event.context.transfer_syntax
            affected = str(event.request.AffectedSOPInstanceUID or "")
        except Exception as exc:  # the bytes could not even be framed as a dataset
            self._bind(event)
            metrics.STORE_FAILURES.labels(reason="malformed").inc()
            log.warning("instance_refused", reason="malformed", detail=f"{type(exc).__name__}")
            return _status(status.CANNOT_UNDERSTAND, "the dataset could not be decoded")
        stream = getattr(received, "stream", None)
        if getattr(received, "oversize", False):  # streaming.StreamingBuffer kept nothing past the limit
            self._bind(event)
            self._counts.setdefault(id(event.assoc), Counter())["refused"] += 1
            metrics.STORE_FAILURES.labels(reason="too_large").inc()
            return _status(status.OUT_OF_RESOURCES, "dataset larger than dicom.max_dataset_bytes")
        try:
            validate_uid(affected, "Affected SOP Instance UID")
        except InvalidUID:
            self._bind(event)
            if stream is not None:
                stream.abort()
            self._counts.setdefault(id(event.assoc), Counter())["refused"] += 1
            metrics.STORE_FAILURES.labels(reason="bad_affected_sop_instance_uid").inc()
            log.warning("instance_refused", reason="bad_affected_sop_instance_uid")
            return _status(status.CANNOT_UNDERSTAND, "Affected SOP Instance UID is not a valid UID")
        expected = (str(event.context.abstract_syntax), affected)
        code, comment = self.store_received(event.assoc, data, stream, tsyntax, expected)
        return _status(code, comment) if comment else code

    def store_received(self, assoc: Any, data: memoryview, stream: Any, transfer_syntax: str,
                       expected: tuple[str, str] | None = None) -> tuple[int, str]:
        """C-STORE (PS3.4 Annex B): (status, error comment); success only once the instance is durable and indexed.

        ``expected``: the (SOP Class UID, SOP Instance UID) the request announced; the dataset must match.
        Failures by cause: the store's own (0xA900 mismatch, 0xC000 unreadable, 0xA700 full disk or a limit);
        an unexpected error is 0xA700 only when it is a resource that failed (the disk, memory, the index
        database), else 0xC000, so a PACS does not retry forever what will never be stored.
        """
        structlog.contextvars.bind_contextvars(association=self.assoc_id(assoc))
        counts = self._counts.setdefault(id(assoc), Counter())
        try:
            if stream is not None:  # written while it arrived (streaming.py); it falls back to put_bytes
                result = stream.finish(data)
            else:
                result = self.store.put_bytes(data, source="cstore", source_ae=assoc.requestor.ae_title, transfer_syntax=transfer_syntax,
                                              expected=expected)
        except StoreError as exc:
            counts["refused"] += 1
            return exc.status, str(exc)[:64]
        except Exception as exc:  # never a silent success, never a dead server
            counts["refused"] += 1
            exhausted = isinstance(exc, (OSError, MemoryError, *DATABASE_ERRORS))
            metrics.STORE_FAILURES.labels(reason="internal" if exhausted else "unprocessable").inc()
            # Where it failed, not the message: messages of pydicom and sqlite can quote values.
            log.error("instance_store_crashed", error=type(exc).__name__, where=where(exc))
            if exhausted:
                return status.OUT_OF_RESOURCES, "internal error while storing"
            return status.CANNOT_UNDERSTAND, "the dataset could not be processed"
        counts["duplicates" if result.duplicate else "stored"] += 1
        counts["bytes"] += 0 if result.duplicate else result.record.size
        return status.SUCCESS, ""


def _summary(counts: Counter) -> dict[str, int]:
    return {k: counts.get(k, 0) for k in ("stored", "duplicates", "refused", "bytes")}
