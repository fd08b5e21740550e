"""Request metrics, recorded around every HTTP request by its route template and final status.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: no extra task or body copy per
request. The route template (``/v1/embeddings``, never a raw path) keeps the label set bounded; a path
no route matches is counted as ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

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
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
