"""``synthpacs inference``: the gRPC inference server alone (``synthpacs serve`` runs it beside the SCP)."""

from __future__ import annotations

import argparse

from service.cli.common import add_command, config_from_args
from service.runtime import Runtime


def add_grpc_options(parser: argparse.ArgumentParser) -> None:
    """Options for the gRPC server and its inference settings (each overrides the setting named)."""
    g = parser.add_argument_group("gRPC inference")
    g.add_argument("--grpc-bind", dest="grpc_bind", help="address to listen on (grpc.bind)")
    g.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port, 0 picks a free one (grpc.port)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (inference.device)")
    g.add_argument("--preload", help="comma-separated models to load at start, e.g. demo-dcgan,other:v2 (inference.preload)")
    g.add_argument("--max-batch", dest="max_batch", type=int, help="largest forward pass (inference.max_batch)")
    g.add_argument("--max-queue-delay-ms", dest="max_queue_delay_ms", type=float, help="longest wait to fill a batch (inference.max_queue_delay_ms)")
    g.add_argument("--cpu-threads", dest="cpu_threads", type=int, help="PyTorch threads for CPU inference, 0 = one per core (inference.cpu_threads)")
    g.add_argument("--no-batching", dest="batching", action="store_false", default=None, help="one image per forward pass (inference.batching)")
    g.add_argument("--tls-cert", dest="tls_cert", help="server certificate, PEM (grpc.tls_cert)")
    g.add_argument("--tls-key", dest="tls_key", help="server private key, PEM (grpc.tls_key)")
    g.add_argument("--tls-client-ca", dest="tls_client_ca", help="CA that signs client certificates: mutual TLS (grpc.tls_client_ca)")


def grpc_overrides(args: argparse.Namespace) -> dict:
    """Configuration overrides from :func:`add_grpc_options` flags (None: not given)."""
    preload = getattr(args, "preload", None)
    return {
        "grpc.bind": getattr(args, "grpc_bind", None),
        "grpc.port": getattr(args, "grpc_port", None),
        "grpc.tls_cert": getattr(args, "tls_cert", None),
        "grpc.tls_key": getattr(args, "tls_key", None),
        "grpc.tls_client_ca": getattr(args, "tls_client_ca", None),
        "inference.device": getattr(args, "device", None),
        "inference.preload": [p.strip() for p in preload.split(",") if p.strip()] if preload is not None else None,
        "inference.max_batch": getattr(args, "max_batch", None),
        "inference.max_queue_delay_ms": getattr(args, "max_queue_delay_ms", None),
        "inference.batching": getattr(args, "batching", None),
        "inference.cpu_threads": getattr(args, "cpu_threads", None),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "inference",
        help="run the gRPC inference server alone (bearer tokens: grpc.tokens or SYNTHPACS_GRPC_TOKENS, never a flag)",
    )
    add_grpc_options(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, **grpc_overrides(args))
    runtime = Runtime(cfg)
    runtime.add_grpc()
    runtime.run_until_signalled()
    return 0
