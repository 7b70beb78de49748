"""The gRPC inference server: Synthesizer, grpc.health.v1 with per-model readiness, reflection, optional
TLS / mutual TLS and bearer tokens, the model cache with its background preload and registry rescans,
and the dynamic batcher. ``start()``/``stop()`` like every runtime component (service/runtime.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from models.device import DeviceError, pick_device
from models.registry import Registry
from service.config import Config, ConfigError
from service.home import Home
from service.inference.auth import BearerTokenInterceptor
from service.inference.batcher import DynamicBatcher
from service.inference.cache import ModelCache
from service.inference.servicer import SynthesizerServicer
from service.logs import get_logger
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc

log = get_logger("grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Synthesizer"].full_name  # "synthpacs.v1.Synthesizer"
# Beyond the default 4 MiB: a 16-bit 2048 px DICOM instance is 8 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def model_health_name(ref: str) -> str:
    """The grpc.health.v1 service name of a model (``name``) or a version (``name:vN``)."""
    return f"{SERVICE_NAME}/{ref}"


def server_credentials(cfg: Config) -> grpc.ServerCredentials | None:
    """TLS from grpc.tls_cert / tls_key; with grpc.tls_client_ca, clients must present a certificate
    signed by it (mutual TLS). None when TLS is off."""
    g = cfg.grpc
    if not (g.tls_cert or g.tls_key or g.tls_client_ca):
        return None
    if not (g.tls_cert and g.tls_key):
        raise ConfigError("grpc.tls_cert and grpc.tls_key go together: set both for TLS, or neither")
    cert, key = _read(g.tls_cert, "grpc.tls_cert"), _read(g.tls_key, "grpc.tls_key")
    ca = _read(g.tls_client_ca, "grpc.tls_client_ca") if g.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def default_study_writer(cfg: Config, store: Callable[[], Any], outbox: Callable[[], Any] | None = None) -> Callable[[], Any]:
    """A factory for service/synthetic/studies.py's writer over the process's store (and outbox, when it has one)."""

    def make() -> Any:
        from service.synthetic.studies import SyntheticStudyWriter

        return SyntheticStudyWriter(cfg, store(), outbox() if outbox is not None else None)

    return make


class InferenceServer:
    def __init__(self, cfg: Config, registry: Registry | None = None, study_writer: Callable[[], Any] | None = None):
        self.cfg = cfg
        inf = cfg.inference
        try:
            self.device = pick_device(inf.device, setting_name="inference.device", deterministic=True)
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        if inf.cpu_threads < 0 or inf.max_queue_delay_ms < 0 or inf.max_loaded_models < 1:
            raise ConfigError("inference.cpu_threads and max_queue_delay_ms must not be negative, max_loaded_models at least 1")
        if inf.cpu_threads and self.device.type == "cpu":
            # Process-wide: with every core in a forward pass, threads that wait at each barrier for a
            # sibling preempted by other work (gRPC threads, other processes) slow the pass several times.
            torch.set_num_threads(inf.cpu_threads)
        if registry is None:
            registry = Registry.with_bundled(Home.at(cfg.home_path).models_dir)
        self.registry = registry
        self.health = health.HealthServicer()
        self.cache = ModelCache(
            registry, self.device, max_loaded=inf.max_loaded_models, max_batch=inf.max_batch,
            half_precision=inf.half_precision, on_change=self._sync_health,
        )
        self.batcher = DynamicBatcher(inf.max_batch, inf.max_queue_delay_ms / 1000.0, enabled=inf.batching)
        self.servicer = SynthesizerServicer(cfg, self.cache, self.batcher, study_writer)
        self.port: int | None = None
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._background: threading.Thread | None = None
        self._health_lock = threading.Lock()

    @property
    def address(self) -> str:
        """host:port clients can dial (loopback when bound to every interface)."""
        host = self.cfg.grpc.bind
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("localhost" if host == "::" else host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> int:
        """Listen and serve; returns the port. Models load in the background: the server answers at once,
        and a model reports NOT_SERVING until it is ready."""
        g, inf = self.cfg.grpc, self.cfg.inference
        credentials = server_credentials(self.cfg)
        interceptors = [BearerTokenInterceptor(g.tokens)] if g.tokens else []
        # A Generate stream holds a worker thread while it runs: keep room for max_inflight of them plus
        # health checks and model listings, so the inflight limit (not a silent queue) is what callers meet.
        workers = max(g.max_workers, inf.max_inflight + 8)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthpacs-grpc"),
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),  # two servers must never share a port by accident
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ],
        )
        pb_grpc.add_SynthesizerServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        host = g.bind if ":" not in g.bind or g.bind.startswith("[") else f"[{g.bind}]"
        address = f"{host}:{g.port}"
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"gRPC cannot listen on {address}: {exc}") from None
        if not port:
            raise ConfigError(f"gRPC cannot listen on {address} (in use, or not an address of this machine); change grpc.bind / grpc.port")
        self.batcher.start()
        server.start()
        self._server, self.port = server, port
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._stop.clear()
        self._background = threading.Thread(target=self._manage_models, name="synthpacs-models", daemon=True)
        self._background.start()
        log.info(
            "grpc_listening", bind=g.bind, port=port, tls=credentials is not None, mutual_tls=bool(g.tls_client_ca),
            auth=bool(g.tokens), device=str(self.device), batching=inf.batching, max_batch=inf.max_batch,
            max_queue_delay_ms=inf.max_queue_delay_ms, preload=list(inf.preload),
        )
        return port

    def _manage_models(self) -> None:
        self.cache.rescan()
        self.cache.preload(self.cfg.inference.preload)
        interval = self.cfg.inference.reload_interval_s
        if interval <= 0:
            return
        while not self._stop.wait(interval):
            self.cache.rescan()

    def _sync_health(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        with self._health_lock:
            for ref, ready in self.cache.readiness().items():
                self.health.set(model_health_name(ref), serving if ready else not_serving)

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds, then stop the batcher."""
        self._stop.set()
        server, self._server = self._server, None
        if server is None:
            return
        self.health.enter_graceful_shutdown()
        server.stop(grace).wait(grace + 5)
        self.batcher.stop()
        if self._background is not None:
            self._background.join(timeout=grace + 30)
        self.cache.clear()
        log.info("grpc_stopped", port=self.port)
