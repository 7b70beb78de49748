"""Prometheus metrics of the gRPC inference service (``synthpacs_grpc_*``, ``synthpacs_inference_*``).

Module-level objects in the default registry, like :mod:`service.metrics`, so they appear on the same
``/metrics`` endpoint as the DICOM side when ``synthpacs serve`` runs both.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("synthpacs_grpc_requests_total", "gRPC requests finished, by method and status code", ["method", "code"])
REQUEST_LATENCY = Histogram(
    "synthpacs_grpc_request_latency_seconds", "Time from a request's arrival to its last response", ["method"], buckets=_LATENCY_BUCKETS
)
INFLIGHT = Gauge("synthpacs_grpc_inflight_requests", "Generate and GenerateStudy requests running now")
REJECTED = Counter("synthpacs_grpc_rejected_total", "Requests refused before any work, by reason", ["reason"])

IMAGES = Counter("synthpacs_inference_images_total", "Images generated, by model version", ["model"])
BATCH_SIZE = Histogram(
    "synthpacs_inference_batch_size",
    "Requests merged into one forward pass (before padding to a calibrated size)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PADDED_ROWS = Counter("synthpacs_inference_padded_rows_total", "Latent rows added to reach a calibrated forward size")
QUEUE_TIME = Histogram(
    "synthpacs_inference_queue_seconds", "Time an image waited in the batcher before its forward pass", buckets=_LATENCY_BUCKETS
)
FORWARD_TIME = Histogram(
    "synthpacs_inference_forward_seconds", "Duration of one batched forward pass", ["model"], buckets=_LATENCY_BUCKETS
)
MODEL_LOAD_TIME = Histogram(
    "synthpacs_inference_model_load_seconds",
    "Time to load, verify and calibrate a model version",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
MODEL_LOAD_FAILURES = Counter("synthpacs_inference_model_load_failures_total", "Model versions that failed to load", ["model"])
MODELS_LOADED = Gauge("synthpacs_inference_models_loaded", "Model versions in memory")
DEVICE_MEMORY = Gauge(
    "synthpacs_inference_device_memory_bytes",
    "Inference device memory: on CUDA allocated and reserved by PyTorch; on the CPU the loaded weights",
    ["device", "kind"],
)
