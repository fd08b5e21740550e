"""A ``POST /v1/embeddings`` body -> its options and its images as uint8 (N, S, S, C), every cost bounded
before it is paid.

1. :func:`read_body`: the body, capped in bytes and in time while it streams in (on the event loop), and
   held against the bytes all bodies in flight may take (a :class:`Budget`);
2. :func:`parse_request`: JSON (``images`` or OpenAI's ``input``; its structure counted before it is
   parsed) or multipart/form-data (its parts bounded as they are cut) -> the items;
3. :func:`probe_items`: base64 and each image's header (:func:`pipeline.data.decode.open_image`): what
   decoding will cost, in pixels, known and checked before a pixel exists;
4. a :class:`Budget` of the pixels all requests in flight may be decoding (past it: 429);
5. :func:`decode_items`: the shared decoder, then :func:`pipeline.data.preprocess.fit_image`.

:class:`RequestDecoder` runs 2 to 5 for the route: small requests on the event loop (a thread hop costs
more than their work), and so is a request alone in the service while its steps are bounded (nobody waits
behind the loop); cheap ones in the cheap threads, costly ones (big bodies, costly images) in the costly
threads, which run at a lower CPU priority: a flood of costly work never queues in front of small requests
nor takes the cores from them. Every client mistake is an :class:`ApiError`.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import math
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
import pybase64
from prometheus_client import Gauge
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from pipeline.data.decode import DecodeError, DecodeLimits, ImageTooLarge, Opened, decode_opened, open_image
from pipeline.data.preprocess import InputSpec, fit_image
from service.errors import ApiError, describe_validation_errors
from service.schemas import EmbeddingForm, EmbeddingRequest, RawArray

JSON = "json"
MULTIPART = "multipart"
FILE_FIELDS = ("files", "file", "images", "image")  # the multipart field names that carry images
_FORM_FIELDS = tuple(f for f in EmbeddingForm.model_fields if f != "files")
_WHITESPACE = str.maketrans("", "", " \t\r\n")
_URLSAFE = str.maketrans("-_", "+/")
# Work done on the event loop instead of a thread: a body this small, decoding to this few pixels,
# costs less than the two thread hops it would take (bench/serve.py's 1-client figures).
INLINE_BODY_BYTES = 16_384
INLINE_PIXELS = 16_384
# A request alone in the service (no other in flight) is parsed on the event loop up to this body size and
# decoded there up to this work (decoded pixels plus encoded bytes, each about 10 ns: some 5 ms): each
# thread hop wakes an idle core, which cost a 427x640 photo 0.8-1.7 ms of its 6.6-7.6 ms at 1 client on
# 2 cores (README, "The embedding service"), and a request that arrives meanwhile waits at most that long.
ALONE_BODY_BYTES = 1 << 20
ALONE_DECODE_WORK = 1 << 19
# A body up to this size is parsed in the cheap threads; a bigger one in the costly threads.
CHEAP_BODY_BYTES = 1 << 20
# The costly threads' niceness (Linux applies it per thread): they take the cores the event loop and the
# cheap threads leave.
COSTLY_NICE = 10
# A form's text fields (layer, normalize, encoding_format, model) are a few words each.
MAX_FIELD_BYTES = 4096
# A multipart body is cut in slices of this size, so a part over its limit stops being read there.
MULTIPART_SLICE = 1 << 20
# Bodies are counted (brackets, delimiters) this much at a time; from VECTOR_COUNT_BYTES on, by numpy.
COUNT_SLICE = 1 << 20
VECTOR_COUNT_BYTES = 16_384

T = TypeVar("T")
Buffer = bytes | bytearray  # a body: bytearray when it came in several pieces


@dataclass
class ParsedRequest:
    """A request's images (not yet decoded) and options."""

    items: list[str | RawArray | bytes]  # base64 text, a raw array, or an uploaded file's bytes
    layer: str
    normalize: bool
    encoding_format: str
    model: str | None
    openai: bool  # sent in OpenAI's shape (``input``): answered in it


