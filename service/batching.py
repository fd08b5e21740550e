"""Micro-batching: concurrent requests share one forward pass.

Requests put their (already decoded) images in a queue. A collector waits until the queue holds
``max_batch_size`` images or the oldest has waited ``max_wait_ms``, takes whole requests up to that
size, and runs one forward pass in a bounded thread pool (``workers`` threads; never on the event
loop). While every worker is busy, requests keep arriving and the next batch grows, which is what
makes throughput rise with load. Past ``max_queue_images`` images outstanding a request is refused
(HTTP 429) instead of queueing without end.

A request alone in the service may have its forward pass run on the event loop instead
(``submit(..., inline=True)``): only while no other request is queued or in a pass, for at most
``INLINE_FORWARD_IMAGES`` images, and only once a pass of that model over so few images has been measured
at most ``inline_forward_ms``. The hop to a worker thread and back wakes an idle core: with a photo at 1 client
the pass took 0.94-1.12 ms through the thread and 0.71-0.73 ms on the loop (README, "The embedding
service").

Each request is pinned to the model it was decoded for (its input size and channel count): a batch
only ever holds requests pinned to one model, so a reload mid-flight neither fails nor mixes versions;
requests already queued finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import ApiError
from service.metrics import Metrics
from service.model_store import ServedModel

log = logging.getLogger(__name__)

INLINE_FORWARD_IMAGES = 4


@dataclass
class BatchOutput:
    """One request's share of a forward pass."""

    h: np.ndarray  # this request's rows only
    z: np.ndarray | None  # None when no request of the batch asked for the projection
    model: ServedModel  # the model that computed them (a reload may swap it for later batches)
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Pending:
    images: np.ndarray
    model: ServedModel
    projection: bool
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    """Concurrent requests' images in shared forward passes (see the module's docstring).

    Args:
        model: the current model, for requests that do not name theirs.
        max_batch_size: images per forward pass (a larger request runs alone, in chunks).
        max_wait_ms: how long the oldest request waits for others (0: batches only grow while a pass runs).
        max_queue_images: images queued or in a running pass, past which requests are refused (429).
        workers: threads running forward passes.
        metrics: batch sizes, queue and inference times.
        inline_forward_ms: the longest measured small pass that a request alone may run on the event loop
            (0: none).
    """

    def __init__(self, model: Callable[[], ServedModel | None], *, max_batch_size: int, max_wait_ms: float,
                 max_queue_images: int, workers: int, metrics: Metrics | None = None,
                 inline_forward_ms: float = 2.0) -> None:
        self._model = model
        self.inline_forward_s = inline_forward_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed")
        self._slots = asyncio.Semaphore(workers)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0  # in the queue
        self._outstanding = 0  # queued + in a running batch: what max_queue_images bounds
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        # The last measured pass over few images: its model (weakly: a reloaded model is not kept for it)
        # and its seconds.
        self._small_pass: tuple[weakref.ref[ServedModel], float] | None = None
        if metrics:  # read when /metrics is scraped (a Gauge.set per request takes a lock)
            metrics.queue_images.set_function(lambda: self._outstanding)

    async def start(self) -> None:
        """Start the collector (in the running event loop)."""
        self._collector = asyncio.create_task(self._collect(), name="batch-collector")

    async def stop(self) -> None:
        """Finish running passes, refuse what is queued (503), stop the threads."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(ApiError(503, "shutting_down", "the service is shutting down", 5))
        # Off the loop: a forward pass still running must not freeze the shutdown of everything else.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    @property
    def outstanding_images(self) -> int:
        """Images queued or in a running forward pass."""
        return self._outstanding

    async def submit(self, images: np.ndarray, model: ServedModel | None = None,
                     projection: bool = True, inline: bool = False) -> BatchOutput:
        """Embed uint8 (N, S, S, C) images with ``model`` (the one they were decoded for; default: the
        current one); returns this request's rows of h, and of z when ``projection``.

        Args:
            images: uint8 (N, S, S, C) for ``model``'s input.
            model: the model to embed them with (default: the current one).
            projection: whether z is wanted too.
            inline: the caller is the only request in flight: the pass may run on the event loop (see the
                module's docstring).

        Raises:
            ApiError: 503 before a model is loaded or while shutting down, 429 when the queue is full.
        """
        n = len(images)
        model = model if model is not None else self._model()
        if model is None:
            raise ApiError(503, "not_ready", "the model is not loaded yet", 5)
        self.ensure_room(n)
        if inline and self._may_run_inline(model, n):
            return self._run_inline(images, model, projection)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(images, model, projection, future, time.perf_counter()))
        self._queued_images += n
        self._outstanding += n
        self._arrived.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away; its rows are computed anyway if the batch already formed.
            future.cancel()
            raise

    def ensure_room(self, n: int) -> None:
        """Refuse (429 ``queue_full``) unless ``n`` more images fit; also called before decoding, so a full
        queue refuses a request before its images cost anything."""
        if self._outstanding + n > self.max_queue_images:
            raise ApiError(429, "queue_full", f"{self._outstanding} images are already waiting and this request "
                                              f"adds {n} (limit {self.max_queue_images}); retry later", 1)

    async def _collect(self) -> None:
        while True:
            await self._slots.acquire()  # a free worker first: while all are busy, the queue grows
            try:
                while not self._queue:
                    self._arrived.clear()
                    await self._arrived.wait()
                deadline = self._queue[0].enqueued + self.max_wait_s
                while self._queued_images < self.max_batch_size:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                batch = self._take()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> list[_Pending]:
        """Whole requests from the front, up to max_batch_size images (always at least one request), all
        pinned to the same model."""
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            n = len(self._queue[0].images)
            if batch and (size + n > self.max_batch_size or self._queue[0].model is not batch[0].model):
                break
            p = self._queue.popleft()
            self._queued_images -= n
            if p.future.cancelled():
                self._outstanding -= n
                continue
            batch.append(p)
            size += n
        return batch

    def _may_run_inline(self, model: ServedModel, n: int) -> bool:
        measured = self._small_pass
        return (self._outstanding == 0 and n <= INLINE_FORWARD_IMAGES and measured is not None
                and measured[0]() is model and measured[1] <= self.inline_forward_s)

    def _run_inline(self, images: np.ndarray, model: ServedModel, projection: bool) -> BatchOutput:
        started = time.perf_counter()
        try:
            h, z = self._forward(model, images, projection)
        except Exception:
            log.exception("forward pass over %d images failed", len(images))
            raise
        inference_s = time.perf_counter() - started
        self._measured(model, len(images), inference_s)
        if self.metrics:
            self.metrics.queue_time.observe(0.0)
        return BatchOutput(h, z, model, 0.0, inference_s * 1000, len(images))

    def _measured(self, model: ServedModel, total: int, inference_s: float) -> None:
        if total <= INLINE_FORWARD_IMAGES:
            self._small_pass = (weakref.ref(model), inference_s)
        if self.metrics:
            self.metrics.batch_size.observe(total)
            self.metrics.inference_time.observe(inference_s)

    async def _run(self, batch: list[_Pending]) -> None:
        total = sum(len(p.images) for p in batch)
        try:
            if not batch:
                return
            model = batch[0].model
            started = time.perf_counter()
            images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
            loop = asyncio.get_running_loop()
            projection = any(p.projection for p in batch)
            h, z = await loop.run_in_executor(self._executor, self._forward, model, images, projection)
            inference_s = time.perf_counter() - started
            self._measured(model, total, inference_s)
            row = 0
            for p in batch:
                n = len(p.images)
                queue_s = started - p.enqueued
                if self.metrics:
                    self.metrics.queue_time.observe(queue_s)
                if not p.future.done():
                    p.future.set_result(BatchOutput(h[row:row + n], z[row:row + n] if z is not None else None,
                                                    model, queue_s * 1000, inference_s * 1000, total))
                row += n
        except Exception as exc:
            log.exception("forward pass over %d images failed", total)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._outstanding -= total
            self._slots.release()

    def _forward(self, model: ServedModel, images: np.ndarray,
                 projection: bool) -> tuple[np.ndarray, np.ndarray | None]:
        # A request larger than max_batch_size forms a batch of its own: run it in chunks.
        if len(images) <= self.max_batch_size:
            return model.embed(images, projection)
        parts = [model.embed(images[i:i + self.max_batch_size], projection)
                 for i in range(0, len(images), self.max_batch_size)]
        zs = [p[1] for p in parts]
        return np.concatenate([p[0] for p in parts]), np.concatenate(zs) if projection else None  # type: ignore[arg-type]
