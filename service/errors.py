"""Every error is JSON ``{"error": {"message", "type", "code", "index"?}}``; a client mistake is a clear
4xx and never a 500.

The handlers map the service's own exceptions (bad images, a full queue, no model yet), FastAPI's
validation errors and Starlette's 404/405 to that one shape, and count each refusal by its type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batching import NotReady, QueueFull
from service.budget import DecodeBusy
from service.imaging import ImageError
from service.metrics import Metrics

log = logging.getLogger(__name__)

# OpenAI-style error types, by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "request_header_fields_too_large",
    499: "client_closed_request",  # nginx's status for a client that left first; never sent to anyone
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, raised anywhere in a request and rendered by the handlers."""

    def __init__(self, status: int, message: str, *, type: str | None = None, index: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.index = index
        self.headers = dict(headers or {})


class ClientAborted(Exception):
    """The client closed the connection before its body arrived (counted as 499, not as a server error)."""


def error_response(status: int, message: str, *, type: str | None = None, index: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"message": message, "type": type or ERROR_TYPES.get(status, "error"),
                               "code": status}
    if index is not None:
        body["index"] = index
    return JSONResponse({"error": body}, status_code=status, headers=dict(headers or {}))


def describe_validation_errors(errors: Sequence[Mapping]) -> tuple[str, int | None]:
    """Pydantic errors -> one readable message (at most three problems) and the first bad image's index."""
    messages: list[str] = []
    index: int | None = None
    for err in errors:
        loc = [p for p in err.get("loc", ()) if p != "body"]
        if len(loc) >= 2 and loc[0] == "images" and isinstance(loc[1], int):
            index = loc[1] if index is None else index
            rest = [str(p) for p in loc[2:] if p not in ("str", "RawArray")]
            if err.get("type") in ("string_type", "model_type", "model_attributes_type"):
                msg = f"image {loc[1]}: expected a base64 string or a raw array object {{\"data\", \"shape\"}}"
            else:
                msg = f"image {loc[1]}: {'.'.join(rest) + ': ' if rest else ''}{err.get('msg')}"
        else:
            where = ".".join(str(p) for p in loc)
            msg = f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
        if msg not in messages:
            messages.append(msg)
    more = f" (and {len(messages) - 3} more)" if len(messages) > 3 else ""
    return "; ".join(messages[:3]) + more, index


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def respond(status: int, message: str, *, type: str | None = None, index: int | None = None,
                headers: Mapping[str, str] | None = None) -> JSONResponse:
        resp = error_response(status, message, type=type, index=index, headers=headers)
        metrics.rejected.labels(type or ERROR_TYPES.get(status, "error")).inc()
        return resp

    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.message, type=exc.type, index=exc.index, headers=exc.headers)

    async def on_image_error(_: Request, exc: ImageError) -> JSONResponse:
        kind = "image_too_large" if exc.status == 413 else "invalid_image"
        return respond(exc.status, str(exc), type=kind, index=exc.index)

    async def on_queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return respond(429, str(exc), type="queue_full", headers={"Retry-After": "1"})

    async def on_decode_busy(_: Request, exc: DecodeBusy) -> JSONResponse:
        return respond(429, str(exc), type="decode_busy", headers={"Retry-After": "1"})

    async def on_client_aborted(request: Request, exc: ClientAborted) -> JSONResponse:
        # The client's doing, not a server error: one line, no traceback, counted under status 499. The
        # response goes nowhere (the connection is gone); it is what the metrics middleware records.
        log.info("client aborted %s %s: %s", request.method, request.url.path, exc)
        return respond(499, str(exc))

    async def on_not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return respond(503, str(exc), type="not_ready", headers={"Retry-After": "5"})

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, index = describe_validation_errors(exc.errors())
        return respond(422, message, index=index)

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(exc.status_code, str(exc.detail), headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a failed forward pass, not the client's doing; the traceback goes to the log.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(500, f"internal error ({type(exc).__name__}); see the service log")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(ImageError, on_image_error)
    app.add_exception_handler(QueueFull, on_queue_full)
    app.add_exception_handler(DecodeBusy, on_decode_busy)
    app.add_exception_handler(ClientAborted, on_client_aborted)
    app.add_exception_handler(NotReady, on_not_ready)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
