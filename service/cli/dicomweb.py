"""``synthpacs dicomweb``: the DICOMweb service alone (QIDO-RS, WADO-RS, STOW-RS; service/dicomweb)."""

from __future__ import annotations

import argparse

from service.cli.common import add_command, config_from_args
from service.runtime import Runtime


def add_dicomweb_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DICOMweb")
    g.add_argument("--dicomweb-bind", dest="dicomweb_bind", help="address to listen on (dicomweb.bind)")
    g.add_argument("--dicomweb-port", dest="dicomweb_port", type=int, help="HTTP port (dicomweb.port)")
    g.add_argument("--tls-cert", dest="dicomweb_tls_cert", help="PEM certificate for HTTPS (dicomweb.tls_cert)")
    g.add_argument("--tls-key", dest="dicomweb_tls_key", help="PEM private key for HTTPS (dicomweb.tls_key)")
    g.add_argument("--viewer-dir", dest="dicomweb_viewer_dir",
                   help="serve OHIF Viewer's bundle from this folder at /viewer (dicomweb.viewer_dir; `make viewer`)")


def dicomweb_overrides(args: argparse.Namespace) -> dict:
    keys = {"dicomweb_bind": "bind", "dicomweb_port": "port", "dicomweb_tls_cert": "tls_cert", "dicomweb_tls_key": "tls_key",
            "dicomweb_viewer_dir": "viewer_dir"}
    return {f"dicomweb.{v}": getattr(args, k, None) for k, v in keys.items()}


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = add_command(subparsers, "dicomweb", help="run the DICOMweb service alone (QIDO-RS, WADO-RS, STOW-RS)")
    add_dicomweb_options(cmd)
    cmd.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, **dicomweb_overrides(args))
    runtime = Runtime(cfg)
    runtime.add_dicomweb()
    runtime.run_until_signalled()
    return 0
