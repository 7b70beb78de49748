"""``synthpacs echo HOST PORT``: C-ECHO a DICOM peer (PS3.7 9.1.5), like dcmtk ``echoscu``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from service.cli.common import CommandError, add_command, config_to_stderr


def register(subparsers: argparse._SubParsersAction) -> None:
    echo = add_command(subparsers, "echo", help="C-ECHO a DICOM peer (like dcmtk echoscu): is it there and does it accept us?")
    echo.add_argument("host", help="peer host name or address")
    echo.add_argument("port", type=int, help="peer DICOM port")
    echo.add_argument("-aet", "--aet", "--calling-aet", dest="calling_aet", help="our (calling) AE title (default dicom.ae_title)")
    echo.add_argument("-aec", "--aec", "--called-aet", dest="called_aet", default="ANY-SCP", help="the peer's (called) AE title (default ANY-SCP)")
    echo.add_argument("-to", "--timeout", type=float, default=10.0, help="seconds to wait at each step (default 10)")
    echo.add_argument("-r", "--repeat", type=int, default=1, help="echo this many times (default 1)")
    echo.add_argument("--tls", action="store_true", help="DICOM TLS (PS3.15 Annex B, BCP 195), like echoscu +tls")
    echo.add_argument("--tls-ca", help="CA certificates (PEM) the peer's certificate must chain to (default dicom.tls_ca, else the system's)")
    echo.add_argument("--tls-cert", help="our client certificate (PEM; default dicom.tls_cert)")
    echo.add_argument("--tls-key", help="its private key (PEM; default dicom.tls_key)")
    echo.add_argument("--tls-name", help="the name the peer's certificate must carry (default HOST)")
    echo.set_defaults(func=_echo)


def _echo(args: argparse.Namespace) -> int:
    from service.dicom.echo import EchoError, echo

    cfg = config_to_stderr(args)
    # Our message says what failed; pynetdicom's own error lines would repeat it on stderr.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    calling = args.calling_aet or cfg.dicom.ae_title
    if args.repeat < 1:
        raise CommandError("--repeat must be at least 1")
    tls = _echo_tls(args, cfg)
    failures = 0
    for _ in range(args.repeat):
        try:
            result = echo(args.host, args.port, called_ae=args.called_aet, calling_ae=calling, timeout=args.timeout, max_pdu=cfg.dicom.max_pdu or 16384, tls=tls)
        except EchoError as exc:
            print(f"C-ECHO failed: {exc}", file=sys.stderr)
            failures += 1
            continue
        verdict = "success" if result.ok else "failure"
        print(f"C-ECHO {calling} -> {args.called_aet}@{args.host}:{args.port}: {verdict} (status 0x{result.status:04X}) in {result.round_trip_ms:.1f} ms")
        failures += 0 if result.ok else 1
    return 1 if failures else 0


def _echo_tls(args: argparse.Namespace, cfg: Any) -> tuple[Any, str] | None:
    """The (context, expected name) for ``echo --tls``, built as the outbox would for a TLS peer."""
    from service.config import ConfigError, DicomPeer
    from service.dicom.tls import client_args

    given = [flag for flag in ("tls_ca", "tls_cert", "tls_key", "tls_name") if getattr(args, flag)]
    if not args.tls:
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} needs --tls")
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, flag)
        if path and not Path(path).expanduser().is_file():
            raise CommandError(f"--{flag.replace('_', '-')} {path}: not a readable file")
    peer = DicomPeer(args.called_aet, args.host, args.port, tls=True, tls_ca=args.tls_ca or cfg.dicom.tls_ca,
                     tls_cert=args.tls_cert or "", tls_key=args.tls_key or "", tls_name=args.tls_name or "")
    try:
        return client_args(cfg, peer)["tls_args"]
    except ConfigError as exc:
        raise CommandError(str(exc).replace(f"dicom.peers {args.called_aet!r} ", "echo --")) from None
