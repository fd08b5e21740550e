"""Request images -> uint8 (S, S, C) arrays the encoder takes, with every limit checked before decoding.

Encoded files (any format PIL reads) and raw uint8 arrays both end in
:func:`pipeline.data.preprocess.fit_image`, the pre-processing shared with training and evaluation.
Sizes are checked on the encoded bytes first and on the header's pixel count before any pixel is
decoded, so a small file that inflates to gigabytes (a decompression bomb) is refused cheaply.

Decoding is split in two so that its cost is known before it is paid: :func:`probe_all` reads each
header and returns what decoding will cost in decoded pixels (the caller checks that against its
budgets, see :mod:`service.budget`); :func:`decode_probed` then decodes. A JPEG is decoded at the
smallest of libjpeg's 1/1, 1/2, 1/4, 1/8 scales that still covers the model's input (``Image.draft``),
so a 12-megapixel photo costs 0.19 megapixels; other formats are decoded whole, so their header's size
must fit ``max_decode_pixels``. Past four times the model's side, an image is box-reduced by an integer
factor (``Image.reduce``, in C) before the library's antialiased resize, whose cost follows its input.
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


# An image is box-reduced only while its short side stays at least this many times the model's side: the
# antialiased resize that follows then sees nearly what it would have seen at full size.
REDUCE_MARGIN = 4


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int  # what a header may claim
    max_decode_pixels: int | None = None  # what one image may really decode to (None: max_pixels)

    @property
    def decode_pixels(self) -> int:
        return self.max_decode_pixels if self.max_decode_pixels is not None else self.max_pixels


@dataclass
class Probed:
    """An image whose header is read and checked, not yet decoded: an opened file or a raw array."""

    index: int
    cost: int  # pixels that decoding materialises (after a JPEG's reduced-scale decoding)
    image: Image.Image | None = None
    array: np.ndarray | None = None


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


def _over_decode_budget(index: int, w: int, h: int, cost: int, limits: ImageLimits, fmt: str | None) -> None:
    if cost > limits.decode_pixels:
        reduced = " even at its reduced decoding scale" if cost < w * h else ""
        raise ImageTooLarge(index, f"{w}x{h} {fmt or 'image'} decodes to {cost} pixels{reduced}, over the "
                                   f"decode limit of {limits.decode_pixels} pixels per image; send it "
                                   "smaller or as a JPEG")


def probe_file(data: bytes, index: int, spec: InputSpec, limits: ImageLimits) -> Probed:
    """Read an encoded file's header (no pixel is decoded), check its limits, and set a JPEG's reduced
    decoding scale; the result says what decoding will cost."""
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
        if img.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: the smallest scale whose both sides still
            # cover the model's input. The pixels never exist at full size.
            img.draft(None, (spec.image_size, spec.image_size))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(index, f"over the limit of {limits.max_pixels} pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(index, f"not an image in a format this service reads ({', '.join(FORMATS)})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as exc:
        raise ImageError(index, f"corrupt or truncated image ({exc})") from exc
    cost = img.size[0] * img.size[1]
    _over_decode_budget(index, w, h, cost, limits, img.format)
    return Probed(index, cost, image=img)


def _reduce(img: Image.Image, spec: InputSpec) -> Image.Image:
    factor = min(img.size) // (REDUCE_MARGIN * spec.image_size)
    return img.reduce(factor) if factor >= 2 else img


def decode_probed(probed: Probed, spec: InputSpec) -> np.ndarray:
    """A probed image -> uint8 (S, S, C) for ``spec``."""
    index = probed.index
    if probed.array is not None:
        return _fit(probed.array, index, spec)
    img = probed.image
    assert img is not None
    try:
        img.load()
        # A phone photo stores its rotation in EXIF; show the model what the user sees.
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(index, f"over the pixel limit ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as exc:
        raise ImageError(index, f"corrupt or truncated image ({exc})") from exc
    try:
        arr = _to_uint8_array(img)
    except (OSError, ValueError) as exc:
        raise ImageError(index, f"colour mode {img.mode} is not supported ({exc})") from exc
    if min(arr.shape[:2]) >= 2 * REDUCE_MARGIN * spec.image_size:
        arr = np.asarray(_reduce(Image.fromarray(arr), spec))
    return _fit(arr, index, spec)


def decode_file(data: bytes, index: int, spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """An encoded image file -> uint8 (S, S, C) for ``spec``."""
    return decode_probed(probe_file(data, index, spec, limits), spec)


def probe_raw(raw: RawImage, index: int, limits: ImageLimits) -> Probed:
    """A raw uint8 array (base64 bytes + shape), checked and decoded from base64; its cost is its pixels."""
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
    _over_decode_budget(index, shape[1], shape[0], pixels, limits, "raw array")
    data = decode_base64(raw.data, index, limits)
    expected = math.prod(shape)
    if len(data) != expected:
        raise ImageError(index, f"{len(data)} bytes do not match shape {list(shape)} ({expected} bytes)")
    return Probed(index, pixels, array=np.frombuffer(data, dtype=np.uint8).reshape(shape))


def decode_raw(raw: RawImage, index: int, spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """A raw uint8 array (base64 bytes + shape) -> uint8 (S, S, C) for ``spec``."""
    return decode_probed(probe_raw(raw, index, limits), spec)


def _fit(arr: np.ndarray, index: int, spec: InputSpec) -> np.ndarray:
    try:
        return fit_image(arr, spec)
    except ValueError as exc:
        raise ImageError(index, str(exc)) from exc


def probe_all(items: list[str | RawImage | bytes], spec: InputSpec, limits: ImageLimits) -> list[Probed]:
    """Every image's header, checked, in order; the first bad one raises. Nothing is decoded yet."""
    probed = []
    for i, item in enumerate(items):
        if isinstance(item, RawImage):
            probed.append(probe_raw(item, i, limits))
        elif isinstance(item, bytes):
            probed.append(probe_file(item, i, spec, limits))
        else:
            probed.append(probe_file(decode_base64(item, i, limits), i, spec, limits))
    return probed


def decode_probed_all(probed: list[Probed], spec: InputSpec) -> np.ndarray:
    """Decode probed images in order -> uint8 (N, S, S, C); the first bad one raises."""
    out = np.empty((len(probed), spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)
    for i, p in enumerate(probed):
        out[i] = decode_probed(p, spec)
    return out


def decode_all(items: list[str | RawImage | bytes], spec: InputSpec, limits: ImageLimits) -> np.ndarray:
    """Decode a request's images in order -> uint8 (N, S, S, C); the first bad one raises."""
    return decode_probed_all(probe_all(items, spec, limits), spec)
