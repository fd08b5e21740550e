"""The service's one error: :class:`ApiError`, rendered by one handler as
``{"error": {"message", "type", "code", "index"?}}``; a client mistake is a clear 4xx, never a 500.

FastAPI's validation errors and Starlette's 404/405 are turned into the same shape, and every refusal is
counted by its type.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.metrics import Metrics

log = logging.getLogger(__name__)

# OpenAI-style error types, by HTTP status, for errors raised without a more specific one.
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
    """An error with its HTTP answer, raised anywhere in a request and rendered by one handler.

    Args:
        status: the HTTP status.
        type: the error type clients branch on (``invalid_image``, ``queue_full``, ...); None: the
            status's generic type (:data:`ERROR_TYPES`).
        message: one readable sentence; it never holds a traceback or a server path.
        retry_after: seconds a client should wait before retrying (the ``Retry-After`` header).
        index: the position of the request's image at fault, when one is.
        headers: other response headers (``WWW-Authenticate``).
    """

    def __init__(self, status: int, type: str | None, message: str, retry_after: int | None = None, *,
                 index: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.message = message
        self.retry_after = retry_after
        self.index = index
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    def body(self) -> dict[str, object]:
        """The JSON answer, ``{"error": {...}}``."""
        error: dict[str, object] = {"message": self.message, "type": self.type, "code": self.status}
        if self.index is not None:
            error["index"] = self.index
        return {"error": error}


def _union_tag(part: object) -> bool:
    """Whether a location part names a member of a union (pydantic reports each member's error)."""
    return isinstance(part, str) and (part in ("str", "RawArray") or part.startswith(("list[", "union[")))


def describe_validation_errors(errors: Sequence[Mapping]) -> tuple[str, int | None]:
    """Pydantic errors -> one readable message (at most three problems) and the first bad image's index.

    Args:
        errors: ``ValidationError.errors()`` of a request body or of query parameters.

    Returns:
        The message and the index of the first image at fault (None when no image is).
    """
    located = [([p for p in err.get("loc", ()) if p not in ("body", "query") and not _union_tag(p)], err)
               for err in errors]
    # ``input`` is one image or a list: when the list's items are wrong, "not a string" says nothing more.
    if any(len(loc) >= 2 and loc[0] == "input" and isinstance(loc[1], int) for loc, _ in located):
        located = [(loc, err) for loc, err in located if loc != ["input"]]
    messages: list[str] = []
    index: int | None = None
    for loc, err in located:
        if len(loc) >= 2 and loc[0] in ("images", "input") and isinstance(loc[1], int):
            index = loc[1] if index is None else index
            rest = [str(p) for p in loc[2:]]
            if not rest and err.get("type") in ("string_type", "model_type", "model_attributes_type"):
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


ApiErrorHandler = Callable[[Request, ApiError], Awaitable[JSONResponse]]


def install_error_handler(app: FastAPI, metrics: Metrics) -> ApiErrorHandler:
    """Render :class:`ApiError` (and what FastAPI and Starlette raise, turned into one) on ``app``.

    Args:
        app: the app to install the handlers on.
        metrics: where each refusal is counted, by its type.

    Returns:
        The handler of :class:`ApiError`, for a route served past FastAPI's exception middleware
        (:class:`service.app.DirectRoute`).
    """
    def respond(exc: ApiError) -> JSONResponse:
        metrics.rejected.labels(exc.type).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status == 499:
            # The client's doing, not a server error: one line, no traceback, counted under status 499. The
            # answer goes nowhere (the connection is gone); it is what the metrics middleware records.
            log.info("client aborted %s %s: %s", request.method, request.url.path, exc.message)
        return respond(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, index = describe_validation_errors(exc.errors())
        return respond(ApiError(422, None, message, index=index))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return respond(ApiError(exc.status_code, None, str(exc.detail), headers=exc.headers))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a failed forward pass, not the client's doing; the traceback goes to the log.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(ApiError(500, None, f"internal error ({type(exc).__name__}); see the service log"))

    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]  # registered for ApiError only
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
    return on_api_error
