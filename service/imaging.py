"""Request images -> uint8 (S, S, C) arrays the encoder takes, with every limit checked before decoding.

Encoded files (any format PIL reads) and raw uint8 arrays both end in
:func:`pipeline.data.preprocess.fit_image`, the pre-processing shared with training and evaluation.
Sizes are checked on the encoded bytes first and on the header's pixel count before any pixel is
decoded, so a small file that inflates to gigabytes (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.preprocess import InputSpec, fit_image

# Raster formats PIL decodes by itself. Never the PostScript family: PIL hands EPS to Ghostscript.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO", "DIB")
_WHITESPACE = str.maketrans("", "", " \t\r\n")

# PIL warns (and past twice its own limit raises) on huge images; our own, lower, limit is checked right
# after the header is read. A module-level filter, because catch_warnings() is not thread-safe and
# decoding runs in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """A bad image in a request; ``status`` is the HTTP status it maps to."""

    status = 422

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"image {index}: {message}")
        self.index = index


class ImageTooLarge(ImageError):
    status = 413


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class RawImage:
    """A raw uint8 array sent as bytes plus its shape (H, W) or (H, W, C)."""

    data: str  # base64
    shape: tuple[int, ...]
    dtype: str = "uint8"


def decode_base64(text: str, index: int, limits: ImageLimits) -> bytes:
    """Decode standard or URL-safe base64 (a ``data:...;base64,`` prefix is allowed), size-checked first."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ImageError(index, "data URL without a ',' before its payload")
    text = text.translate(_WHITESPACE)  # MIME base64 wraps lines; validate=True would refuse them
    # Every 4 base64 characters carry 3 bytes: refuse an oversized payload before decoding it.
    if len(text) // 4 * 3 > limits.max_bytes + 3:
        raise ImageTooLarge(index, f"larger than the limit of {limits.max_bytes} bytes")
    try:
        alt = b"-_" if ("-" in text or "_" in text) else None
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(index, f"not valid base64 ({exc})") from exc
    if not data:
        raise ImageError(index, "empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(index, f"{len(data)} bytes is over the limit of {limits.max_bytes} bytes")
    return data


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W) or (H, W, C) with C in {2, 3, 4}; fit_image does the channel work."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(img)
    if mode.startswith("I;16"):
        # 16-bit grey: keep the top byte, the same scaling as any 16 -> 8 bit conversion.
        return (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
    if mode == "P":
        return np.asarray(img.convert("RGBA" if "transparency" in img.info else "RGB"))
    if mode == "PA":
        return np.asarray(img.convert("RGBA"))
    if mode in ("1", "I", "F"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, ...


def decode_file(data: bytes, index: int, spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """An encoded image file -> uint8 (S, S, C) for ``spec``."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(index, f"{len(data)} bytes is over the limit of {limits.max_bytes} bytes")
    if not data:
        raise ImageError(index, "empty")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
        w, h = img.size
        if w * h > limits.max_pixels:
            raise ImageTooLarge(index, f"{w}x{h} = {w * h} pixels is over the limit of "
                                       f"{limits.max_pixels} pixels")
        if w < 1 or h < 1:
            raise ImageError(index, f"empty image ({w}x{h})")
        img.load()
        # A phone photo stores its rotation in EXIF; show the model what the user sees.
        img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(index, f"over the limit of {limits.max_pixels} pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(index, f"not an image in a format this service reads ({', '.join(FORMATS)})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as exc:
        raise ImageError(index, f"corrupt or truncated image ({exc})") from exc
    try:
        arr = _to_uint8_array(img)
    except (OSError, ValueError) as exc:
        raise ImageError(index, f"colour mode {img.mode} is not supported ({exc})") from exc
    return _fit(arr, index, spec)


def decode_raw(raw: RawImage, index: int, spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """A raw uint8 array (base64 bytes + shape) -> uint8 (S, S, C) for ``spec``."""
    if raw.dtype != "uint8":
        raise ImageError(index, f"dtype {raw.dtype!r} is not supported (only 'uint8')")
    shape = tuple(raw.shape)
    if len(shape) not in (2, 3) or any(int(s) < 1 for s in shape):
        raise ImageError(index, f"shape must be [H, W] or [H, W, C] with positive sides, got {list(shape)}")
    if len(shape) == 3 and shape[2] not in (1, 2, 3, 4):
        raise ImageError(index, f"channel count must be 1, 2, 3 or 4, got {shape[2]}")
    pixels = shape[0] * shape[1]
    if pixels > limits.max_pixels:
        raise ImageTooLarge(index, f"{shape[1]}x{shape[0]} = {pixels} pixels is over the limit of "
                                   f"{limits.max_pixels} pixels")
    data = decode_base64(raw.data, index, limits)
    expected = math.prod(shape)
    if len(data) != expected:
        raise ImageError(index, f"{len(data)} bytes do not match shape {list(shape)} ({expected} bytes)")
    return _fit(np.frombuffer(data, dtype=np.uint8).reshape(shape), index, spec)


def _fit(arr: np.ndarray, index: int, spec: InputSpec) -> np.ndarray:
    try:
        return fit_image(arr, spec)
    except ValueError as exc:
        raise ImageError(index, str(exc)) from exc


def decode_all(items: list[str | RawImage | bytes], spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """Decode a request's images in order -> uint8 (N, S, S, C); the first bad one raises."""
    out = np.empty((len(items), spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
    for i, item in enumerate(items):
        if isinstance(item, RawImage):
            out[i] = decode_raw(item, i, spec, limits)
        elif isinstance(item, bytes):
            out[i] = decode_file(item, i, spec, limits)
        else:
            out[i] = decode_file(decode_base64(item, i, limits), i, spec, limits)
    return out
