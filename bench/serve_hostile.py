"""Hostile request bodies and files for the embedding service, built in memory: what bench/serve_flood.py
sends and what tests/test_service_flood.py sends scaled down (issue 20's shapes).

Only numpy, PIL and the standard library, so the tests import it as ``bench.serve_hostile``.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def gradient(width: int, height: int) -> np.ndarray:
    """A smooth RGB gradient, uint8 (height, width, 3): a photo's compressibility without a photo."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    planes = [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
              np.broadcast_to((x + y) / 2, (height, width))]
    return np.stack(planes, axis=2).astype(np.uint8)


def jpeg(width: int, height: int, progressive: bool = False, quality: int = 70) -> bytes:
    """A gradient JPEG (libjpeg's default progression: 10 scans when ``progressive``)."""
    buf = io.BytesIO()
    Image.fromarray(gradient(width, height)).save(buf, "JPEG", quality=quality, progressive=progressive)
    return buf.getvalue()


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG: its SOS segment and the entropy-coded data after it."""
    scans, i = [], 2
    while i < len(data) and data[i + 1] != 0xD9:
        length = struct.unpack_from(">H", data, i + 2)[0]
        end = i + 2 + length
        if data[i + 1] == 0xDA:  # the entropy-coded data runs to the next marker (not FF00, not RSTn)
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7:
                    break
                end += 2
            scans.append((i, end))
        i = end
    return scans


def many_scan_jpeg(width: int, height: int, scans: int) -> bytes:
    """A progressive JPEG of ``scans`` scans: its smallest scan repeated before the end (libjpeg warns of
    a bogus progression and decodes every one, each a pass over the whole coefficient buffer).

    The issue's file: ``many_scan_jpeg(4000, 4000, 5000)``, about 190 kB.
    """
    data = jpeg(width, height, progressive=True)
    found = jpeg_scans(data)
    start, end = min(found, key=lambda s: s[1] - s[0])
    eoi = len(data) - 2
    return data[:eoi] + data[start:end] * (scans - len(found)) + data[eoi:]


def tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """An uncompressed 8-bit grey TIFF in ``tile`` x ``tile`` tiles, all pointing at one tile of zeros.

    The issue's file: ``tiled_tiff(1000, 1000, 1)``, a million 1x1 tiles in 6 MB.
    """
    n = -(-width // tile) * -(-height // tile)
    fields = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
              (277, 3, 1, 1), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile)]
    short = tile * tile < 65_536  # byte counts as SHORTs when they fit (the file: 6 MB, not 8)
    ifd_size = 2 + (len(fields) + 2) * 12 + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * n
    data_at = counts_at + (2 if short else 4) * n
    fields += [(324, 4, n, offsets_at if n > 1 else data_at),
               (325, 3 if short else 4, n, counts_at if n > 1 else tile * tile)]
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(fields)))
    for tag, kind, count, value in sorted(fields):
        inline_short = kind == 3 and count == 1
        out += struct.pack("<HHIHH" if inline_short else "<HHII", tag, kind, count,
                           *((value, 0) if inline_short else (value,)))
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{n}I", *([data_at] * n)) + struct.pack(f"<{n}{'H' if short else 'I'}", *([tile * tile] * n))
    return bytes(out + bytes(tile * tile))


def empty_lists_json(n: int) -> bytes:
    """A JSON array of ``n`` empty arrays, 3 bytes each: the issue's 63 MB body is ``n = 21_000_000``."""
    return b"[" + b"[]," * (n - 1) + b"[]]"


def almost_boundaries_multipart(boundary: bytes, size: int) -> bytes:
    """A multipart/form-data body whose one file part is ``size`` bytes of the boundary's delimiter
    followed by a byte that is neither CR nor '-': each is matched whole and then rejected."""
    unit = b"\r\n--" + boundary + b"Q"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    return head + unit * (size // len(unit)) + b"\r\n--" + boundary + b"--\r\n"


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk holding ``data``."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 request line and header block."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def padded_header_block(total: int) -> bytes:
    """A GET /healthz whose header block is ``total`` bytes of 1 KiB X-Pad headers, ready to send in one
    write (the issue's 70-100 KiB block)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    line = b"X-Pad: " + b"a" * (1024 - 9) + b"\r\n"
    return head + line * max(0, (total - len(head)) // len(line)) + b"\r\n"