@dataclass
class Probed:
    """One image whose header is read and checked: an opened file or a raw array."""

    index: int
    cost: int  # pixels that decoding materialises
    opened: Opened | None = None
    array: np.ndarray | None = None
    size: int = 0  # encoded bytes

    @property
    def work(self) -> int:
        """What decoding costs in time, in pixel-equivalents (see :data:`ALONE_DECODE_WORK`)."""
        return self.cost + self.size


# ---------------------------------------------------------------------------------------------- body

def body_kind(content_type: str | None) -> str:
    """``json`` or ``multipart`` from the Content-Type header.

    Raises:
        ApiError: 415 for any other media type, before a byte of the body is read.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return JSON
    if media == "multipart/form-data":
        return MULTIPART
    got = f"Content-Type {media!r}" if media else "no Content-Type"
    raise ApiError(415, None, f"{got} is not supported: send application/json or multipart/form-data")


async def read_body(request: Request, limit: int, timeout_s: float | None = None,
                    held: Held | None = None) -> Buffer:
    """The whole body, refused as soon as it is known to exceed ``limit`` bytes or to be late.

    Args:
        request: the request whose body is read.
        limit: the most bytes it may have.
        timeout_s: the time it may take to arrive.
        held: where its bytes are held against the bytes all bodies in flight may take (declared lengths
            before a byte is read, a chunked body as it grows).

    Raises:
        ApiError: 413 past ``limit`` (from Content-Length, or while a chunked body streams); 429 when the
            bodies in flight leave no room for it (``held``); 408 when it has not all arrived within
            ``timeout_s`` (a client that announces 100 bytes and sends 10 does not hold a connection and a
            task for ever); 499 when the client left first. A refusal before the body's end closes the
            connection, so that the rest is never read.
    """
    close = {"Connection": "close"}
    header = request.headers.get("content-length")
    declared = int(header) if header is not None and header.isascii() and header.isdigit() else None
    if declared is not None:
        if declared > limit:
            raise ApiError(413, None, f"request body of {declared} bytes is over the limit of {limit} bytes",
                           headers=close)
        if held is not None:
            _grow(held, declared)
    # Appended in place (a big bytearray grows by remapping its pages): one copy of the body, never a
    # list of pieces and their join, which would hold the event loop for a copy of all of it.
    first, body, size = b"", bytearray(), 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if not first:
                    first = chunk
                else:
                    if not body:
                        body += first
                    body += chunk
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, None, f"request body over the limit of {limit} bytes", headers=close)
                if held is not None and size > held.amount:  # chunked: held in doubling steps
                    _grow(held, max(size, min(2 * held.amount, limit)))
    except TimeoutError:
        raise ApiError(408, None, f"request body not received within {timeout_s:g} s", headers=close) from None
    except ClientDisconnect:
        raise ApiError(499, None, f"the client went away after {size} bytes of its body") from None
    return body if body else first


def _grow(held: Held, amount: int) -> None:
    try:
        held.grow(amount)
    except ApiError as exc:
        exc.headers["Connection"] = "close"
        raise


# ------------------------------------------------------------------------------------------- parsing

def _too_many(n: int, limit: int) -> ApiError:
    return ApiError(413, None, f"too many images: {n} in one request (the limit is {limit}); split it into "
                               "several requests")


def parse_json(body: Buffer, max_images: int) -> ParsedRequest:
    """A JSON body -> its items and options; ``images`` and OpenAI's ``input`` are both accepted."""
    if not body or body.isspace():  # isspace stops at the first other byte; strip() would copy the body
        raise ApiError(422, None, "empty body: expected a JSON object {\"images\": [...]} or {\"input\": [...]}")
    check_json_structure(body, max_images)
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(422, None, f"malformed JSON body ({exc})") from exc
    # Counted before validation, so a huge list is refused for its size rather than item by item.
    if isinstance(raw, dict):
        for key in ("images", "input"):
            if isinstance(raw.get(key), list) and len(raw[key]) > max_images:
                raise _too_many(len(raw[key]), max_images)
    try:
        req = EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        message, index = describe_validation_errors(exc.errors())
        raise ApiError(422, None, message, index=index) from exc
    return ParsedRequest(list(req.items), req.layer, req.normalize, req.encoding_format, req.model,
                         openai=req.input is not None)


