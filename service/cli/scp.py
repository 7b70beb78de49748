"""``synthpacs scp``: the DICOM SCP alone (Verification, Storage, Query/Retrieve), with the outbox."""

from __future__ import annotations

import argparse

from service.cli.common import add_command, config_from_args


def add_dicom_options(parser: argparse.ArgumentParser) -> None:
    """dcmtk/pynetdicom-style options for the DICOM side."""
    g = parser.add_argument_group("DICOM")
    g.add_argument("-aet", "--ae-title", dest="ae_title", help="our AE title (dicom.ae_title)")
    g.add_argument("--bind", help="address to listen on (dicom.bind)")
    g.add_argument("--port", type=int, help="DICOM port (dicom.port)")
    g.add_argument("--max-pdu", dest="max_pdu", type=int, help="maximum PDU size we receive, 0 = unlimited (dicom.max_pdu)")
    g.add_argument("--acse-timeout", dest="acse_timeout", type=float, help="seconds to wait for association messages")
    g.add_argument("--dimse-timeout", dest="dimse_timeout", type=float, help="seconds to wait for DIMSE messages")
    g.add_argument("--network-timeout", dest="network_timeout", type=float, help="seconds before an idle connection closes")
    g.add_argument("--max-associations", dest="max_associations", type=int, help="concurrent associations")


def dicom_overrides(args: argparse.Namespace) -> dict:
    keys = ("ae_title", "bind", "port", "max_pdu", "acse_timeout", "dimse_timeout", "network_timeout", "max_associations")
    return {f"dicom.{k}": getattr(args, k, None) for k in keys}


def register(subparsers: argparse._SubParsersAction) -> None:
    scp = add_command(subparsers, "scp", help="run the DICOM SCP alone (Verification, Storage, Query/Retrieve)")
    add_dicom_options(scp)
    scp.set_defaults(func=_run_scp)


def _run_scp(args: argparse.Namespace) -> int:
    from service.runtime import Runtime

    cfg = config_from_args(args, **dicom_overrides(args))
    runtime = Runtime(cfg)
    runtime.add_scp()
    runtime.add_outbox()
    runtime.run_until_signalled()
    return 0
