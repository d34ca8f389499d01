"""The API's Prometheus metrics (served at /metrics with the process's own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
REQUESTS = Counter(
    "urbanpulse_api_requests",
    "HTTP requests answered",
    ["method", "route", "status"],
    registry=registry,
)
LATENCY = Histogram(
    "urbanpulse_api_request_seconds",
    "Time to answer (streams: time to start)",
    ["route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=registry,
)
STREAMS = Gauge("urbanpulse_api_streams", "Open alert event streams", registry=registry)