def count_upto(data: Buffer, needles: tuple[bytes, ...], most: int) -> int:
    """How often ``needles`` occur in ``data``, a slice of :data:`COUNT_SLICE` bytes at a time (the GIL is
    free between slices), stopping once past ``most`` (an absurd body is refused after its first slice).

    Args:
        data: the body.
        needles: what to count (each occurrence of each).
        most: the count past which counting stops.

    Returns:
        The count: exact when at most ``most``, otherwise some number above it.
    """
    n, total = len(data), 0
    # A vectorised comparison for 1-byte needles in a big body: bytes.count goes a byte at a time, 3.5x
    # slower (a photo's 262 kB JSON body: 0.34 ms for the three needles, this 0.09 ms); below
    # VECTOR_COUNT_BYTES numpy's fixed cost is the larger (a 200-byte body: 5 us by bytes.count, 17 us).
    view = np.frombuffer(data, dtype=np.uint8) if n >= VECTOR_COUNT_BYTES else None
    for start in range(0, n, COUNT_SLICE):
        for needle in needles:  # an occurrence is counted in the slice it starts in
            if view is not None and len(needle) == 1:
                total += int(np.count_nonzero(view[start:start + COUNT_SLICE] == needle[0]))
            else:
                total += data.count(needle, start, min(n, start + COUNT_SLICE + len(needle) - 1))
        if total > most:
            break
    return total


def check_json_structure(body: Buffer, max_images: int) -> None:
    """Refuse a JSON body whose arrays, objects or commas the schema has no room for, before parsing it.

    A request is an object holding a list and, per image, at most a raw array's object and its shape:
    past ``4 * max_images + 16`` brackets or ``8 * max_images + 32`` commas (counted anywhere, strings
    included: an upper bound on what parsing builds) the body is structure, not images. Parsing such
    structure costs a microsecond and tens of bytes a value, with the GIL held: 21 million ``[]`` froze
    the process for 14.5 s. Counting costs a pass over the bytes in C (:func:`count_upto`).

    Args:
        body: the JSON body.
        max_images: the images a request may hold.

    Raises:
        ApiError: 413, naming the count that is over.
    """
    most_containers, most_commas = 4 * max_images + 16, 8 * max_images + 32
    for needles, most, what in (((b"[", b"{"), most_containers, "arrays or objects"), ((b",",), most_commas, "commas")):
        if count_upto(body, needles, most) > most:
            raise ApiError(413, None, f"the JSON body holds more than {most} {what}: a request of at most "
                                      f"{max_images} images holds at most {most}")


def parse_multipart(body: Buffer, content_type: str, max_images: int, max_file_bytes: int) -> ParsedRequest:
    """A multipart/form-data body -> its file parts (the images) and its text fields (the options)."""
    files: list[str | RawArray | bytes] = []
    options: dict[str, str] = {}
    for name, is_file, data in _form_parts(body, content_type, max_images + len(_FORM_FIELDS), max_file_bytes):
        if name in FILE_FIELDS:
            files.append(bytes(data))
        elif name in _FORM_FIELDS and not is_file:
            if name in options:
                raise ApiError(422, None, f"form field {name!r} is given more than once")
            options[name] = data.decode("utf-8", "replace").strip()
        else:
            raise ApiError(422, None, f"unexpected form field {name!r}: send images as file parts named "
                                      f"'files' and the options {', '.join(_FORM_FIELDS)} as text fields")
    if not files:
        raise ApiError(422, None, "no images: send them as file parts named 'files'")
    if len(files) > max_images:
        raise _too_many(len(files), max_images)
    try:
        form = EmbeddingForm.model_validate(options)
    except ValidationError as exc:
        raise ApiError(422, None, describe_validation_errors(exc.errors())[0]) from exc
    return ParsedRequest(files, form.layer, form.normalize, form.encoding_format, form.model, openai=False)


