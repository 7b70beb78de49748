"""DICOM TLS: the Basic TLS Secure Transport Connection Profile of PS3.15 Annex B, as BCP 195.

PS3.15 §B.9 ("BCP 195 TLS Secure Transport Connection Profile") asks for TLS 1.2 or later and the cipher
suites RFC 9325 (BCP 195) recommends: ephemeral key exchange (ECDHE, DHE) with AES-GCM, and ChaCha20-Poly1305.
dcmtk's default profile (``--profile-bcp195-nd``) offers the same suites, so the two meet without options.
TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.

One context is built for the SCP (:func:`server_context`) and one per destination peer for the SCU
(:func:`client_args`). With ``dicom.tls_require_client_cert`` the caller's certificate also says *which*
listed peer is calling (:func:`certificate_names`, :func:`certificate_matches`), so a stolen AE title
on a trusted host is not enough.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from service.config import Config, ConfigError, DicomPeer

# RFC 9325 §4.2 recommended TLS 1.2 cipher suites, in OpenSSL's names.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
))


def _bcp195(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _readable(path: str, setting: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{setting}: {p} is not a readable file")
    return str(p)


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, where: str) -> None:
    try:
        ctx.load_cert_chain(_readable(cert, f"{where}tls_cert"), _readable(key, f"{where}tls_key"))
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}tls_cert / tls_key: cannot use them ({exc.reason or exc}); PEM certificate and its unencrypted key expected") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, setting: str) -> None:
    try:
        ctx.load_verify_locations(cafile=_readable(ca, setting))
    except ssl.SSLError as exc:
        raise ConfigError(f"{setting}: cannot read CA certificates ({exc.reason or exc}); PEM expected") from None


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """The SCP's TLS context, or None when ``dicom.tls_cert`` is not set (plain TCP).

    Raises :class:`ConfigError` naming the setting when a file is missing or unusable.
    """
    d = cfg.dicom
    if not d.tls_cert:
        return None
    ctx = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(ctx, d.tls_cert, d.tls_key, "dicom.")
    if d.tls_ca:
        _load_ca(ctx, d.tls_ca, "dicom.tls_ca")
        # Without tls_require_client_cert a certificate is asked for and checked if offered.
        ctx.verify_mode = ssl.CERT_REQUIRED if d.tls_require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(cfg: Config, peer: DicomPeer) -> ssl.SSLContext:
    """The SCU's TLS context for ``peer``: its certificate verified (CA and name), ours offered if set."""
    ctx = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED and check_hostname
    where = f"dicom.peers {peer.ae_title!r} "
    if peer.tls_ca:
        _load_ca(ctx, peer.tls_ca, where + "tls_ca")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    cert, key = (peer.tls_cert, peer.tls_key) if peer.tls_cert else (cfg.dicom.tls_cert, cfg.dicom.tls_key)
    if cert:
        _load_chain(ctx, cert, key, where if peer.tls_cert else "dicom.")
    return ctx


def client_args(cfg: Config, peer: DicomPeer) -> dict[str, Any]:
    """Keyword arguments for ``AE.associate`` to ``peer``: ``tls_args`` when the peer speaks TLS, else none."""
    if not peer.tls:
        return {}
    return {"tls_args": (client_context(cfg, peer), peer.tls_name or peer.host)}


def certificate_names(cert: dict[str, Any] | None) -> set[str]:
    """Names a verified peer certificate (``SSLSocket.getpeercert()``) carries: its subjectAltName DNS
    names and IP addresses and its subject Common Name, lower-cased."""
    if not cert:
        return set()
    names = {value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")}
    for rdn in cert.get("subject", ()):
        names |= {value for key, value in rdn if key == "commonName"}
    return {n.strip().lower() for n in names}


def certificate_matches(peer: DicomPeer, names: set[str]) -> bool:
    """Whether a caller's certificate names this peer: ``tls_name`` when set, else its host or AE title."""
    wanted = {peer.tls_name} if peer.tls_name else {peer.host, peer.ae_title}
    return bool({w.strip().lower() for w in wanted} & names)


def peer_certificate(sock: Any) -> dict[str, Any] | None:
    """The verified certificate of the peer on ``sock`` (None for plain TCP or no certificate)."""
    if isinstance(sock, ssl.SSLSocket):
        try:
            return sock.getpeercert() or None
        except (ValueError, OSError):  # not connected any more
            return None
    return None


# What an operator should check, by OpenSSL's reason for a failed handshake.
_ALERT_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate; configure ours (tls_cert and tls_key)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not accept our client certificate (is it signed by a CA the peer trusts?)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer does not accept our client certificate (is it signed by a CA the peer trusts?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA that signed our client certificate",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS on this port",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no TLS version or cipher suite in common (BCP 195: TLS 1.2 or later, AEAD suites)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (BCP 195: TLS 1.2 or later)",
    "NO_SHARED_CIPHER": "no cipher suite in common (BCP 195: ECDHE/DHE with AES-GCM or ChaCha20-Poly1305)",
}


def handshake_problem(host: str, port: int, context: ssl.SSLContext, name: str, timeout: float, probe_s: float = 1.0) -> str | None:
    """Why a TLS handshake with ``host:port`` fails, in words, or None when it succeeds.

    pynetdicom reports a failed handshake as an aborted association; this tells an operator which side
    refused what. It opens a connection of its own, so callers run it only after something failed. Under
    TLS 1.3 a server that refuses the client's certificate (or its absence) says so only after the client
    has finished its side of the handshake: the first ``probe_s`` seconds of the connection are read too.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
            if tls.version() != "TLSv1.3":
                return None
            tls.settimeout(probe_s)
            try:
                if tls.recv(1) == b"":
                    return f"{host}:{port} closed the TLS connection after the handshake: does it require a client certificate we did not send?"
            except TimeoutError:
                pass
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the certificate of {host}:{port} is not accepted ({exc.verify_message}; expected name {name!r})"
    except ssl.SSLError as exc:
        hint = _ALERT_HINTS.get(str(exc.reason), "does it speak TLS, and does it accept our certificate (or require one)?")
        return f"TLS handshake with {host}:{port} failed ({exc.reason or exc}): {hint}"
    except OSError as exc:
        return f"TLS handshake with {host}:{port} failed ({exc.strerror or type(exc).__name__}): does it speak TLS on this port?"
