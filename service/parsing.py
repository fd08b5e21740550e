"""An /v1/embeddings request body -> its options and its images as one uint8 (N, S, S, C) array.

:func:`read_body` caps the body at ``max_request_bytes`` and its read time at ``body_timeout_s`` while it
streams in (on the event loop, where it only awaits). :func:`parse_and_probe` is plain blocking work
(JSON or multipart parsing, base64, reading each image's header) and runs in a thread; it tells what
decoding will cost before anything is decoded. Every client mistake becomes an
:class:`~service.errors.ApiError` or an :class:`~service.imaging.ImageError` with its status.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from pipeline.data.preprocess import InputSpec
from service.errors import ApiError, ClientAborted, describe_validation_errors
from service.imaging import ImageLimits, Probed, RawImage, probe_all
from service.multipart import MultipartError, TooManyParts, parse_form
from service.schemas import EmbeddingRequest, FormOptions

JSON = "json"
MULTIPART = "multipart"
FILE_FIELDS = ("files", "file", "images", "image")  # the multipart field names that carry images
_MAX_TEXT_FIELDS = len(FormOptions.model_fields)


@dataclass
class ParsedRequest:
    items: list[str | RawImage | bytes]
    layer: str
    normalize: bool
    encoding_format: str


def body_kind(content_type: str | None) -> str:
    """``json`` or ``multipart`` from the Content-Type header; anything else is a 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return JSON
    if media == "multipart/form-data":
        return MULTIPART
    got = f"Content-Type {media!r}" if media else "no Content-Type"
    raise ApiError(415, f"{got} is not supported: send application/json or multipart/form-data")


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes, and (408) when it
    has not all arrived within ``timeout_s``: a client that announces 100 bytes and sends 10 does not
    hold a connection and a task for ever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # chunked uploads declare no length: count as they come
                    raise ApiError(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes came)",
                       headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientAborted(f"the client went away after {size} bytes of its body") from None
    return b"".join(chunks)


def _too_many(n: int, limit: int) -> ApiError:
    return ApiError(413, f"too many images: {n} in one request (the limit is {limit}); split it into "
                         "several requests")


def parse_json(body: bytes, max_images: int) -> ParsedRequest:
    if not body.strip():
        raise ApiError(422, "empty body: expected a JSON object {\"images\": [...]}")
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(422, f"malformed JSON body ({exc})") from exc
    # Counted before validation, so a huge list is refused for its size rather than item by item.
    if isinstance(raw, dict) and isinstance(raw.get("images"), list) and len(raw["images"]) > max_images:
        raise _too_many(len(raw["images"]), max_images)
    try:
        req = EmbeddingRequest.model_validate(raw)
    except ValidationError as exc:
        message, index = describe_validation_errors(exc.errors())
        raise ApiError(422, message, index=index) from exc
    items: list[str | RawImage | bytes] = [
        im if isinstance(im, str) else RawImage(im.data, tuple(im.shape), im.dtype) for im in req.images]
    return ParsedRequest(items, req.layer, req.normalize, req.encoding_format)


def parse_multipart(body: bytes, content_type: str, max_images: int) -> ParsedRequest:
    try:
        parts = parse_form(body, content_type, max_parts=max_images + _MAX_TEXT_FIELDS)
    except TooManyParts as exc:
        raise ApiError(413, f"too many parts in the form (at most {max_images} images plus the fields "
                            f"{', '.join(FormOptions.model_fields)})") from exc
    except MultipartError as exc:
        raise ApiError(422, str(exc)) from exc
    files: list[str | RawImage | bytes] = []
    options: dict[str, str] = {}
    for part in parts:
        if part.name in FILE_FIELDS:
            files.append(bytes(part.data))
        elif part.name in FormOptions.model_fields and not part.is_file:
            if part.name in options:
                raise ApiError(422, f"form field {part.name!r} is given more than once")
            options[part.name] = part.data.decode("utf-8", "replace").strip()
        else:
            raise ApiError(422, f"unexpected form field {part.name!r}: send images as file parts named "
                                f"'files' and the options {', '.join(FormOptions.model_fields)} as text fields")
    if not files:
        raise ApiError(422, "no images: send them as file parts named 'files'")
    if len(files) > max_images:
        raise _too_many(len(files), max_images)
    try:
        opts = FormOptions.model_validate(options)
    except ValidationError as exc:
        raise ApiError(422, describe_validation_errors(exc.errors())[0]) from exc
    return ParsedRequest(files, opts.layer, opts.normalize, opts.encoding_format)


def parse_and_probe(body: bytes, kind: str, content_type: str, spec: InputSpec, max_images: int,
                    limits: ImageLimits, max_request_pixels: int) -> tuple[ParsedRequest, list[Probed]]:
    """Blocking: the request's options and its images, headers read and checked but not decoded; a
    request whose images together would decode to more than ``max_request_pixels`` is a 413."""
    parsed = parse_json(body, max_images) if kind == JSON else parse_multipart(body, content_type, max_images)
    probed = probe_all(parsed.items, spec, limits)
    cost = sum(p.cost for p in probed)
    if cost > max_request_pixels:
        raise ApiError(413, f"the request's {len(probed)} images decode to {cost} pixels, over the limit of "
                            f"{max_request_pixels} pixels per request; split it into several requests",
                       type="request_too_large")
    return parsed, probed
