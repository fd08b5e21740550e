"""An /v1/embeddings request body -> its options and its images as one uint8 (N, S, S, C) array.

:func:`read_body` caps the body at ``max_request_bytes`` while it streams in (on the event loop, where
it only awaits). :func:`parse_and_decode` is plain blocking work (JSON or multipart parsing, base64,
image decoding and resizing) and runs in the decode thread pool. Every client mistake becomes an
:class:`~service.errors.ApiError` or an :class:`~service.imaging.ImageError` with its status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from starlette.requests import Request

from pipeline.data.preprocess import InputSpec
from service.errors import ApiError, describe_validation_errors
from service.imaging import ImageLimits, RawImage, decode_all
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads declare no length: count as they come
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
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


def parse_and_decode(body: bytes, kind: str, content_type: str, spec: InputSpec, max_images: int,
                     limits: ImageLimits) -> tuple[ParsedRequest, np.ndarray]:
    """Blocking: the request's options and its images, decoded and fitted to ``spec``."""
    parsed = parse_json(body, max_images) if kind == JSON else parse_multipart(body, content_type, max_images)
    return parsed, decode_all(parsed.items, spec, limits)
