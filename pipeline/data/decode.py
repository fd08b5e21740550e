"""THE image decoder: an encoded image file -> a uint8 array, the same for prepare, the service and
batch embedding (README "The embedding service" lists the formats and the rules).

Decoding is in two steps so that its cost is known before it is paid: :func:`open_image` reads the
header only (size, mode, what decoding will cost) and :func:`decode_opened` decodes. Under
:class:`DecodeLimits` (untrusted input) each format's hidden work is counted from its header too: a
multi-scan JPEG's scans, a TIFF's strips or tiles; formats that decode while opening or hold other
images are not read.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.errors import one_line

# Raster formats PIL decodes by itself. Never the PostScript family (PIL hands EPS to Ghostscript), nor
# formats that need an external program.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO", "DIB")
# Those read under limits. Not ICO: PIL decodes an icon's inner PNG or BMP, of any size, while opening it.
LIMITED_FORMATS = tuple(f for f in FORMATS if f != "ICO")
# Under limits, decode work is counted in pixel-equivalents: the time PIL takes to decode one pixel of a
# PNG (9 ns here; `python bench/serve_flood.py --decode-costs` measures the figures below, README "The
# embedding service" has them).
# A JPEG of several scans (progressive, or one scan per component) buffers its coefficients at full size
# whatever the output scale, passes over them once per scan, and decodes its entropy-coded bytes at 45 to
# 55 ns a byte: it costs the larger of its full width x height per JPEG_SCANS_PER_PASS scans (at least
# once: a progressive JPEG has about 10) and JPEG_SCAN_BYTE_COST per byte; past JPEG_MAX_SCANS (libtiff's
# limit for JPEG in TIFF) it is refused. A baseline JPEG (one scan) costs what it decodes at its reduced
# scale: its bytes (10 ns each) are bounded by the file size limit.
JPEG_SCANS_PER_PASS = 10
JPEG_MAX_SCANS = 100
JPEG_SCAN_BYTE_COST = 5
_JPEG_CODINGS = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless",
                 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical", 0xC9: "arithmetic",
                 0xCA: "arithmetic", 0xCB: "arithmetic", 0xCD: "hierarchical arithmetic",
                 0xCE: "hierarchical arithmetic", 0xCF: "hierarchical arithmetic"}
_JPEG_READ = frozenset({0xC0, 0xC1, 0xC2})  # Huffman-coded, sequential or progressive: what cameras write
# PIL lists a TIFF's strips or tiles while opening it, then decodes them one by one, about 10 us each: a
# TIFF costs at least TIFF_UNIT_COST per strip or tile, so one in strips or tiles of some kilobytes costs
# its pixels and a million 1x1 tiles cost a billion.
TIFF_UNIT_COST = 1024
# TIFF compressions read under limits (none, CCITT fax, LZW, Deflate, PackBits). JPEG, JPEG 2000, WebP
# and JPEG XL compressions hold images of another format inside, so they are not read.
TIFF_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, 8, 32773, 32946})
_TIFF_HOLDS = {6: "old-style JPEG", 7: "JPEG", 34712: "JPEG 2000", 50001: "WebP", 50002: "JPEG XL"}
# Modes decoded to one grey channel; every other mode becomes RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# An image is box-reduced (Image.reduce) only while its short side stays at least this many times the
# target side: the antialiased resize that follows then sees nearly what it would have seen at full size.
REDUCE_MARGIN = 4
# EXIF orientation (tag 0x0112) -> the transpose that shows the picture as a viewer does.
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_ORIENTATION_TAG = 0x0112
# What PIL raises for unreadable, truncated or hostile files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error, IndexError, KeyError)

# PIL warns (and past twice its own limit raises) on huge images; callers set their own, lower, limits,
# checked right after the header is read. A module-level filter, because catch_warnings() is not
# thread-safe and decoding runs in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class DecodeError(ValueError):
    """A file that cannot be decoded: not an image of :data:`FORMATS`, corrupt or truncated."""


class ImageTooLarge(DecodeError):
    """A file over a :class:`DecodeLimits` bound (bytes, header pixels or decoded pixels)."""


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked before a pixel is decoded.

    Attributes:
        max_bytes: the encoded file's size.
        max_pixels: the pixels (width x height) its header may claim.
        max_decode_pixels: the pixels decoding may materialise, after a JPEG's reduced-scale decoding
            (None: ``max_pixels``).
    """

    max_bytes: int
    max_pixels: int
    max_decode_pixels: int | None = None

    @property
    def decode_pixels(self) -> int:
        """The bound on decoded pixels per image."""
        return self.max_decode_pixels if self.max_decode_pixels is not None else self.max_pixels


