"""Prometheus metrics, all named ``synthpacs_*``, served on ``/metrics``.

Metrics are module-level objects in the default registry (the prometheus-client convention), so every
component records into the same endpoint whichever process runs it.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# DICOM ingest (PS3.4 Annex B Storage Service Class)
ASSOCIATIONS = Counter("synthpacs_dicom_associations_total", "DICOM associations by outcome", ["outcome"])
ACTIVE_ASSOCIATIONS = Gauge("synthpacs_dicom_active_associations", "DICOM associations open now")
INSTANCES_RECEIVED = Counter("synthpacs_instances_received_total", "Instances stored, by how they arrived", ["source"])
BYTES_RECEIVED = Counter("synthpacs_bytes_received_total", "Bytes of instances stored")
STORE_FAILURES = Counter("synthpacs_store_failures_total", "Instances refused or not stored, by reason", ["reason"])
DUPLICATES = Counter("synthpacs_store_duplicates_total", "Re-sent instances, by outcome", ["outcome"])
# The free-space watermark (service/archive/watermark.py); refusals count as STORE_FAILURES reason "low_disk".
FREE_BYTES = Gauge("synthpacs_store_free_bytes", "Free bytes on the store's file system (for unprivileged writers)")
WATERMARK_BYTES = Gauge("synthpacs_store_min_free_bytes", "Free bytes below which new instances are refused (the watermark)")
BELOW_WATERMARK = Gauge("synthpacs_store_below_watermark", "1 while new instances are refused for lack of disk space")
STORE_LATENCY = Histogram(
    "synthpacs_store_latency_seconds",
    "Time from a complete C-STORE request to a durable, indexed instance",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

_server_lock = threading.Lock()
_server_started: tuple[str, int] | None = None


def serve_metrics(bind: str, port: int) -> tuple[str, int]:
    """Start the /metrics HTTP endpoint once per process; returns the address it listens on."""
    global _server_started
    with _server_lock:
        if _server_started is None:
            server, _thread = start_http_server(port, addr=bind)
            _server_started = (bind, server.server_address[1])
        return _server_started