def _form_parts(body: Buffer, content_type: str, max_parts: int,
                max_file_bytes: int) -> list[tuple[str, bool, bytearray]]:
    """(name, is a file, data) of each part, in order, cut out of a body already in memory (no spooled
    temporary files); a file part stops at ``max_file_bytes``, a text field at :data:`MAX_FIELD_BYTES`."""
    try:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
    except ValueError as exc:  # python-multipart's own option parsing refused the header
        raise ApiError(422, None, f"malformed multipart/form-data Content-Type ({exc})") from exc
    if not boundary:
        raise ApiError(422, None, "multipart/form-data needs a boundary parameter in its Content-Type header")
    # Every part but the first starts with the delimiter, and the form ends with one: more of them is more
    # parts than a request holds, or a part that contains its boundary (which RFC 2046 forbids), each of
    # which python-multipart matches byte by byte (8 s for 60 MB of them).
    if count_upto(body, (b"\r\n--" + boundary,), max_parts + 1) > max_parts + 1:
        raise ApiError(413, None, f"the body holds its boundary more than {max_parts + 1} times: a form has at "
                                  f"most {max_parts - len(_FORM_FIELDS)} images plus the fields "
                                  f"{', '.join(_FORM_FIELDS)}, and no part may contain its boundary")
    parts: list[tuple[str, bool, bytearray]] = []
    files = 0
    headers: dict[bytes, bytes] = {}
    name, value = bytearray(), bytearray()
    ended = False

    def on_header_end() -> None:
        headers[bytes(name).lower()] = bytes(value)
        name.clear()
        value.clear()

    def on_headers_finished() -> None:
        nonlocal files
        if len(parts) >= max_parts:
            raise ApiError(413, None, f"too many parts in the form (at most {max_parts - len(_FORM_FIELDS)} "
                                      f"images plus the fields {', '.join(_FORM_FIELDS)})")
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise ApiError(422, None, f"part {len(parts)} has no name in its Content-Disposition header")
        part_name = opts[b"name"].decode("utf-8", "replace")
        files += part_name in FILE_FIELDS
        parts.append((part_name, b"filename" in opts, bytearray()))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part_name, _, kept = parts[-1]
        kept.extend(data[start:end])
        if part_name in FILE_FIELDS and len(kept) > max_file_bytes:
            raise ApiError(413, "image_too_large", f"image {files - 1}: larger than the limit of "
                                                   f"{max_file_bytes} bytes", index=files - 1)
        if part_name not in FILE_FIELDS and len(kept) > MAX_FIELD_BYTES:
            raise ApiError(413, None, f"form field {part_name[:64]!r} is over {MAX_FIELD_BYTES} bytes")

    def on_end() -> None:
        nonlocal ended
        ended = True

    callbacks: dict[str, Callable[..., None]] = {
        "on_header_field": lambda data, start, end: name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_end": on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        for at in range(0, len(body), MULTIPART_SLICE):  # a part over its limit stops being read there
            parser.write(bytes(body[at:at + MULTIPART_SLICE]))
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise ApiError(422, None, f"malformed multipart/form-data body ({exc})") from exc
    if not ended:
        raise ApiError(422, None, "truncated multipart/form-data body (no closing boundary)")
    return parts


def parse_request(body: Buffer, kind: str, content_type: str, max_images: int,
                  max_file_bytes: int) -> ParsedRequest:
    """Either parser, by the body's kind (:func:`body_kind`); ``max_file_bytes`` bounds each uploaded
    file."""
    if kind == JSON:
        return parse_json(body, max_images)
    return parse_multipart(body, content_type, max_images, max_file_bytes)


# -------------------------------------------------------------------------------------------- images

def _image_error(index: int, exc: DecodeError) -> ApiError:
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "image_too_large", f"image {index}: {exc}", index=index)
    return ApiError(422, "invalid_image", f"image {index}: {exc}", index=index)


