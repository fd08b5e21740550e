"""The HTTP server: uvicorn's options for the service, and the connection limits uvicorn lacks.

By default (``SERVE_HTTP=guarded``) connections are served by :class:`GuardedHttpToolsProtocol`, uvicorn's
httptools protocol with the limits below; README "The embedding service" has the measurements that keep
it (h11's public ``max_incomplete_event_size`` neither bounds a slowly arriving header nor a header block
that arrives whole). Per server:

- at most ``cap`` open connections (below the file-descriptor limit, which :func:`raise_fd_limit` raises
  at start): past it the connection waiting longest for a request's headers is closed to make room, or,
  when every one is busy, the new one gets 503;

and per connection:

- a request's line, headers and trailers together within ``max_header_bytes`` and ``MAX_HEADER_FIELDS``
  fields, counted from the parser's callbacks (exact, however the bytes arrive) and from whole reads that
  stay inside one header block or one body (a header still arriving); past it 431;
- its headers within ``header_timeout_s`` of its first byte (or the connection's); past it 408;
- a body in pieces (reads, or chunks) averaging at least ``MIN_PIECE_BYTES`` once past ``PIECE_GRACE``
  pieces (each piece costs the server a parser callback; one-byte chunks would cost everyone); past it
  400; the pieces of one read reach the app as one;
- at most ``MAX_PIPELINED`` requests queued behind the one being answered: the next is answered 503, in
  order, and the connection closes;
- after a response, a body the app did not read must finish arriving within ``header_timeout_s``.

Refusals are written here as the service's JSON error shape, each logged in one line.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger(__name__)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn without httptools: h11 below
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

# Requests queued behind the one being answered on a connection (HTTP/1.1 pipelining).
MAX_PIPELINED = 32
# Header and trailer fields per request (Apache's LimitRequestFields): each costs a parser callback.
MAX_HEADER_FIELDS = 100
# Reads are parsed this much at a time, so that parsing stops soon after a refusal (httptools parses all it
# is given, calling back for every header, chunk or pipelined request in it).
FEED_BYTES = 16_384
# A body's pieces: after PIECE_GRACE of them, they must average MIN_PIECE_BYTES (a TCP segment holds
# 536 to 1460 bytes; HTTP clients write chunks of kilobytes).
PIECE_GRACE = 1024
MIN_PIECE_BYTES = 256
# Chunk-size lines and their CRLFs, per piece, allowed besides the body's and the headers' bytes.
FRAMING_PER_PIECE = 32
# The shortest request line besides its URL: "GET " + " HTTP/1.1\r\n".
_REQUEST_LINE = 15
# File descriptors kept for everything but client connections (the model's files, the registry's
# database, logs, pipes): at least this, or an eighth of the limit.
FD_RESERVE = 64
_IDLE, _HEAD, _BODY = 0, 1, 2  # waiting for a request, reading its line and headers, its body (and trailers)


def error_bytes(status: int, message: str, type: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer in the service's error shape, closing the connection.

    Args:
        status: the HTTP status.
        message: the error's one sentence.
        type: the error type.
        retry_after: seconds for a ``Retry-After`` header (None: none).

    Returns:
        The status line, headers and JSON body, ready to write.
    """
    body = json.dumps(ApiError(status, type, message).body()).encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{retry}connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (finite; 65,536 when the hard one is not).

    Returns:
        The soft limit now in force (1,024, the common default, where it cannot be read).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65_536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """The open connections a server takes.

    Args:
        max_connections: the setting (``SERVE_MAX_CONNECTIONS``).
        fd_limit: the process's limit on open files.

    Returns:
        ``max_connections``, kept :data:`FD_RESERVE` (or an eighth of ``fd_limit``) below the open-file
        limit, so that a connection past the cap can still be accepted and answered rather than reset by
        the kernel; at least 1.
    """
    return max(1, min(max_connections, fd_limit - max(FD_RESERVE, fd_limit // 8)))


class Connections:
    """One server's open connections, up to ``cap``, and which of them wait for a request's headers.

    A connection waiting for (or still reading) a request's headers has cost the app nothing and may be
    closed to make room, as nginx closes idle keep-alive connections when it runs out; the one waiting
    longest goes first. Only the event loop touches it.

    Args:
        cap: the most open connections (see :func:`connection_cap`).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.live: set[Any] = set()
        self.waiting: collections.OrderedDict[Any, None] = collections.OrderedDict()  # oldest first
        self.refused = self.evicted = 0
        self._reported = (time.monotonic(), 0, 0)

    def admit(self, conn: Any) -> bool:
        """Take a new connection, closing the longest-waiting one when at the cap.

        Returns:
            False when every connection is busy with a request (the caller answers 503).
        """
        while len(self.live) >= self.cap and self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            self.live.discard(oldest)
            self.evicted += 1
            oldest.evict()
        if len(self.live) >= self.cap:
            self.refused += 1
            self._report()
            return False
        self.live.add(conn)
        self.waiting[conn] = None
        self._report()
        return True

    def wait(self, conn: Any) -> None:
        """``conn`` now waits for a request's headers (it may be closed to make room)."""
        if conn in self.live:
            self.waiting[conn] = None
            self.waiting.move_to_end(conn)

    def busy(self, conn: Any) -> None:
        """``conn`` has a request in progress (it is never closed to make room)."""
        self.waiting.pop(conn, None)

    def gone(self, conn: Any) -> None:
        """``conn`` closed."""
        self.live.discard(conn)
        self.waiting.pop(conn, None)

    def _report(self) -> None:
        # One line per 10 s at most, not one per connection: a flood would otherwise flood the log too.
        at, refused, evicted = self._reported
        if (self.refused, self.evicted) != (refused, evicted) and time.monotonic() - at >= 10:
            log.warning("at the cap of %d connections: %d closed while waiting for a request, %d refused "
                        "(503) in the last %.0f s", self.cap, self.evicted - evicted, self.refused - refused,
                        time.monotonic() - at)
            self._reported = (time.monotonic(), self.refused, self.evicted)


@dataclass(frozen=True)
class ConnectionLimits:
    """A connection's limits (see the module's docstring).

    Attributes:
        max_header_bytes: a request's line, headers and trailers together, in bytes.
        header_timeout_s: the time from a request's first byte (or the connection's start) to its headers'
            end, and the time an unread body may take to arrive after the answer.
    """

    max_header_bytes: int = 65_536
    header_timeout_s: float = 10.0


async def _pipeline_full(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI answer to a request queued past :data:`MAX_PIPELINED`: 503, and the connection closes."""
    body = json.dumps(ApiError(503, "too_many_pipelined", f"more than {MAX_PIPELINED} requests were queued "
                                                          "on this connection; send the rest again").body()).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with the service's connection limits (see the module's docstring).

        :func:`uvicorn_options` makes one subclass per server, with its :class:`ConnectionLimits` and
        :class:`Connections`.
        """

        limits = ConnectionLimits()
        registry = Connections(1024)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._phase = _IDLE
            self._messages = 0  # requests begun on this connection
            self._head = 0  # bytes of the request line, headers and trailers, from the parser's callbacks
            self._fields = 0  # header and trailer fields
            self._head_wire = 0  # bytes of whole reads inside this request's header block
            self._body = self._pieces = self._framing = 0  # the body's bytes and pieces; other bytes in it
            self._read_body = 0  # body bytes of the read being parsed
            self._pending: list[bytes] = []  # body pieces of this read, handed on as one
            self._refused = False  # answered by the guard: nothing more is parsed
            self._pipeline_full = False  # a 503 is queued: later requests are dropped
            self._body_pending = False  # headers done, body not all received yet
            self._timer: asyncio.TimerHandle | None = None

        # -- timers
        def _arm(self, handler: Any) -> None:
            self._disarm()
            self._timer = self.loop.call_later(self.limits.header_timeout_s, handler)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_too_slow(self) -> None:
            self._timer = None
            if self._phase != _BODY and not self.transport.is_closing():
                self._refuse(408, f"request headers not received within {self.limits.header_timeout_s:g} s",
                             "request_timeout")

        def _unread_body_too_slow(self) -> None:
            self._timer = None
            if self._body_pending and not self.transport.is_closing():
                log.info("closing %s: the rest of a request body did not arrive within %g s",
                         self._peer(), self.limits.header_timeout_s)
                self.transport.close()

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

        def _refuse(self, status: int, message: str, type: str, retry_after: int | None = None,
                    quiet: bool = False) -> None:
            """Answer ``status`` unless a response has started, and close; nothing more is parsed."""
            (log.debug if quiet else log.info)("refused %s: %d %s", self._peer(), status, message)
            self._refused = True
            self._pending.clear()
            cycle = self.cycle
            # With requests queued, an earlier one may be answering: closing is then the only honest answer.
            if not self.pipeline and (cycle is None or cycle.response_complete or not cycle.response_started):
                self.transport.write(error_bytes(status, message, type, retry_after))
            if cycle is not None and not cycle.response_complete:
                # What uvicorn does when the client goes: the app's receive() says so and its answer is
                # dropped, never written after this one.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

        def evict(self) -> None:
            """Close this connection to make room (see :class:`Connections`)."""
            if self.transport.is_closing():
                return
            if self._phase == _HEAD:
                self._refuse(503, "closed to make room for other connections: the server is at its "
                                  "connection limit", "too_many_connections", 1, quiet=True)
            else:  # nothing sent since the last answer: closed as an idle keep-alive connection is
                self._refused = True
                self.transport.close()

        # -- asyncio.Protocol
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not self.registry.admit(self):
                self._refuse(503, f"the server is at its limit of {self.registry.cap} connections, all "
                                  "busy; retry shortly", "too_many_connections", 1, quiet=True)
                return
            self._arm(self._headers_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self.registry.gone(self)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            view = memoryview(data) if len(data) > FEED_BYTES else None
            for at in range(0, len(data), FEED_BYTES):
                if self._refused or self._pipeline_full or self.transport.is_closing():
                    break  # answered already: nothing more is parsed
                self._feed(data if view is None else view[at:at + FEED_BYTES])  # type: ignore[arg-type]
            self._flush_body()  # the read's body pieces reach the app as one

        def _feed(self, data: bytes) -> None:
            phase, messages = self._phase, self._messages
            self._read_body = 0
            super().data_received(data)
            if self._refused or self.transport.is_closing():
                return
            if (phase, self._phase, self._messages) == (_IDLE, _HEAD, messages + 1):
                # A request began in this read and its headers go on: the whole read is its header block
                # (bar empty lines before its request line).
                self._head_wire = len(data)
                if self._head_wire > self.limits.max_header_bytes:
                    self._over_head("headers")
                return
            if (phase, messages) != (self._phase, self._messages):
                # The read crossed from one request, or one part of it, to another (a request pipelined
                # behind another's body): counted by the callbacks alone.
                return
            if phase == _BODY:  # chunk framing and trailers, still arriving
                self._framing += len(data) - self._read_body
                if self._framing > self.limits.max_header_bytes + FRAMING_PER_PIECE * self._pieces:
                    self._over_head("trailers and chunk framing")
            else:  # a request line or header still arriving, which httptools buffers until it ends
                self._head_wire += len(data)
                if self._head_wire > self.limits.max_header_bytes:
                    self._over_head("headers")

        def _over_head(self, what: str = "headers") -> None:
            self._refuse(431, f"request {what} over the limit of {self.limits.max_header_bytes} bytes",
                         "request_header_fields_too_large")

        def _count_head(self, n: int) -> bool:
            """Add ``n`` header bytes; False (and refused) past the limit."""
            self._head += n
            if self._head > self.limits.max_header_bytes:
                self._over_head("trailers" if self._phase == _BODY else "headers")
                return False
            return True

        def _flush_body(self) -> None:
            if self._pending:
                body = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
                self._pending.clear()
                super().on_body(body)

        # -- httptools parser callbacks
        def on_message_begin(self) -> None:
            if self._refused or self._pipeline_full:
                return
            self._messages += 1
            self._phase, self._head, self._head_wire, self._fields = _HEAD, _REQUEST_LINE, 0, 0
            self._body = self._pieces = self._framing = 0
            self._body_pending = False
            self._arm(self._headers_too_slow)
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            if not (self._refused or self._pipeline_full) and self._count_head(len(url)):
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._refused or self._pipeline_full or not self._count_head(len(name) + len(value) + 3):
                return
            self._fields += 1
            if self._fields > MAX_HEADER_FIELDS:
                what = "header and trailer" if self._phase == _BODY else "header"
                self._refuse(431, f"more than {MAX_HEADER_FIELDS} {what} fields", "request_header_fields_too_large")
                return
            if self._phase != _BODY:  # trailers are counted, never kept (the app has its headers already)
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused or self._pipeline_full or not self._count_head(2):
                return
            self._phase, self._body_pending = _BODY, True
            self._disarm()
            self.registry.busy(self)
            if len(self.pipeline) >= MAX_PIPELINED:
                # Answered in order after the queued ones, then the connection closes.
                self._pipeline_full = True
                app, self.app = self.app, _pipeline_full
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if self._refused or self._pipeline_full:
                return
            self._pieces += 1
            self._body += len(body)
            self._read_body += len(body)
            if self._pieces > PIECE_GRACE and self._body < self._pieces * MIN_PIECE_BYTES:
                self._refuse(400, f"request body arriving in pieces of {self._body // self._pieces} bytes on "
                                  f"average; past {PIECE_GRACE} pieces they must average {MIN_PIECE_BYTES}",
                             "body_too_fragmented")
                return
            self._pending.append(body)

        def on_message_complete(self) -> None:
            if self._refused or self._pipeline_full:
                return
            self._flush_body()
            self._phase, self._body_pending = _IDLE, False
            if self._timer is not None:
                self._disarm()
            super().on_message_complete()

        # -- the request/response cycle
        def on_response_complete(self) -> None:
            queued = bool(self.pipeline)
            super().on_response_complete()
            if queued or self.transport.is_closing():
                return  # the next request starts: its body is its app's to read
            if self._body_pending:
                # The app answered without reading the whole body; the client may finish sending it
                # (then the connection is reused), but not trickle it for ever.
                self._arm(self._unread_body_too_slow)
            elif not self.pipeline:
                self.registry.wait(self)


def uvicorn_options(settings: Settings, fd_limit: int | None = None) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments that apply the connection settings.

    Args:
        settings: ``http``, ``max_header_bytes``, ``header_timeout_s`` and ``max_connections`` are read.
        fd_limit: the process's open-file limit (default: :func:`raise_fd_limit`'s, raising it).

    Returns:
        ``http`` (the protocol class or name) and, for h11, its header size limit.
    """
    if settings.http == "h11" or HttpToolsProtocol is None:
        if settings.http != "h11":  # pragma: no cover - uvicorn without httptools
            log.warning("httptools is not installed: h11 limits headers to %d bytes, with no header timeout",
                        settings.max_header_bytes)
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}
    cap = connection_cap(settings.max_connections, raise_fd_limit() if fd_limit is None else fd_limit)
    limits = ConnectionLimits(settings.max_header_bytes, settings.header_timeout_s)
    cls = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
               {"limits": limits, "registry": Connections(cap)})
    return {"http": cls}
