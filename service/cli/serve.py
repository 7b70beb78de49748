"""``synthpacs serve``: the whole service (DICOM SCP, gRPC inference, outbox, DICOMweb, /metrics), or the
parts named by ``--components``, so one image runs as SCP, outbox, inference or metrics processes."""

from __future__ import annotations

import argparse

from service.cli.common import add_command, config_from_args
from service.cli.scp import add_dicom_options, dicom_overrides
from service.runtime import Runtime

# In the order they start (the outbox before gRPC: GenerateStudy queues into this process's outbox).
COMPONENTS = ("dicom", "outbox", "grpc", "dicomweb", "metrics")


def parse_components(text: str) -> tuple[str, ...]:
    """``--components``: a comma-separated, non-empty subset of :data:`COMPONENTS`, returned in start order."""
    names = {n.strip().lower() for n in text.split(",")} - {""}
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one component: {', '.join(COMPONENTS)}")
    unknown = sorted(names - set(COMPONENTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown component{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; choose from {', '.join(COMPONENTS)}"
        )
    return tuple(c for c in COMPONENTS if c in names)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = add_command(subparsers, "serve", help="run the whole service: DICOM SCP, gRPC inference, outbox, DICOMweb, /metrics")
    serve.add_argument(
        "--components", type=parse_components, metavar="LIST",
        help=f"comma-separated parts to run, any of {','.join(COMPONENTS)} (default: all; dicomweb and metrics unless "
        "dicomweb.enabled or metrics.enabled is false). A part named here runs whatever those settings say",
    )
    add_dicom_options(serve)
    serve.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port (grpc.port)")
    from service.cli.dicomweb import add_dicomweb_options

    add_dicomweb_options(serve)
    serve.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from service.cli.dicomweb import dicomweb_overrides

    chosen = getattr(args, "components", None)
    overrides = {**dicom_overrides(args), **dicomweb_overrides(args), "grpc.port": getattr(args, "grpc_port", None)}
    if chosen is not None:
        overrides["dicomweb.enabled"] = "dicomweb" in chosen
        overrides["metrics.enabled"] = "metrics" in chosen
    cfg = config_from_args(args, **overrides)
    runtime = Runtime(cfg)
    if chosen is None or "dicom" in chosen:
        runtime.add_scp()
    if chosen is None or "outbox" in chosen:
        runtime.add_outbox()
    if chosen is None or "grpc" in chosen:
        runtime.add_grpc()
    if cfg.dicomweb.enabled:
        runtime.add_dicomweb()
    runtime.run_until_signalled()  # /metrics when cfg.metrics.enabled
    return 0
