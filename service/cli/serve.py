"""``synthpacs serve``: the whole service (DICOM SCP, gRPC inference, outbox, DICOMweb, /metrics)."""

from __future__ import annotations

import argparse

from service.cli.common import add_command, config_from_args
from service.cli.scp import add_dicom_options, dicom_overrides
from service.runtime import Runtime


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = add_command(subparsers, "serve", help="run the whole service: DICOM SCP, gRPC inference, outbox, DICOMweb, /metrics")
    add_dicom_options(serve)
    serve.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port (grpc.port)")
    from service.cli.dicomweb import add_dicomweb_options

    add_dicomweb_options(serve)
    serve.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from service.cli.dicomweb import dicomweb_overrides

    cfg = config_from_args(args, **dicom_overrides(args), **dicomweb_overrides(args), **{"grpc.port": getattr(args, "grpc_port", None)})
    runtime = Runtime(cfg)
    runtime.add_scp()
    runtime.add_outbox()
    runtime.add_grpc()
    if cfg.dicomweb.enabled:
        runtime.add_dicomweb()
    runtime.run_until_signalled()
    return 0
