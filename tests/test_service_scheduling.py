"""Where the service does a request's work: a request alone in flight is parsed, decoded and embedded on
the event loop while each step is bounded (a thread hop wakes an idle core: 0.8-1.7 ms of a photo's 7 ms
at 1 client on 2 cores); otherwise, and past the bounds, in threads.

The decoder is shown with its thread pools shut down (what needs a thread then fails), the batcher with a
model that records the thread each pass runs in.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
import pytest
from PIL import Image

from pipeline.data.decode import DecodeLimits
from pipeline.data.preprocess import InputSpec
from service import batching, decoding
from service.batching import MicroBatcher
from service.decoding import Budget, RequestDecoder

SPEC = InputSpec(image_size=8, channels=1, mean=(0.5,), std=(0.25,))
LIMITS = DecodeLimits(max_bytes=4_000_000, max_pixels=16_000_000, max_decode_pixels=4_000_000)


def encoded(image: np.ndarray, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def json_body(*files: bytes, padding: int = 0) -> bytes:
    """A JSON request of base64 files; ``padding`` spaces of whitespace after it (valid JSON, more bytes)."""
    return orjson.dumps({"images": [base64.b64encode(f).decode() for f in files]}) + b" " * padding


# A noisy 400x300 JPEG: about 100 kB, a body past INLINE_BODY_BYTES, cheap in decoded pixels at 1/8 scale.
PHOTO = encoded(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8), "JPEG", quality=90)
# A flat 1024x1024 PNG: a few kB, but a million pixels to decode (past ALONE_DECODE_WORK).
FLAT = encoded(np.full((1024, 1024), 128, dtype=np.uint8), "PNG")


def decoder() -> RequestDecoder:
    return RequestDecoder(8, LIMITS, 8_000_000, Budget(16_000_000, 1 << 20, "pixels", "being decoded", "busy"), 1)


def decode(d: RequestDecoder, body: bytes, alone: bool) -> np.ndarray:
    async def is_alone() -> bool:
        return alone

    async def main() -> np.ndarray:
        decoded = await d.decode(body, decoding.JSON, "application/json", SPEC, check=lambda parsed: None,
                                 before_decoding=lambda n: None, alone=is_alone)
        return decoded.images
    return asyncio.run(main())


def test_the_bounds_are_what_the_tests_below_assume():
    assert len(json_body(PHOTO)) > decoding.INLINE_BODY_BYTES
    assert len(json_body(PHOTO)) + len(PHOTO) < decoding.ALONE_DECODE_WORK < 1024 * 1024
    assert len(json_body(FLAT)) <= decoding.INLINE_BODY_BYTES


def test_a_request_alone_is_parsed_and_decoded_on_the_loop_and_gives_what_the_threads_give():
    threaded = decoder()
    try:
        want = decode(threaded, json_body(PHOTO), alone=False)
    finally:
        threaded.close()
    shut = decoder()
    shut.close()  # from here on, any step sent to a thread raises
    np.testing.assert_array_equal(decode(shut, json_body(PHOTO), alone=True), want)
    with pytest.raises(RuntimeError, match="shutdown"):  # not alone: the photo goes to the threads
        decode(shut, json_body(PHOTO), alone=False)


@pytest.mark.parametrize("case", ["body over ALONE_BODY_BYTES", "decode work over ALONE_DECODE_WORK"])
def test_past_its_bounds_a_request_alone_still_goes_to_the_threads(case):
    body = json_body(PHOTO, padding=decoding.ALONE_BODY_BYTES) if case.startswith("body") else json_body(FLAT)
    shut = decoder()
    shut.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        decode(shut, body, alone=True)
    threaded = decoder()
    try:
        assert decode(threaded, body, alone=True).shape == (1, 8, 8, 1)  # and the threads do it
    finally:
        threaded.close()


class Recording:
    """A stand-in served model: its pass returns each image's mean as h, and records its thread."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.threads: list[threading.Thread] = []
        self.release: threading.Event | None = None

    def embed(self, images: np.ndarray, projection: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        self.threads.append(threading.current_thread())
        if self.release is not None:
            assert self.release.wait(10)
        time.sleep(self.seconds)
        h = images.reshape(len(images), -1).mean(axis=1, keepdims=True).astype(np.float32)
        return h, (2 * h if projection else None)


INLINE_MS = 50.0  # far above the fast model's pass, far below the slow one's: no timing in the test


def batched(body: Callable[[MicroBatcher, threading.Thread], Awaitable[None]]) -> None:
    async def main() -> None:
        b = MicroBatcher(lambda: None, max_batch_size=8, max_wait_ms=0, max_queue_images=64, workers=1,
                         inline_forward_ms=INLINE_MS)
        await b.start()
        try:
            await body(b, threading.current_thread())
        finally:
            await b.stop()
    asyncio.run(main())


def images(n: int, value: int = 3) -> np.ndarray:
    return np.full((n, 8, 8, 1), value, dtype=np.uint8)


def test_a_pass_runs_on_the_loop_only_for_a_request_alone_with_a_measured_small_pass_of_its_model():
    fast, slow = Recording(), Recording(seconds=2 * INLINE_MS / 1000)

    async def body(b: MicroBatcher, loop_thread: threading.Thread) -> None:
        out = await b.submit(images(1), fast, projection=True, inline=True)  # not yet measured: a thread
        assert fast.threads[-1] is not loop_thread
        out = await b.submit(images(1, 7), fast, projection=True, inline=True)  # measured small: the loop
        assert fast.threads[-1] is loop_thread
        assert (out.h.tolist(), out.z.tolist(), out.batch_size, out.queue_ms) == ([[7.0]], [[14.0]], 1, 0.0)
        out = await b.submit(images(1, 5), fast, projection=False, inline=True)
        assert fast.threads[-1] is loop_thread and out.z is None and out.h.tolist() == [[5.0]]
        await b.submit(images(1), fast, inline=False)  # not alone: a thread
        assert fast.threads[-1] is not loop_thread
        await b.submit(images(batching.INLINE_FORWARD_IMAGES + 1), fast, inline=True)  # too many images
        assert fast.threads[-1] is not loop_thread
        for _ in range(2):  # another model (a reload): measured first; this one too slow for the loop
            await b.submit(images(1), slow, inline=True)
            assert slow.threads[-1] is not loop_thread
        await b.submit(images(1), fast, inline=True)  # the last measured pass was the other model's
        assert fast.threads[-1] is not loop_thread
        await b.submit(images(1), fast, inline=True)
        assert fast.threads[-1] is loop_thread
        # A request alone while another's pass is running: queued behind it, never on the loop.
        fast.release = threading.Event()
        held = asyncio.create_task(b.submit(images(1), fast, inline=False))
        while len(fast.threads) < 8:
            await asyncio.sleep(0.001)
        follower = asyncio.create_task(b.submit(images(1, 9), fast, inline=True))
        await asyncio.sleep(0.01)
        assert not follower.done()  # the loop is free: it waits for the worker
        fast.release.set()
        assert (await held).h.tolist() == [[3.0]] and (await follower).h.tolist() == [[9.0]]
        assert all(t is not loop_thread for t in fast.threads[-2:])

    batched(body)
