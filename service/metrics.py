"""Prometheus metrics in a registry owned by one app (never the process-global one), so several apps in a
process (tests, a reload) do not collide or double count."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, prefix: str = "embedding") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{prefix}_requests", "HTTP requests by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram(f"{prefix}_request_duration_seconds", "HTTP request latency by route.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{prefix}_batch_size", "Images per forward pass.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.images = Counter(f"{prefix}_images", "Images embedded, by layer.", ["layer"], registry=r)
        self.queue_time = Histogram(f"{prefix}_queue_duration_seconds",
                                    "Time a request's images waited for a forward pass.",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram(f"{prefix}_inference_duration_seconds", "Forward pass time per batch.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_images = Gauge(f"{prefix}_queue_images", "Images queued or in a running forward pass.",
                                  registry=r)
        self.decode_pixels = Gauge(f"{prefix}_decode_pixels",
                                   "Pixels being decoded by requests in flight (the decode budget in use).",
                                   registry=r)
        self.rejected = Counter(f"{prefix}_rejected", "Requests refused before inference, by reason.",
                                ["reason"], registry=r)
        self.model_info = Gauge(f"{prefix}_model_info", "The served model (value 1).",
                                ["name", "version", "alias"], registry=r)
        self.reloads = Counter(f"{prefix}_model_reloads", "Model loads by outcome.", ["outcome"], registry=r)

    def set_model(self, name: str | None, version: str | None, alias: str | None) -> None:
        self.model_info.clear()
        self.model_info.labels(name or "", version or "", alias or "").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
