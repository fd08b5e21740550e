"""A multipart/form-data body, already read into memory, split into its parts.

The body arrives whole (its size is capped before any parsing), so the parts are cut out of it in the
decode thread, off the event loop, without Starlette's spooled temporary files; every malformed body
becomes a :class:`MultipartError` the handlers turn into a 422.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


class TooManyParts(MultipartError):
    """More parts than the caller allows (HTTP 413)."""


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def parse_form(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Split ``body`` into its parts, in order; refuses more than ``max_parts`` of them."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("multipart/form-data needs a boundary parameter in its Content-Type header")
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    name = bytearray()
    value = bytearray()
    ended = False

    def on_part_begin() -> None:
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(name).lower()] = bytes(value)
        name.clear()
        value.clear()

    def on_headers_finished() -> None:
        if len(parts) >= max_parts:
            raise TooManyParts(f"more than {max_parts} parts")
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise MultipartError(f"part {len(parts)} has no name in its Content-Disposition header")
        filename = opts.get(b"filename")
        ctype = headers.get(b"content-type")
        parts.append(Part(opts[b"name"].decode("utf-8", "replace"),
                          filename.decode("utf-8", "replace") if filename is not None else None,
                          ctype.decode("latin-1") if ctype is not None else None))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_end": on_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError(f"malformed multipart/form-data body ({exc})") from exc
    if not ended:
        raise MultipartError("truncated multipart/form-data body (no closing boundary)")
    return parts
