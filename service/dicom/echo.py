"""C-ECHO SCU (PS3.4 Annex A, Verification Service Class): is a DICOM peer there and does it accept us?

The one C-ECHO of synthpacs: ``synthpacs echo`` calls :func:`echo`, and the outbox's health checks call it
through :func:`service.dicom.scu.echo` with a configured peer.

What a PACS administrator runs first, like dcmtk's ``echoscu``: it says whether the TCP connection, the
association (our calling AE title, its called AE title) and the Verification service all work, and
if not, which of them failed, in words. Over DICOM TLS (PS3.15 Annex B) it also says whether the TLS
handshake failed and why (the peer's certificate not trusted or not naming the host, ours refused).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Sequence

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from service.archive.status import SUCCESS
from service.dicom.tls import handshake_problem


class EchoError(Exception):
    """The echo did not succeed; the message says at which step and what to check."""


@dataclass(frozen=True)
class EchoResult:
    status: int
    round_trip_ms: float  # association, C-ECHO and release

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def echo(host: str, port: int, called_ae: str = "ANY-SCP", calling_ae: str = "SYNTHPACS", timeout: float = 10.0, max_pdu: int = 16384,
         tls: tuple[ssl.SSLContext, str] | None = None, evt_handlers: Sequence[tuple[Any, Any]] = ()) -> EchoResult:
    """Open an association, send one C-ECHO, release. Raises :class:`EchoError` when any step fails.

    ``tls``: (client context, the name the peer's certificate must carry) for DICOM TLS.
    ``evt_handlers``: further pynetdicom handlers for the association (the SCU's socket tuning).
    """
    _check_ae(called_ae, "called")
    _check_ae(calling_ae, "calling")
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror:
        raise EchoError(f"cannot resolve host {host!r}") from None
    # TCP first, so that "nothing listens there" is told apart from "it listens but refuses us".
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        raise EchoError(f"connection refused: nothing listens on {host}:{port}") from None
    except OSError as exc:
        raise EchoError(f"cannot connect to {host}:{port} ({exc.strerror or 'timed out'} after {timeout:g} s)") from None
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    answers: list = []
    started = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_ACSE_RECV, lambda e: answers.append(e.primitive)), *evt_handlers],
                         **({"tls_args": tls} if tls is not None else {}))
    try:
        if tls is not None and not assoc.is_established and not assoc.is_rejected:
            _check_handshake(host, port, tls, timeout)
        if assoc.is_rejected:
            reason = _reject_reason(answers)
            raise EchoError(f"{called_ae}@{host}:{port} rejected the association: {reason}")
        if assoc.is_aborted and answers:
            raise EchoError(f"{called_ae}@{host}:{port} aborted the association (check the called AE title and its peer list)")
        if not assoc.is_established:
            raise EchoError(f"no association with {host}:{port}: connection refused or timed out after {timeout:g} s")
        rsp = assoc.send_c_echo()
        if rsp is None or "Status" not in rsp:
            assoc.abort()
            raise EchoError(f"{called_ae}@{host}:{port} sent no C-ECHO response within {timeout:g} s")
        status = int(rsp.Status)
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    return EchoResult(status, (time.perf_counter() - started) * 1000)


def _check_handshake(host: str, port: int, tls: tuple[ssl.SSLContext, str], timeout: float) -> None:
    """After a failed association: was it the TLS handshake, and which side refused what?"""
    problem = handshake_problem(host, port, tls[0], tls[1], timeout)
    if problem is not None:
        raise EchoError(problem)


def _check_ae(title: str, which: str) -> None:
    if not title or len(title) > 16 or "\\" in title or title != title.strip():
        raise EchoError(f"the {which} AE title {title!r} is not valid (1-16 characters, no backslash, PS3.5 §6.2)")


# A-ASSOCIATE-RJ reasons (PS3.8 Table 9-21), by (source, reason).
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized (add ours to the peer's allowed peers)",
    (1, 7): "called AE title not recognized (check the peer's AE title)",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations)",
}


def _reject_reason(answers: list) -> str:
    for primitive in answers:
        source, diagnostic = getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None)
        if source is not None and diagnostic is not None:
            key = (int(source), int(diagnostic))
            return _REJECT_REASONS.get(key, f"source {key[0]}, reason {key[1]}")
    return "reason not given"