def decode_base64(text: str, index: int, max_bytes: int) -> bytes:
    """Standard or URL-safe base64 (a ``data:...;base64,`` prefix and MIME line breaks are fine) -> bytes,
    its size checked before it is decoded."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ApiError(422, "invalid_image", f"image {index}: data URL without a ',' before its payload",
                           index=index)
    if any(c in text for c in " \t\r\n"):  # MIME base64 wraps lines; validate=True would refuse them
        text = text.translate(_WHITESPACE)
    # Every 4 base64 characters carry 3 bytes: refuse an oversized payload before decoding it.
    if len(text) // 4 * 3 > max_bytes + 3:
        raise ApiError(413, "image_too_large", f"image {index}: larger than the limit of {max_bytes} bytes",
                       index=index)
    if "-" in text or "_" in text:  # URL-safe: the standard alphabet first
        text = text.translate(_URLSAFE)
    try:
        # pybase64: SIMD, validated (the standard library takes 1 ms for a 130 kB photo, this 30 us)
        data = pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "invalid_image", f"image {index}: not valid base64 ({exc})", index=index) from exc
    if not data:
        raise ApiError(422, "invalid_image", f"image {index}: empty", index=index)
    return data


def _probe_raw(raw: RawArray, index: int, limits: DecodeLimits) -> Probed:
    shape = tuple(raw.shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ApiError(422, "invalid_image", f"image {index}: shape must be [H, W] or [H, W, C] with positive "
                                             f"sides, got {list(shape)}", index=index)
    if len(shape) == 3 and shape[2] not in (1, 2, 3, 4):
        raise ApiError(422, "invalid_image", f"image {index}: channel count must be 1, 2, 3 or 4, got "
                                             f"{shape[2]}", index=index)
    pixels = shape[0] * shape[1]
    if pixels > limits.decode_pixels:
        raise ApiError(413, "image_too_large", f"image {index}: a raw array of {shape[1]}x{shape[0]} pixels is "
                                               f"over the limit of {limits.decode_pixels} pixels", index=index)
    data = decode_base64(raw.data, index, limits.max_bytes)
    expected = math.prod(shape)
    if len(data) != expected:
        raise ApiError(422, "invalid_image", f"image {index}: {len(data)} bytes do not match shape "
                                             f"{list(shape)} ({expected} bytes)", index=index)
    return Probed(index, pixels, array=np.frombuffer(data, dtype=np.uint8).reshape(shape))


def probe_items(items: list[str | RawArray | bytes], spec: InputSpec, limits: DecodeLimits) -> list[Probed]:
    """Every image's header, read and checked, in order (nothing is decoded yet).

    Args:
        items: base64 text (a data URL is fine), raw arrays, or uploaded files' bytes.
        spec: the model's input: a JPEG is set to decode at the smallest scale that covers its side.
        limits: bytes and pixel bounds per image.

    Returns:
        One :class:`Probed` per item, with what decoding it will cost.

    Raises:
        ApiError: 422 / 413 for the first bad image, with its index.
    """
    probed = []
    for i, item in enumerate(items):
        if isinstance(item, RawArray):
            probed.append(_probe_raw(item, i, limits))
            continue
        data = item if isinstance(item, bytes) else decode_base64(item, i, limits.max_bytes)
        try:
            opened = open_image(data, spec.image_size, limits)
        except DecodeError as exc:
            raise _image_error(i, exc) from exc
        probed.append(Probed(i, opened.cost, opened=opened, size=len(data)))
    return probed


def decode_items(probed: list[Probed], spec: InputSpec) -> np.ndarray:
    """Decode probed images in order -> uint8 (N, S, S, C) for ``spec``; the first bad one raises."""
    out = np.empty((len(probed), spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
    for p in probed:
        try:
            raw = p.array if p.array is not None else decode_opened(p.opened)  # type: ignore[arg-type]
            out[p.index] = fit_image(raw, spec)
        except DecodeError as exc:
            raise _image_error(p.index, exc) from exc
        except ValueError as exc:  # fit_image: a shape it cannot take
            raise ApiError(422, "invalid_image", f"image {p.index}: {exc}", index=p.index) from exc
    return out


# ------------------------------------------------------------------------------------------ budgets

class Budget:
    """How much of something (decoded pixels, body bytes) all requests in flight may hold at once.

    A costly request (holding more than ``cheap``) takes its whole amount from ``limit`` and gives it back
    when its ``with`` ends; one that does not fit beside the other costly ones is refused at once (429, like
    a full batch queue) rather than queued behind work that may take seconds. A costly request alone always
    fits (each request is bounded on its own elsewhere). A cheap one is never refused here: its own limits
    and the connection cap bound what cheap ones hold together. Only touched from the event loop, so plain
    counters need no lock.

    Args:
        limit: what costly requests in flight may hold together.
        cheap: an amount up to which a request counts as cheap.
        unit: what is counted, for messages ("pixels", "bytes").
        doing: what holding it means, for messages ("being decoded").
        refusal: the 429's error type.
        gauge: where the amount in flight is shown (read when /metrics is scraped, not written per request).
    """

    def __init__(self, limit: int, cheap: int, unit: str, doing: str, refusal: str,
                 gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.cheap = cheap
        self.unit, self.doing, self.refusal = unit, doing, refusal
        self.costly_in_flight = 0  # what the limit bounds
        self.in_flight = 0  # all, for the gauge
        if gauge is not None:  # prometheus_client's Gauge.set takes a lock: a write per request costs more
            gauge.set_function(lambda: self.in_flight)

    def is_cheap(self, amount: int) -> bool:
        """Whether a request holding ``amount`` is cheap (never refused here)."""
        return amount <= self.cheap

    @contextlib.contextmanager
    def hold(self, amount: int = 0) -> Iterator[Held]:
        """Hold ``amount`` (more with :meth:`Held.grow`) for the body of the ``with``.

        Raises:
            ApiError: 429 at once when costly requests in flight leave no room.
        """
        held = Held(self)
        try:
            held.grow(amount)
            yield held
        finally:
            self._add(-held.amount, -held.costly)

    def _add(self, amount: int, costly: int) -> None:
        self.in_flight += amount
        self.costly_in_flight += costly


class Held:
    """What one request holds of a :class:`Budget` (made by :meth:`Budget.hold`).

    Args:
        budget: the budget it is held from.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.amount = 0
        self.costly = 0

    def grow(self, amount: int) -> None:
        """Hold ``amount`` in all (never less than already held).

        Args:
            amount: what this request holds from now on.

        Raises:
            ApiError: 429 (``Retry-After: 1``) when it becomes costly and does not fit beside the others.
        """
        b = self.budget
        amount = max(amount, self.amount)
        costly = 0 if b.is_cheap(amount) else amount
        others = b.costly_in_flight - self.costly
        if costly > self.costly and others and others + costly > b.limit:
            raise ApiError(429, b.refusal, f"{others} {b.unit} are {b.doing} by other requests and this one "
                                           f"needs {amount} (limit {b.limit}); retry later", 1)
        b._add(amount - self.amount, costly - self.costly)
        self.amount, self.costly = amount, costly


