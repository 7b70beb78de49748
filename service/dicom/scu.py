"""The SCU: outgoing associations for C-ECHO and C-STORE (PS3.4 Annexes A and B, PS3.8).

Three things make it behave well with real PACS on a real network:

* Presentation contexts with fallback (PS3.8 §9.3.2.2, PS3.5 §10). For every (SOP Class, stored transfer
  syntax) pair one context proposes the stored syntax first plus both uncompressed little-endian syntaxes;
  a compressed instance also gets a context with only the uncompressed syntaxes. The instance goes as
  stored when the peer accepts that; otherwise it is converted (Explicit <-> Implicit VR by re-encoding,
  compressed pixel data by decompressing) rather than refused.
* TCP_NODELAY on our socket, so our requests leave at once.
* TCP_QUICKACK on every read. A peer left at its default (Nagle on, as storescp and Orthanc are unless
  started with ``TCP_NODELAY=1``) writes a C-STORE response in two segments and holds the second until
  the first is acknowledged; Linux delays that acknowledgement by up to 40 ms, and every C-STORE waits
  for it. Acknowledging at once removes the stall (measured: 22 -> 264 img/s into a default storescp,
  bench/RESULTS.md). Quick-ack mode lapses by itself, so it is set again before each read.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext, build_context

from service.config import Config, DicomPeer
from service.dicom.echo import EchoError
from service.dicom.echo import echo as c_echo
from service.dicom.tls import client_args, handshake_problem
from service.logs import get_logger, uid_hash

log = get_logger("scu")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1..255, so at most 128 per association.
MAX_CONTEXTS = 128

# C-STORE response statuses (PS3.4 Table B.2-1, PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
"""Coercion of data elements, elements discarded, data set does not match SOP class: stored, with a warning."""
DUPLICATE_SOP_INSTANCE = 0x0111
"""Duplicate SOP Instance (PS3.7 C.5.7): the peer already holds it, so the instance is delivered."""


class DestinationUnavailable(Exception):
    """The destination could not be reached, refused the association, or dropped it: try again later."""


class CannotSend(Exception):
    """This instance cannot go over this association (no acceptable presentation context, or unreadable)."""


class _QuickAckSocket(socket.socket):
    """A TCP socket that re-arms TCP_QUICKACK before each read (Linux; a no-op elsewhere)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        try:
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return super().recv(bufsize, flags)


