"""The one image decoder (pipeline/data/decode.py): each rule against a hand-computed reference."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from bench import serve_hostile as hostile
from pipeline.data.decode import (
    JPEG_SCAN_BYTE_COST,
    TIFF_UNIT_COST,
    DecodeError,
    DecodeLimits,
    ImageTooLarge,
    decode_image,
    open_image,
    oriented_size,
)

# A 2x3 picture with six distinct colours, so every flip and turn is told apart.
PICTURE = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 13
# What a viewer shows for each EXIF orientation of a stored array (the EXIF 2.32 definitions).
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # stored turned 90 counter-clockwise: shown turned 90 clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),
}


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def with_orientation(arr: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_shows_it(orientation):
    data = with_orientation(PICTURE, orientation)
    got = decode_image(data)
    np.testing.assert_array_equal(got, SHOWN[orientation](PICTURE))
    opened = open_image(data)
    assert oriented_size(opened.image) == (got.shape[1], got.shape[0])  # from the header alone


def test_16_and_32_bit_grey_scale_by_1_over_257_rounded():
    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    want = np.array([[0, 0, 1, 1, 128, 255]], dtype=np.uint8)  # floor(v / 257 + 0.5)
    png = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    np.testing.assert_array_equal(decode_image(png)[:, :, 0], want)
    # 32-bit integers (mode I, a TIFF): the same rule, clipped at both ends
    wide = np.array([[0, 128, 257, 65535, 70000, -5]], dtype=np.int32)
    tiff = encode(Image.fromarray(wide), "TIFF")
    assert Image.open(io.BytesIO(tiff)).mode == "I"
    np.testing.assert_array_equal(decode_image(tiff)[:, :, 0], [[0, 0, 1, 255, 255, 0]])


def test_float_grey_is_on_the_0_to_255_scale_rounded_and_clipped():
    values = np.array([[-3.5, 0.5, 1.49, 1.5, 254.5, 300.0, np.nan]], dtype=np.float32)
    tiff = encode(Image.fromarray(values), "TIFF")
    np.testing.assert_array_equal(decode_image(tiff)[:, :, 0], [[0, 1, 1, 2, 255, 255, 0]])


def test_alpha_is_dropped_and_palettes_give_their_colours():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]]
    rgba[..., 3] = [[0, 255], [128, 7]]
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(rgba))), rgba[..., :3])
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    np.testing.assert_array_equal(decode_image(encode(la))[:, :, 0], rgba[..., 0])
    pal = Image.fromarray(rgba[..., :3]).quantize(4)
    want = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(decode_image(encode(pal)), want)
    pal.info["transparency"] = 0  # a transparent palette index keeps its colour too
    np.testing.assert_array_equal(decode_image(encode(pal, transparency=0)), want)


def test_bilevel_cmyk_and_channel_counts():
    bits = Image.fromarray(np.array([[0, 1], [1, 0]], bool))
    np.testing.assert_array_equal(decode_image(encode(bits))[:, :, 0], [[0, 255], [255, 0]])
    cmyk = Image.new("CMYK", (2, 1), (0, 255, 0, 0))  # no cyan, full magenta: green is gone
    np.testing.assert_array_equal(decode_image(encode(cmyk, "TIFF")), [[[255, 0, 255]] * 2])
    assert decode_image(encode(Image.new("L", (3, 2)))).shape == (2, 3, 1)
    assert decode_image(encode(Image.new("RGB", (3, 2)))).shape == (2, 3, 3)


def test_a_jpeg_decodes_at_a_reduced_scale_and_big_images_are_box_reduced():
    photo = encode(Image.new("RGB", (4000, 3000), (90, 120, 150)), "JPEG")
    opened = open_image(photo, target=64)
    assert opened.image.size == (500, 375) and opened.cost == 500 * 375  # libjpeg's 1/8 scale
    assert open_image(photo).cost == 4000 * 3000  # no target: no reduced decoding
    big = encode(Image.new("L", (1024, 640), 77))
    arr = decode_image(big, target=32)
    assert arr.shape == (128, 205, 1) and (arr == 77).all()  # reduced by 640 // (4 * 32) = 5, sides rounded up
    assert decode_image(big, target=200).shape == (640, 1024, 1)  # 640 < 8 * 200: kept whole


def test_limits_are_checked_from_the_header_and_bad_files_are_decode_errors():
    png = encode(Image.new("L", (100, 100)))
    with pytest.raises(ImageTooLarge, match="10000 pixels is over the limit of 9999"):
        open_image(png, limits=DecodeLimits(10**6, 9_999))
    with pytest.raises(ImageTooLarge, match="decode limit of 5000"):
        open_image(png, limits=DecodeLimits(10**6, 10**6, 5_000))
    with pytest.raises(ImageTooLarge, match="bytes"):
        open_image(png, limits=DecodeLimits(10, 10**6))
    for bad, words in ((b"hello", "not an image"), (png[:-30], "truncated"), (b"", "empty"),
                       (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image")):
        with pytest.raises(DecodeError, match=words):
            decode_image(bad)


# ----------------------------------------------------------------------- decode work under limits

LIMITS = DecodeLimits(10**7, 16_000_000, 1_000_000)


def test_a_multi_scan_jpeg_costs_its_full_size_per_ten_scans_and_past_100_is_refused():
    photo = hostile.jpeg(2000, 1000, progressive=True)
    assert len(hostile.jpeg_scans(photo)) == 10  # libjpeg's default progression
    # Without limits (prepare, batch embedding): what it always cost, the reduced scale's pixels.
    assert open_image(photo, target=64).cost == 250 * 125
    # Under limits: its coefficients at full size, once per 10 scans.
    opened = open_image(photo, 64, DecodeLimits(10**7, 16_000_000, 2_000_000))
    assert opened.cost == 2000 * 1000 and opened.image.size == (250, 125)
    opened = open_image(hostile.many_scan_jpeg(400, 300, 35), 64, LIMITS)
    assert opened.cost == 400 * 300 * 35 // 10
    # noise: its entropy-coded bytes cost the most
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=95, progressive=True)
    assert open_image(buf.getvalue(), 64, LIMITS).cost == len(buf.getvalue()) * JPEG_SCAN_BYTE_COST > 300 * 300
    with pytest.raises(ImageTooLarge, match="a JPEG of 101 scans is over the limit of 100"):
        open_image(hostile.many_scan_jpeg(400, 300, 101), 64, LIMITS)
    # a baseline JPEG: one interleaved scan, decoded at 1/8 whatever its claimed size
    assert open_image(hostile.jpeg(4000, 3000), 64, DecodeLimits(10**7, 16_000_000, 300_000)).cost == 500 * 375


@pytest.mark.parametrize("sof, coding", [(0xC3, "lossless"), (0xC9, "arithmetic"), (0xC5, "hierarchical")])
def test_jpeg_codings_other_than_huffman_are_not_read_under_limits(sof, coding):
    data = bytearray(hostile.jpeg(64, 48))
    at = data.index(b"\xff\xc0")
    data[at + 1] = sof
    with pytest.raises(DecodeError, match=f"{coding} JPEG coding is not accepted"):
        open_image(bytes(data), 8, LIMITS)


def test_a_tiff_is_checked_from_its_directory_before_pil_lists_its_tiles():
    tiny_tiles = hostile.tiled_tiff(1000, 1000, 1)  # a million 1x1 tiles: PIL takes seconds to open it
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="1000000 strips or tiles decodes to at least 1024000000 pixels"):
        open_image(tiny_tiles, None, DecodeLimits(10**7, 16_000_000, 4_194_304))
    assert time.perf_counter() - started < 0.5  # PIL alone: 5.6 s to open it
    # tiles of 64x64 cost their pixels; 8x8 ones TIFF_UNIT_COST each
    assert open_image(hostile.tiled_tiff(256, 128, 64), None, LIMITS).cost == 256 * 128
    assert open_image(hostile.tiled_tiff(160, 96, 8), None, LIMITS).cost == 20 * 12 * TIFF_UNIT_COST
    decoded = decode_image(hostile.tiled_tiff(160, 96, 8), None, LIMITS)  # and it decodes
    assert decoded.shape == (96, 160, 1) and not decoded.any()
    with pytest.raises(ImageTooLarge, match="pixels is over the limit"):  # its header's size, before PIL
        open_image(hostile.tiled_tiff(5000, 4000, 1000), None, LIMITS)
    for bad in (b"II*\x00\xff\xff\xff\x00", b"MM\x00+\x00\x08\x00\x00" + b"\x00" * 4):
        with pytest.raises(DecodeError, match="corrupt TIFF"):
            open_image(bad, None, LIMITS)


@pytest.mark.parametrize("compression, words", [("jpeg", "JPEG compression is not accepted"),
                                                ("tiff_lzw", None), ("tiff_adobe_deflate", None),
                                                ("packbits", None), ("raw", None)])
def test_tiff_compressions_under_limits(compression, words):
    data = encode(Image.fromarray(hostile.gradient(64, 48)), "TIFF", compression=compression)
    assert decode_image(data).shape == (48, 64, 3)  # without limits every one is read
    if words:
        with pytest.raises(DecodeError, match=words):
            open_image(data, None, LIMITS)
    else:
        assert open_image(data, None, LIMITS).cost == 64 * 48
    big = encode(Image.fromarray(hostile.gradient(64, 48)), "TIFF", compression=compression, big_tiff=True)
    if not words:
        assert open_image(big, None, LIMITS).cost == 64 * 48  # BigTIFF's directory too


def test_an_icon_is_read_only_without_limits_and_an_mpo_decodes_like_the_jpeg_it_is():
    icon = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "ICO")
    assert decode_image(icon).shape == (32, 32, 3)  # prepare reads icons
    with pytest.raises(DecodeError, match="not an image in a format this decoder reads"):
        open_image(icon, None, LIMITS)  # PIL decodes an icon's inner image, any size, while opening it
    mpo = encode(Image.fromarray(hostile.gradient(1600, 1200)), "MPO", save_all=True,
                 append_images=[Image.new("RGB", (800, 600))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert open_image(mpo, 64).cost == open_image(mpo, 64, LIMITS).cost == 200 * 150  # drafted, as a JPEG
    jpeg_alone = encode(Image.fromarray(hostile.gradient(1600, 1200)), "JPEG")
    np.testing.assert_array_equal(decode_image(mpo, 64), decode_image(jpeg_alone, 64))
