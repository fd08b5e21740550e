"""Prometheus metrics in a registry owned by one app (never the process-global one), so several apps in a
process (tests, a reload) do not collide or double count; :class:`MetricsMiddleware` records every
request by its route template and final status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The service's metrics, named ``<prefix>_*``."""

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
        self.embedding_requests = Gauge(f"{prefix}_requests_in_flight",
                                        "Embeddings requests in flight (from the route's start to its answer).",
                                        registry=r)
        self.queue_images = Gauge(f"{prefix}_queue_images", "Images queued or in a running forward pass.",
                                  registry=r)
        self.decode_pixels = Gauge(f"{prefix}_decode_pixels",
                                   "Pixels being decoded by requests in flight (the decode budget in use).",
                                   registry=r)
        self.body_bytes = Gauge(f"{prefix}_body_bytes",
                                "Bytes of request bodies held by requests in flight (the body budget in use).",
                                registry=r)
        self.rejected = Counter(f"{prefix}_rejected", "Requests refused before inference, by reason.",
                                ["reason"], registry=r)
        self.model_info = Gauge(f"{prefix}_model_info", "The served model (value 1).",
                                ["name", "version", "alias"], registry=r)
        self.reloads = Counter(f"{prefix}_model_reloads", "Model loads by outcome.", ["outcome"], registry=r)
        self._images_by_layer: dict[str, Any] = {}  # labels() takes a lock: each layer's child, looked up once

    def count_images(self, layer: str, n: int) -> None:
        """Count ``n`` images embedded at ``layer`` ("backbone" or "projection")."""
        child = self._images_by_layer.get(layer)
        if child is None:
            child = self._images_by_layer[layer] = self.images.labels(layer)
        child.inc(n)

    def set_model(self, name: str | None, version: str | None, alias: str | None) -> None:
        """Label the served model (one series at a time)."""
        self.model_info.clear()
        self.model_info.labels(name or "", version or "", alias or "").set(1)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """A plain ASGI middleware (no extra task or body copy per request, unlike BaseHTTPMiddleware).

    The route template (``/v1/embeddings``, never a raw path) keeps the label set bounded; a path no
    route matches is counted as ``unmatched``.

    Args:
        app: the ASGI app it wraps.
        metrics: where requests are counted.
        routes: the app's routes, to name the requests that no FastAPI route labels.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        # Each label set's counter and histogram, looked up once (prometheus_client's labels() takes a lock).
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _template(self, scope: Scope) -> str:
        # FastAPI's own routes write themselves into the scope; plain Starlette ones (the OpenAPI
        # document, the docs pages) do not, so those are matched here.
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes() if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when an exception escapes before a response starts

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = self._template(scope)
            key = (route, scope["method"], status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (self.metrics.requests.labels(route, key[1], str(status)),
                                              self.metrics.latency.labels(route))
            series[0].inc()
            series[1].observe(time.perf_counter() - started)