@dataclass
class Opened:
    """An image whose header is read and checked, not yet decoded.

    Attributes:
        image: the opened PIL image (its JPEG draft scale already set).
        cost: what decoding costs, in pixels: those it materialises (after a JPEG's reduced-scale
            decoding), and under limits each format's hidden work in pixel-equivalents (see
            :data:`JPEG_SCANS_PER_PASS`, :data:`TIFF_UNIT_COST`).
        target: the side the caller will resize to (None: no resize, so no reduced decoding).
    """

    image: Image.Image
    cost: int
    target: int | None


def is_grey(mode: str) -> bool:
    """Whether a PIL mode decodes to one grey channel (otherwise to RGB)."""
    return mode in GREY_MODES


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the picture: swapped when its EXIF orientation turns it."""
    w, h = image.size
    try:
        turned = image.getexif().get(_ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    except _PIL_ERRORS:  # a broken EXIF block is ignored, as viewers do
        turned = False
    return (h, w) if turned else (w, h)


def open_image(source: bytes | str | Path, target: int | None = None,
               limits: DecodeLimits | None = None) -> Opened:
    """Read an image's header (no pixel is decoded) and check it against ``limits``.

    With a ``target`` side, a JPEG is set to decode at the smallest of libjpeg's 1/1, 1/2, 1/4, 1/8
    scales whose both sides still cover it (``Image.draft``): a 12-megapixel photo for a 64-pixel
    model never exists at full size.

    With ``limits`` (untrusted input), only :data:`LIMITED_FORMATS` are read and each format's hidden
    work is counted before PIL pays it: a TIFF's layout is read before PIL lists its strips or tiles
    (only :data:`TIFF_COMPRESSIONS`), a JPEG's coding and scans from its markers (only
    baseline, extended and progressive Huffman coding; at most :data:`JPEG_MAX_SCANS` scans).

    Args:
        source: the encoded file's bytes, or its path.
        target: the square side the image will be resized to, or None when it is kept at its size.
        limits: bytes and pixel bounds (None: only PIL's own decompression-bomb limit).

    Returns:
        The opened image and what decoding it will cost, in pixels.

    Raises:
        ImageTooLarge: over a bound of ``limits`` (or PIL's own).
        DecodeError: not an image of :data:`FORMATS` (:data:`LIMITED_FORMATS` under limits), a coding
            not read under limits, or a corrupt header.
    """
    if limits is not None:
        source = _read_within(source, limits.max_bytes)
    if isinstance(source, bytes) and not source:
        raise DecodeError("empty")
    formats = FORMATS if limits is None else LIMITED_FORMATS
    extra = 0  # work besides the decoded pixels
    try:
        if limits is not None and isinstance(source, bytes) and source[:4] in _TIFF_MAGIC:
            extra = _check_tiff_layout(source, limits)  # before PIL lists the strips or tiles
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats)
        w, h = image.size
        if limits is not None and w * h > limits.max_pixels:
            raise ImageTooLarge(_over_pixels(w, h, limits))
        if w < 1 or h < 1:
            raise DecodeError(f"empty image ({w}x{h})")
        if target is not None and image.format in ("JPEG", "MPO"):  # MPO: a JPEG holding more images
            image.draft(None, (target, target))
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"over PIL's pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not an image in a format this decoder reads ({', '.join(formats)})") from exc
    except _PIL_ERRORS as exc:
        raise DecodeError(f"corrupt or truncated image ({one_line(exc)})") from exc
    cost = image.size[0] * image.size[1]
    why = " even at its reduced decoding scale" if cost < w * h else ""
    if limits is not None:
        if image.format in ("JPEG", "MPO"):
            assert isinstance(source, bytes)
            cost, why = _jpeg_cost(source, w, h, cost, why)
        elif extra > cost:
            cost, why = extra, f" ({extra // TIFF_UNIT_COST} strips or tiles at {TIFF_UNIT_COST} each)"
        if cost > limits.decode_pixels:
            raise ImageTooLarge(f"{w}x{h} {image.format or 'image'} decodes to {cost} pixels{why}, over the "
                                f"decode limit of {limits.decode_pixels} pixels per image; send it smaller or "
                                "as a baseline JPEG")
    return Opened(image, cost, target)


def _over_pixels(w: int, h: int, limits: DecodeLimits) -> str:
    return f"{w}x{h} = {w * h} pixels is over the limit of {limits.max_pixels} pixels"


def _read_within(source: bytes | str | Path, max_bytes: int) -> bytes:
    """The file's bytes, refused past ``max_bytes`` (a path's size is checked before it is read)."""
    try:
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size > max_bytes:
            raise ImageTooLarge(f"{size} bytes is over the limit of {max_bytes} bytes")
        return source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise DecodeError(f"unreadable file ({one_line(exc)})") from exc


def _jpeg_cost(data: bytes, w: int, h: int, cost: int, why: str) -> tuple[int, str]:
    """A JPEG's decode cost from its markers and size (see :data:`JPEG_SCANS_PER_PASS`), and why.

    Raises:
        DecodeError: a coding not read under limits, or markers PIL let through but that do not parse.
        ImageTooLarge: more than :data:`JPEG_MAX_SCANS` scans.
    """
    sof, scans = _jpeg_frame_and_scans(data)
    if sof not in _JPEG_READ:
        raise DecodeError(f"{_JPEG_CODINGS.get(sof, 'unknown')} JPEG coding is not accepted (only baseline, "
                          "extended and progressive Huffman coding)")
    if scans == 1:
        return cost, why
    if scans > JPEG_MAX_SCANS:
        raise ImageTooLarge(f"a JPEG of {scans} scans is over the limit of {JPEG_MAX_SCANS} (a progressive "
                            f"JPEG has about {JPEG_SCANS_PER_PASS})")
    work = max(w * h * max(scans, JPEG_SCANS_PER_PASS) // JPEG_SCANS_PER_PASS, len(data) * JPEG_SCAN_BYTE_COST)
    return max(cost, work), f" (a JPEG of {scans} scans decodes them all at full size)"


def _jpeg_frame_and_scans(data: bytes) -> tuple[int, int]:
    """(the frame's SOFn marker, its scan count): 1 for a single interleaved scan; otherwise an upper
    bound, the SOS markers from the first scan on (any of them may sit in other segments, never fewer)."""
    i, n = 2, len(data)
    sof, components = 0, 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_CODINGS and i + 9 < n:
            sof, components = marker, data[i + 9]
        elif marker == 0xDA:
            if sof == 0:
                break
            if sof not in (0xC2, 0xC6, 0xCA, 0xCE) and i + 4 < n and data[i + 4] >= components:
                return sof, 1  # sequential, all components in one scan
            return sof, 1 + data.count(b"\xff\xda", i + 2)
        if length < 2:
            break
        i += 2 + length
    raise DecodeError("corrupt JPEG: no frame and scan header where its markers lead")


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# TIFF field types -> struct codes of values stored inline (SHORT, LONG, LONG8)
_TIFF_INLINE = {3: "H", 4: "I", 16: "Q"}


def _check_tiff_layout(data: bytes, limits: DecodeLimits) -> int:
    """Read a TIFF's first directory (classic or BigTIFF) before PIL does, and check it.

    Returns:
        What its strips or tiles cost at least: their count times :data:`TIFF_UNIT_COST`.

    Raises:
        ImageTooLarge: a size over ``limits``, or pixels and strips or tiles that cost more than
            ``limits.decode_pixels``.
        DecodeError: a compression not in :data:`TIFF_COMPRESSIONS`, or a directory that does not parse.
    """
    e = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        offset = struct.unpack_from(e + ("Q" if big else "I"), data, 8 if big else 4)[0]
        count = struct.unpack_from(e + ("Q" if big else "H"), data, offset)[0]
        size, entry = (20, e + "HHQ8s") if big else (12, e + "HHI4s")
        if count > 65_535:
            raise DecodeError(f"corrupt TIFF: {count} entries in its first directory")
        fields: dict[int, int] = {}
        units = 0
        start = offset + (8 if big else 2)
        for k in range(count):
            tag, kind, n, value = struct.unpack_from(entry, data, start + k * size)
            if tag in (273, 324):  # StripOffsets, TileOffsets: one per strip or tile (per plane)
                units = max(units, n)
            elif tag in (256, 257, 259) and kind in _TIFF_INLINE:  # width, height, compression
                # A repeated field counts at its largest, whichever copy PIL keeps.
                fields[tag] = max(fields.get(tag, 0), struct.unpack_from(e + _TIFF_INLINE[kind], value)[0])
    except struct.error as exc:
        raise DecodeError(f"corrupt TIFF: its first directory is cut short ({exc})") from exc
    w, h, compression = fields.get(256, 0), fields.get(257, 0), fields.get(259, 1)
    if compression not in TIFF_COMPRESSIONS:
        what = _TIFF_HOLDS.get(compression)
        raise DecodeError(f"TIFF with {what} compression is not accepted: it holds a {what} image; send that "
                          "image itself" if what else f"TIFF compression {compression} is not accepted")
    if w * h > limits.max_pixels:
        raise ImageTooLarge(_over_pixels(w, h, limits))
    if max(w * h, units * TIFF_UNIT_COST) > limits.decode_pixels:
        raise ImageTooLarge(f"{w}x{h} TIFF in {units} strips or tiles decodes to at least "
                            f"{max(w * h, units * TIFF_UNIT_COST)} pixels ({TIFF_UNIT_COST} for each strip or "
                            f"tile), over the decode limit of {limits.decode_pixels} pixels per image")
    return units * TIFF_UNIT_COST


def decode_opened(opened: Opened) -> np.ndarray:
    """Decode an opened image -> uint8 (H, W, 1) for grey modes, (H, W, 3) for the rest.

    The rules, one for every caller:

    - EXIF orientation is applied, as every image viewer does;
    - 16- and 32-bit integer grey (``I;16*``, ``I``): ``floor(v / 257 + 0.5)`` clipped to 0..255, so
      65535 is white and an 8-bit value stored as ``257 * v`` comes back exactly;
    - 32-bit float grey (``F``): values on PIL's 0..255 scale, ``floor(v + 0.5)`` clipped (NaN is 0);
    - alpha (``LA``, ``RGBA``, ``P`` with transparency, ``PA``) is dropped: a pixel keeps its colour
      whatever its opacity, as for raw arrays (:func:`pipeline.data.preprocess.convert_channels`);
    - palette images take their palette's colours; ``1`` is 0 or 255; CMYK, YCbCr, LAB, HSV become
      RGB by PIL's conversion (no colour profile);
    - with a target side, an image whose short side is at least ``2 * REDUCE_MARGIN`` times it is
      box-reduced by an integer factor first (``Image.reduce``, in C), keeping it at least
      ``REDUCE_MARGIN`` times the target.

    Args:
        opened: what :func:`open_image` returned (its image is consumed).

    Returns:
        uint8 (H, W, C), C in {1, 3}, H x W as a viewer shows the picture (reduced as above).

    Raises:
        ImageTooLarge: PIL's own pixel limit, met only while decoding.
        DecodeError: corrupt or truncated data.
    """
    image = opened.image
    try:
        image.load()
        method = _ORIENTATION.get(image.getexif().get(_ORIENTATION_TAG, 1))
        if method is not None:
            image = image.transpose(method)
        image = _to_8bit(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"over the pixel limit ({exc})") from exc
    except _PIL_ERRORS as exc:
        raise DecodeError(f"corrupt or truncated image ({one_line(exc)})") from exc
    if opened.target is not None:
        factor = min(image.size) // (REDUCE_MARGIN * opened.target)
        if factor >= 2:
            image = image.reduce(factor)
    arr = np.asarray(image)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(source: bytes | str | Path, target: int | None = None,
                 limits: DecodeLimits | None = None) -> np.ndarray:
    """Open and decode in one call: uint8 (H, W, 1) or (H, W, 3); see :func:`open_image` and
    :func:`decode_opened` for the arguments, the rules and the errors."""
    return decode_opened(open_image(source, target, limits))


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any PIL mode -> an image in mode L or RGB, by the rules of :func:`decode_opened`."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "I" or mode.startswith("I;16"):
        return Image.fromarray(_round_clip(np.asarray(image, dtype=np.float64) / 257.0))
    if mode == "F":
        return Image.fromarray(_round_clip(np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)))
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        # Through RGBA: PIL's P -> RGB warns on byte-string transparency; the colours are the same.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")  # P, RGBA, RGBX, CMYK, YCbCr, LAB, HSV, ...


def _round_clip(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).clip(0, 255).astype(np.uint8)
