"""Prometheus metrics of the DICOMweb service, served on the process's /metrics with every other one."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "synthpacs_dicomweb_requests_total", "DICOMweb requests by route template and HTTP status", ["route", "code"]
)
LATENCY = Histogram(
    "synthpacs_dicomweb_request_seconds",
    "Time from a DICOMweb request's arrival to the end of its response, by route template",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
STOW_INSTANCES = Counter("synthpacs_dicomweb_stow_instances_total", "STOW-RS instances by outcome", ["outcome"])
