"""The HTTP server: uvicorn's options for the service, and the connection limits uvicorn lacks.

Neither of uvicorn's protocols bounds the time to receive a request's headers (half a header, or a body
that stops short of its Content-Length, holds a connection for ever), and its httptools protocol (the
faster one, the default with ``uvicorn[standard]``) has no header size limit at all: a 100 MB header is
buffered (httptools grows its buffer by concatenation, which stalls the event loop for seconds) and
served. h11's public ``max_incomplete_event_size`` bounds the header size only (README "The embedding
service" has the measurement). So by default (``SERVE_HTTP=guarded``) :class:`GuardedHttpToolsProtocol`
adds, per connection:

- ``max_header_bytes``: the request line and headers together; past it, 431 and the connection closes;
- ``header_timeout_s``: from the connection's start (or a request's first byte) to the end of its headers;
  past it, 408 and close;
- after a response, a body the app did not read must finish arriving within ``header_timeout_s``, or the
  connection closes (a body the app does read is bounded by the app: ``body_timeout_s``, 408).

Refusals are written here, before the app sees the request, as the service's JSON error shape, and logged
in one line. :func:`uvicorn_options` picks this class (or, with ``SERVE_HTTP=h11``, uvicorn's h11 protocol
with its public header size limit alone).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any

from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger(__name__)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools: h11 below
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def error_bytes(status: int, message: str, type: str) -> bytes:
    """A whole HTTP/1.1 answer in the service's error shape, closing the connection."""
    body = json.dumps(ApiError(status, type, message).body()).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a header size limit, a header time limit and a time limit on
        unread bodies (see the module's docstring)."""

        max_header_bytes = 65_536
        header_timeout_s = 10.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_headers = True  # between a request's first byte (or the connection's) and its headers' end
            self._header_bytes = 0
            self._body_pending = False  # headers done, body not all received yet
            self._timer: asyncio.TimerHandle | None = None

        # -- timers
        def _arm(self, handler: Any) -> None:
            self._disarm()
            self._timer = self.loop.call_later(self.header_timeout_s, handler)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_too_slow(self) -> None:
            self._timer = None
            if self._in_headers and not self.transport.is_closing():
                self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s",
                             "request_timeout")

        def _unread_body_too_slow(self) -> None:
            self._timer = None
            if self._body_pending and not self.transport.is_closing():
                log.info("closing %s: the rest of a request body did not arrive within %g s",
                         self._peer(), self.header_timeout_s)
                self.transport.close()

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

        def _refuse(self, status: int, message: str, type: str) -> None:
            log.info("refused %s: %d %s", self._peer(), status, message)
            if self.cycle is None or self.cycle.response_complete:  # never inside another response
                self.transport.write(error_bytes(status, message, type))
            self.transport.close()

        # -- asyncio.Protocol
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(self._headers_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return  # refused already: nothing more is parsed
            super().data_received(data)
            # Still in a header block after the parser took these bytes: they all count against it.
            if self._in_headers and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > self.max_header_bytes:
                    self._refuse(431, f"request headers over the limit of {self.max_header_bytes} bytes",
                                 "request_header_fields_too_large")

        # -- httptools parser callbacks
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers, self._header_bytes, self._body_pending = True, 0, False
            self._arm(self._headers_too_slow)

        def on_headers_complete(self) -> None:
            self._in_headers, self._body_pending = False, True
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_pending = False
            if self._timer is not None and not self._in_headers:
                self._disarm()
            super().on_message_complete()

        # -- the request/response cycle
        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._body_pending and not self.transport.is_closing():
                # The app answered without reading the whole body; the client may finish sending it
                # (then the connection is reused), but not trickle it for ever.
                self._arm(self._unread_body_too_slow)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments that apply the connection settings.

    Args:
        settings: ``http``, ``max_header_bytes`` and ``header_timeout_s`` are read.

    Returns:
        ``http`` (the protocol class or name) and, for h11, its header size limit.
    """
    if settings.http == "h11" or HttpToolsProtocol is None:
        if settings.http != "h11":  # pragma: no cover - uvicorn without httptools
            log.warning("httptools is not installed: h11 limits headers to %d bytes, with no header timeout",
                        settings.max_header_bytes)
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}
    cls = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
               {"max_header_bytes": settings.max_header_bytes, "header_timeout_s": settings.header_timeout_s})
    return {"http": cls}