def _lower_priority() -> None:
    """Run the calling thread at :data:`COSTLY_NICE` (Linux: niceness is per thread)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COSTLY_NICE)


# ---------------------------------------------------------------------------------------- the pipeline

@dataclass
class Decoded:
    """A decoded request: its options, its images as uint8 (N, S, S, C), and their decode cost."""

    parsed: ParsedRequest
    images: np.ndarray
    cost: int


class RequestDecoder:
    """Steps 2 to 5 for the route, each where it costs least (see the module's docstring).

    Args:
        max_images: images per request.
        limits: bytes and pixel bounds per image.
        max_request_pixels: decoded pixels per request (past it: 413).
        budget: the pixels all requests in flight may decode.
        workers: threads in each of the two pools (cheap and costly work).
    """

    def __init__(self, max_images: int, limits: DecodeLimits, max_request_pixels: int, budget: Budget,
                 workers: int) -> None:
        self.max_images = max_images
        self.limits = limits
        self.max_request_pixels = max_request_pixels
        self.budget = budget
        self.cheap_pool = ThreadPoolExecutor(workers, thread_name_prefix="cheap")
        self.costly_pool = ThreadPoolExecutor(workers, thread_name_prefix="costly", initializer=_lower_priority)

    def close(self) -> None:
        """Stop both pools (work not started is dropped)."""
        for pool in (self.cheap_pool, self.costly_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def parse_and_probe(self, body: Buffer, kind: str, content_type: str, spec: InputSpec,
                        check: Callable[[ParsedRequest], None]) -> tuple[ParsedRequest, list[Probed]]:
        """Blocking: the options (``check`` raises for a request to refuse before its images are read)
        and every image's header; a request over the per-request decode budget is a 413."""
        parsed = parse_request(body, kind, content_type, self.max_images, self.limits.max_bytes)
        check(parsed)
        probed = probe_items(parsed.items, spec, self.limits)
        cost = sum(p.cost for p in probed)
        if cost > self.max_request_pixels:
            raise ApiError(413, "request_too_large", f"the request's {len(probed)} images decode to {cost} "
                                                     f"pixels, over the limit of {self.max_request_pixels} "
                                                     "pixels per request; split it into several requests")
        return parsed, probed

    async def decode(self, body: Buffer, kind: str, content_type: str, spec: InputSpec,
                     check: Callable[[ParsedRequest], None], before_decoding: Callable[[int], None],
                     alone: Callable[[], Awaitable[bool]] | None = None) -> Decoded:
        """The request's options and images as uint8 (N, S, S, C) for ``spec``.

        Args:
            body: the whole body (:func:`read_body`).
            kind: :func:`body_kind` of ``content_type``.
            content_type: the Content-Type header (the multipart boundary).
            spec: the model's input.
            check: called with the parsed request before its images are read (it may raise).
            before_decoding: called with the image count once the headers are checked, before any pixel
                is decoded (the batch queue refuses a full queue there).
            alone: ``await alone()`` says whether this is the only request in flight (asked before each
                step): its steps then run on the event loop up to :data:`ALONE_BODY_BYTES` and
                :data:`ALONE_DECODE_WORK` (None: never).

        Raises:
            ApiError: every client mistake and every bound, with its status.
        """
        small = len(body) <= INLINE_BODY_BYTES
        if small or (alone is not None and len(body) <= ALONE_BODY_BYTES and await alone()):
            parsed, probed = self.parse_and_probe(body, kind, content_type, spec, check)
        else:  # parsing costs about what the body weighs
            pool = self.cheap_pool if len(body) <= CHEAP_BODY_BYTES else self.costly_pool
            parsed, probed = await _run(pool, self.parse_and_probe, body, kind, content_type, spec, check)
        del body  # the probed images hold what they need
        cost = sum(p.cost for p in probed)
        before_decoding(len(probed))
        with self.budget.hold(cost):
            if (small and cost <= INLINE_PIXELS) or (
                    alone is not None and sum(p.work for p in probed) <= ALONE_DECODE_WORK and await alone()):
                images = decode_items(probed, spec)
            else:
                pool = self.cheap_pool if self.budget.is_cheap(cost) else self.costly_pool
                images = await _run(pool, decode_items, probed, spec)
        return Decoded(parsed, images, cost)


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