def tune_socket(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY now, and quick ACKs for every later read."""
    holder = event.assoc.dul.socket
    sock = getattr(holder, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return
    # Only a plain TCP socket is swapped: a TLS-wrapped one keeps its wrapper (and just TCP_NODELAY).
    if not hasattr(socket, "TCP_QUICKACK") or type(sock) is not socket.socket or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    timeout = sock.gettimeout()
    tuned = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    tuned.settimeout(timeout)
    holder.socket = tuned


TUNING_HANDLERS = [(evt.EVT_CONN_OPEN, tune_socket)]
"""Pass as ``evt_handlers`` to any outgoing ``AE.associate`` (C-MOVE sub-associations included)."""


def make_ae(cfg: Config) -> AE:
    """Our AE as a requestor, with the configured timeouts and receive PDU size."""
    ae = AE(ae_title=cfg.dicom.ae_title)
    ae.acse_timeout = cfg.dicom.acse_timeout
    ae.dimse_timeout = cfg.dicom.dimse_timeout
    ae.network_timeout = cfg.dicom.network_timeout
    ae.connection_timeout = min(cfg.dicom.acse_timeout, 15.0)
    ae.maximum_pdu_size = cfg.dicom.max_pdu
    return ae


def storage_contexts_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts for C-STORE of instances with these (SOP Class UID, stored transfer syntax) pairs.

    Raises :class:`ValueError` when they need more than the 128 contexts an association may carry.
    """
    by_class: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        syntaxes = by_class.setdefault(str(sop_class), [])
        if str(ts) not in syntaxes:
            syntaxes.append(str(ts))
    contexts: list[PresentationContext] = []
    for sop_class, stored in sorted(by_class.items()):
        compressed = [ts for ts in stored if UID(ts).is_compressed]
        if compressed:
            # One context per compressed syntax, so the peer can accept each one on its own.
            contexts += [build_context(sop_class, [ts]) for ts in compressed]
        plain = [ts for ts in stored if not UID(ts).is_compressed]
        contexts.append(build_context(sop_class, plain + [str(ts) for ts in UNCOMPRESSED if str(ts) not in plain]))
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts needed; an association carries at most {MAX_CONTEXTS}")
    return contexts


def contexts_needed(pairs: Iterable[tuple[str, str]]) -> int:
    return len(storage_contexts_for(pairs)) if pairs else 0


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    status: int | None = None
    detail: str = ""


def echo(cfg: Config, peer: DicomPeer, timeout: float | None = None) -> EchoResult:
    """C-ECHO (PS3.4 Annex A) to a configured ``peer`` with our AE title, PDU size, TLS settings and socket
    tuning: :func:`service.dicom.echo.echo`, its failure turned into a result the outbox records."""
    if peer.port is None:
        return EchoResult(False, 0.0, None, f"peer {peer.ae_title} has no port configured")
    started = time.perf_counter()
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    try:
        result = c_echo(peer.host, peer.port, called_ae=peer.ae_title, calling_ae=cfg.dicom.ae_title,
                        timeout=timeout if timeout is not None else min(cfg.dicom.acse_timeout, 15.0),
                        max_pdu=cfg.dicom.max_pdu, tls=client_args(cfg, peer).get("tls_args"), evt_handlers=TUNING_HANDLERS)
    except EchoError as exc:
        return EchoResult(False, time.perf_counter() - started, None, f"{where}: {exc}")
    except Exception as exc:  # a TLS file that cannot be read, and the like
        return EchoResult(False, time.perf_counter() - started, None, f"{where}: cannot connect: {type(exc).__name__}: {exc}")
    detail = "" if result.ok else f"status 0x{result.status:04X}"
    return EchoResult(result.ok, result.round_trip_ms / 1000, result.status, detail)


def tcp_problem(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` cannot be made ("connection refused", ...), or None when it can.

    pynetdicom reports a failed connect as an aborted association and keeps the socket error to its log;
    asking again tells "nothing listens there" from "it listens but ended the association"."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except socket.gaierror:
        return f"cannot resolve host {host!r}"
    except TimeoutError:
        return f"no answer within {timeout:g} s (connection timed out)"
    except OSError as exc:
        return f"cannot connect ({exc.strerror or type(exc).__name__})"


def _why_not_established(assoc: Any, peer: DicomPeer, cfg: Config, timeout: float | None) -> str:
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if not assoc.is_rejected:
        problem = tcp_problem(peer.host, int(peer.port or 0), min(timeout or 10.0, 10.0))
        if problem is not None:
            return f"{where}: {problem}"
    if peer.tls and not assoc.is_rejected:
        # pynetdicom reports a failed TLS handshake as an abort: find out which side refused what.
        context, name = client_args(cfg, peer)["tls_args"]
        problem = handshake_problem(peer.host, int(peer.port or 0), context, name, timeout or 10.0)
        if problem is not None:
            return f"{where}: {problem}"
    if assoc.is_rejected:
        return f"{where} rejected the association (is our AE title allowed there?)"
    if assoc.is_aborted:
        return f"{where} aborted the association"
    return f"{where} did not answer (no association within the timeouts)"


@dataclass(frozen=True)
class StoreResult:
    """One C-STORE outcome. ``delivered``: the peer holds the instance (success, warning or duplicate)."""

    status: int
    delivered: bool
    transfer_syntax: str
    detail: str = ""


class StoreAssociation:
    """One association to one destination, carrying C-STOREs of instances read from files.

    Use as a context manager; :meth:`send` raises :class:`DestinationUnavailable` when the association
    is gone (the caller retries later) and :class:`CannotSend` when only this instance cannot go.
    """

    def __init__(self, cfg: Config, peer: DicomPeer, pairs: Iterable[tuple[str, str]]):
        if peer.port is None:
            raise DestinationUnavailable(f"peer {peer.ae_title} has no port configured (dicom.peers)")
        self.cfg, self.peer = cfg, peer
        self.pairs = {(str(a), str(b)) for a, b in pairs}
        self.ae = make_ae(cfg)
        self.assoc: Any = None
        self._message_id = 0

    def covers(self, pairs: Iterable[tuple[str, str]]) -> bool:
        return {(str(a), str(b)) for a, b in pairs} <= self.pairs

    def __enter__(self) -> "StoreAssociation":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def open(self) -> None:
        self.ae.requested_contexts = storage_contexts_for(self.pairs)
        try:
            assoc = self.ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title, evt_handlers=TUNING_HANDLERS,
                                      **client_args(self.cfg, self.peer))
        except Exception as exc:
            raise DestinationUnavailable(f"cannot connect to {self.peer.ae_title}: {type(exc).__name__}: {exc}") from None
        if not assoc.is_established:
            raise DestinationUnavailable(_why_not_established(assoc, self.peer, self.cfg, self.ae.connection_timeout))
        self.assoc = assoc

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            try:
                self.assoc.release()
            except Exception:  # the peer may already be gone; nothing is lost by not releasing cleanly
                self.assoc.abort()
        self.assoc = None
        self.ae.shutdown()

    def _accepted(self, sop_class: str) -> list[PresentationContext]:
        return [cx for cx in self.assoc.accepted_contexts if cx.abstract_syntax == sop_class]

    def send(self, path: Path, sop_class: str, transfer_syntax: str, originator: tuple[str, int] | None = None) -> StoreResult:
        """C-STORE the instance in ``path`` (PS3.4 B.2), converting its transfer syntax when needed."""
        if not self.is_open:
            raise DestinationUnavailable(f"the association to {self.peer.ae_title} is closed")
        accepted = self._accepted(sop_class)
        if not accepted:
            raise CannotSend(f"{self.peer.ae_title} accepted no presentation context for SOP Class {sop_class}")
        accepted_ts = {str(cx.transfer_syntax[0]) for cx in accepted}
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # a missing or damaged file cannot be sent, whatever we retry
            raise CannotSend(f"the stored file cannot be read ({type(exc).__name__})") from None
        sent_ts = transfer_syntax
        if transfer_syntax not in accepted_ts:
            ds, sent_ts = self._convert(ds, transfer_syntax, accepted_ts)
        self._message_id = self._message_id % 65535 + 1
        kwargs: dict[str, Any] = {"msg_id": self._message_id}
        if originator is not None:
            kwargs.update(originator_aet=originator[0], originator_id=originator[1])
        try:
            rsp = self.assoc.send_c_store(ds, **kwargs)
        except (RuntimeError, ValueError, AttributeError) as exc:
            if not self.assoc.is_established:
                raise DestinationUnavailable(f"the association to {self.peer.ae_title} ended: {exc}") from None
            raise CannotSend(f"the instance cannot be encoded for sending: {exc}") from None
        if rsp is None or "Status" not in rsp:
            # No response: DIMSE timeout or the association was aborted; the instance may or may not be stored.
            self.assoc.abort()
            raise DestinationUnavailable(f"{self.peer.ae_title} did not answer the C-STORE (timeout or abort)")
        code = int(rsp.Status)
        comment = str(rsp.get("ErrorComment", "")) if "ErrorComment" in rsp else ""
        if code == STATUS_SUCCESS:
            return StoreResult(code, True, sent_ts)
        if code in WARNING_STATUSES:
            return StoreResult(code, True, sent_ts, f"stored with warning 0x{code:04X} {comment}".strip())
        if code == DUPLICATE_SOP_INSTANCE:
            return StoreResult(code, True, sent_ts, "the peer already holds this instance")
        return StoreResult(code, False, sent_ts, f"refused with status 0x{code:04X} {comment}".strip())

    def _convert(self, ds: Dataset, stored: str, accepted: set[str]) -> tuple[Dataset, str]:
        """The instance in a syntax the peer accepted (PS3.5 §10).

        Between uncompressed little-endian syntaxes pynetdicom re-encodes by itself when it sends;
        compressed pixel data is decompressed here first (Explicit VR Little Endian).
        """
        target = next((str(ts) for ts in UNCOMPRESSED if str(ts) in accepted), None)
        if target is None:
            raise CannotSend(f"{self.peer.ae_title} accepts neither {UID(stored).name} nor an uncompressed transfer syntax")
        if UID(stored).is_compressed:
            try:
                ds.decompress()
            except Exception as exc:
                raise CannotSend(f"{UID(stored).name} pixel data cannot be decompressed here ({type(exc).__name__})") from None
        log.info("transfer_syntax_fallback", sop=uid_hash(ds.get("SOPInstanceUID")), stored=UID(stored).name, sent=UID(target).name, destination=self.peer.ae_title)
        return ds, target
