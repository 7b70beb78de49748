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
  40-80 ms on loopback (../shared/NOTES.md);
* associations that carry only Storage and Verification (what a PACS or a modality opens) are served,
  once established, straight from the socket by :class:`service.dicom.direct.DirectLoop` instead of
  pynetdicom's two polling reactors; associations that also carry Query/Retrieve keep pynetdicom, with
  shorter poll intervals while busy (:mod:`service.dicom.polling`) and PDUs read with a few large
  ``recv_into`` calls instead of its 4 KB loop (:mod:`service.dicom.sockets`).
"""

from __future__ import annotations

import ipaddress
import itertools
import select
import socket
import ssl
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
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from service import metrics
from service.config import Config, DicomPeer
from service.dicom import status
from service.dicom.direct import DirectLoop, eligible
from service.dicom.polling import ResponsiveAssociation, ResponsiveDUL, responsive
from service.dicom.sockets import large_reads
from service.dicom.streaming import StreamingDIMSE, streaming
from service.dicom.store import Store, StoreError
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


class _AllowListACSE(ACSE):
    """ACSE that rejects callers not on the allow-list before any other negotiation, and hands
    storage-only associations to a :class:`DirectLoop` (``direct``) as it accepts them."""

    allow_list: AllowList
    direct: Callable[[Any], DirectLoop] | None = None

    def send_accept(self) -> None:
        assoc = self.assoc
        if self.direct is not None and isinstance(assoc, _DirectAssociation) and isinstance(assoc.dul, ResponsiveDUL) and eligible(assoc, STORAGE_SOP_CLASSES):
            assoc.direct_loop = self.direct(assoc)
            # Before the A-ASSOCIATE-AC leaves: from then on only the loop reads the socket.
            assoc.dul.handed_off = True
        super().send_accept()

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
        super()._negotiate_as_acceptor()


def _tls_handshake(sock: socket.socket, context: ssl.SSLContext, timeout: float, address: Any) -> ssl.SSLSocket | None:
    """Wrap an accepted socket as the TLS server side; None (socket closed) when the handshake fails.

    ``timeout`` bounds the whole handshake, not each read, so a caller dribbling its ClientHello a byte
    at a time is closed as surely as a silent one.
    """
    previous = sock.gettimeout()
    deadline = time.monotonic() + timeout
    wrapped: ssl.SSLSocket | None = None
    try:
        sock.setblocking(False)
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        while True:
            try:
                wrapped.do_handshake()
                break
            except ssl.SSLWantReadError:
                ready = select.select([wrapped], [], [], max(0.0, deadline - time.monotonic()))[0]
            except ssl.SSLWantWriteError:
                ready = select.select([], [wrapped], [], max(0.0, deadline - time.monotonic()))[1]
            if not ready:
                raise TimeoutError("handshake not completed in time")
    except (ssl.SSLError, OSError) as exc:
        reason = f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None) or type(exc).__name__
        metrics.ASSOCIATIONS.labels(outcome="rejected_tls").inc()
        log.warning("tls_handshake_failed", host=address[0] if address else "", reason=str(reason)[:80])
        (wrapped or sock).close()
        return None
    wrapped.settimeout(previous)
    return wrapped


def _request_handler(allow_list: AllowList, store: Store | None, direct: Callable[[Any], DirectLoop] | None = None,
                     tls: tuple[ssl.SSLContext, float] | None = None) -> type[RequestHandler]:
    class Handler(RequestHandler):
        def handle(self) -> None:
            if tls is not None:
                wrapped = _tls_handshake(self.request, tls[0], tls[1], self.client_address)
                if wrapped is None:
                    return
                self.request = wrapped
            super().handle()

        def _create_association(self):  # type: ignore[override]
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = large_reads(responsive(super()._create_association()))
            if direct is not None and type(assoc) is ResponsiveAssociation:
                assoc.__class__ = _DirectAssociation
            if store is not None:
                streaming(assoc, store)
            acse = _AllowListACSE(assoc)
            acse.allow_list = allow_list
            acse.direct = direct
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
        self.ae.maximum_associations = cfg.dicom.max_associations
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
        self.server: ThreadedAssociationServer | None = None
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
        tls_context = server_context(self.cfg)  # before listening: a bad certificate file stops the start
        server = ThreadedAssociationServer(
            self.ae,
            (self.cfg.dicom.bind, self.cfg.dicom.port),
            self.cfg.dicom.ae_title,
            self.contexts,
            evt_handlers=self.handlers,
            request_handler=_request_handler(
                AllowList.from_config(self.cfg),
                self.store if self.cfg.dicom.stream_writes else None,
                self._direct_loop if self.cfg.dicom.direct_receive else None,
                (tls_context, self.cfg.dicom.tls_handshake_timeout) if tls_context is not None else None,
            ),
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
        return DirectLoop(assoc, self, self.store if self.cfg.dicom.stream_writes else None, self.cfg.dicom.network_timeout)

    def _on_store(self, event: evt.Event) -> Dataset | int:
        """C-STORE through pynetdicom's reactors (associations that also carry Query/Retrieve)."""
        try:
            # The dataset as received, without a copy; it is parsed in the context's transfer syntax.
            received = event.request.DataSet
            data = received.getbuffer()
            tsyntax = event.context.transfer_syntax
        except Exception as exc:  # the bytes could not even be framed as a dataset
            self._bind(event)
            metrics.STORE_FAILURES.labels(reason="malformed").inc()
            log.warning("instance_refused", reason="malformed", detail=f"{type(exc).__name__}")
            return _status(status.CANNOT_UNDERSTAND, "the dataset could not be decoded")
        code, comment = self.store_received(event.assoc, data, getattr(received, "stream", None), tsyntax)
        return _status(code, comment) if comment else code

    def store_received(self, assoc: Any, data: memoryview, stream: Any, transfer_syntax: str) -> tuple[int, str]:
        """C-STORE (PS3.4 Annex B): (status, error comment); success only once the instance is durable and indexed."""
        structlog.contextvars.bind_contextvars(association=self.assoc_id(assoc))
        counts = self._counts.setdefault(id(assoc), Counter())
        try:
            if stream is not None:  # written while it arrived (streaming.py); it falls back to put_bytes
                result = stream.finish(data)
            else:
                result = self.store.put_bytes(data, source="cstore", source_ae=assoc.requestor.ae_title, transfer_syntax=transfer_syntax)
        except StoreError as exc:
            counts["refused"] += 1
            return exc.status, str(exc)[:64]
        except Exception as exc:  # never a silent success, never a dead server
            counts["refused"] += 1
            metrics.STORE_FAILURES.labels(reason="internal").inc()
            # Where it failed, not the message: messages of pydicom and sqlite can quote values.
            log.error("instance_store_crashed", error=type(exc).__name__, where=where(exc))
            return status.OUT_OF_RESOURCES, "internal error while storing"
        counts["duplicates" if result.duplicate else "stored"] += 1
        counts["bytes"] += 0 if result.duplicate else result.record.size
        return status.SUCCESS, ""


def _summary(counts: Counter) -> dict[str, int]:
    return {k: counts.get(k, 0) for k in ("stored", "duplicates", "refused", "bytes")}
