"""THE image decoder: an encoded image file -> a uint8 array, the same for prepare, the service and
batch embedding (README "The embedding service" lists the formats and the rules).

Decoding is in two steps so that its cost is known before it is paid: :func:`open_image` reads the
header only (size, mode, the pixels decoding will materialise) and :func:`decode_opened` decodes.
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
# formats that need an external program or decode while "opening".
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO", "DIB")
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
        cost: the pixels decoding materialises (after a JPEG's reduced-scale decoding).
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

    Args:
        source: the encoded file's bytes, or its path.
        target: the square side the image will be resized to, or None when it is kept at its size.
        limits: bytes and pixel bounds (None: only PIL's own decompression-bomb limit).

    Returns:
        The opened image and what decoding it will cost, in pixels.

    Raises:
        ImageTooLarge: over a bound of ``limits`` (or PIL's own).
        DecodeError: not an image of :data:`FORMATS`, or a corrupt header.
    """
    if isinstance(source, bytes):
        if limits is not None and len(source) > limits.max_bytes:
            raise ImageTooLarge(f"{len(source)} bytes is over the limit of {limits.max_bytes} bytes")
        if not source:
            raise DecodeError("empty")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS)
        w, h = image.size
        if limits is not None and w * h > limits.max_pixels:
            raise ImageTooLarge(f"{w}x{h} = {w * h} pixels is over the limit of {limits.max_pixels} pixels")
        if w < 1 or h < 1:
            raise DecodeError(f"empty image ({w}x{h})")
        if target is not None and image.format == "JPEG":
            image.draft(None, (target, target))
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"over PIL's pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not an image in a format this decoder reads ({', '.join(FORMATS)})") from exc
    except _PIL_ERRORS as exc:
        raise DecodeError(f"corrupt or truncated image ({one_line(exc)})") from exc
    cost = image.size[0] * image.size[1]
    if limits is not None and cost > limits.decode_pixels:
        reduced = " even at its reduced decoding scale" if cost < w * h else ""
        raise ImageTooLarge(f"{w}x{h} {image.format or 'image'} decodes to {cost} pixels{reduced}, over the "
                            f"decode limit of {limits.decode_pixels} pixels per image; send it smaller or "
                            "as a JPEG")
    return Opened(image, cost, target)


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
