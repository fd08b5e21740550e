"""How the training loop gets its uint8 batches onto the device: all at once, or streamed in chunks.

:class:`InMemoryFeeder` puts the whole uint8 set on the device once and draws a permutation of it per
epoch from the epoch generator ``g`` (the loop's original behaviour, bit for bit).

:class:`StreamingFeeder` keeps the set where it is (memory-mapped shards, or any uint8 array) and moves
it in chunks. The order of an epoch is exact and seeded:

1. the positions are cut into blocks of ``ceil(chunk_images / 4)`` consecutive images; a permutation of
   the blocks, seeded by (seed, epoch) on the host, is grouped greedily into chunks of at most
   ``chunk_images`` images (so every chunk mixes several distant parts of the set);
2. a chunk's images are laid out in ascending position order (sequential reads of each shard);
3. a permutation within each chunk is drawn from ``g`` at the start of the epoch, chunk by chunk;
4. the epoch is the concatenation of the permuted chunks, cut into global batches (a batch may span two
   chunks); rank r of a DDP run takes the r-th slice of each global batch, as in memory (every rank
   reads every chunk: the within-chunk permutation needs all of it).

So with one chunk holding the whole set the epoch is ``randperm(n, generator=g)``, the same batches (and
losses) as in memory; and an epoch depends only on (seed, epoch), so a resumed run is bit-identical. A
background thread reads the next chunk (into pinned memory on CUDA) while the current one trains; two
chunks are alive at a time.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from pipeline.config import DataFeedConfig
from pipeline.data.shards import ShardedImages

ArrayLike = np.ndarray | ShardedImages

__all__ = ["Feeder", "InMemoryFeeder", "StreamingFeeder", "chunk_plan", "make_feeder", "wants_streaming"]


class Feeder(Protocol):
    n: int
    streaming: bool

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        """``steps`` uint8 (batch_size, H, W, C) batches on the device: this rank's share of one epoch."""
        ...


class InMemoryFeeder:
    streaming = False

    def __init__(self, images: ArrayLike, device: torch.device) -> None:
        self.n = len(images)
        self.data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.device = device

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=g, device=self.device)  # the same on every rank
        for step in range(steps):
            lo = (step * world_size + rank) * batch_size
            yield self.data[perm[lo:lo + batch_size]]


def chunk_plan(n: int, chunk_images: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The epoch's chunks, each a list of position ranges [lo, hi) in ascending order (see the module doc)."""
    block = max(1, math.ceil(chunk_images / 4))
    blocks = [(lo, min(lo + block, n)) for lo in range(0, n, block)]
    order = np.random.default_rng([seed, epoch, 12]).permutation(len(blocks))
    chunks: list[list[tuple[int, int]]] = []
    size = chunk_images + 1  # forces a new chunk at the first block
    for b in order:
        lo, hi = blocks[b]
        if size + hi - lo > chunk_images:
            chunks.append([])
            size = 0
        chunks[-1].append((lo, hi))
        size += hi - lo
    return [sorted(c) for c in chunks]


def _read(images: ArrayLike, ranges: list[tuple[int, int]], out: np.ndarray) -> int:
    o = 0
    for lo, hi in ranges:
        if isinstance(images, ShardedImages):
            images.read_into(lo, hi, out[o:o + hi - lo])
        else:
            out[o:o + hi - lo] = images[lo:hi]
        o += hi - lo
    return o


class StreamingFeeder:
    streaming = True

    def __init__(self, images: ArrayLike, device: torch.device, chunk_images: int, seed: int) -> None:
        self.images = images
        self.n = len(images)
        self.device = device
        self.chunk_images = min(chunk_images, self.n)
        self.seed = seed
        self.pin = device.type == "cuda"
        self._buffers: list[torch.Tensor] = []

    def _buffer(self) -> torch.Tensor:
        return torch.empty((self.chunk_images, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        plan = chunk_plan(self.n, self.chunk_images, self.seed, epoch)
        sizes = [sum(hi - lo for lo, hi in c) for c in plan]
        # Drawn up front, so that g's stream does not depend on when the chunks arrive.
        perms = [torch.randperm(s, generator=g, device=self.device) for s in sizes]
        if not self._buffers:
            self._buffers = [self._buffer(), self._buffer()]
        free: queue.Queue = queue.Queue()
        for buf in self._buffers:
            free.put((buf, None))
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(plan, free, ready, stop), daemon=True,
                                  name="chunk-prefetch")
        worker.start()
        try:
            yield from self._batches(perms, free, ready, steps, batch_size, world_size, rank)
        finally:
            stop.set()
            free.put((None, None))  # wakes a producer waiting for a buffer
            worker.join()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # no copy from a pinned buffer outlives its epoch

    def _produce(self, plan: list[list[tuple[int, int]]], free: queue.Queue, ready: queue.Queue,
                 stop: threading.Event) -> None:
        try:
            for ranges in plan:
                buf, copied = free.get()
                if stop.is_set() or buf is None:
                    return
                if copied is not None:
                    copied.synchronize()  # the device copy from this pinned buffer has finished
                ready.put((buf, _read(self.images, ranges, buf.numpy())))
        except BaseException as exc:  # handed to the training thread, which raises it
            ready.put((exc, 0))

    def _batches(self, perms: list[torch.Tensor], free: queue.Queue, ready: queue.Queue, steps: int,
                 batch_size: int, world_size: int, rank: int) -> Iterator[torch.Tensor]:
        global_batch = batch_size * world_size
        step, start = 0, 0  # batches done; the stream position where the current chunk starts
        want = rank * batch_size  # the stream position where this rank's next batch starts
        pieces: list[torch.Tensor] = []
        for perm in perms:
            if step == steps:
                return
            buf, size = ready.get()
            if isinstance(buf, BaseException):
                raise buf
            if self.device.type == "cuda":
                chunk = buf[:size].to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record()
                free.put((buf, copied))
            else:
                chunk, copied = buf[:size], None
            end = start + size
            while step < steps:
                a = want + sum(len(p) for p in pieces)  # the next stream position this batch needs
                if a >= end:
                    break  # it lies in a later chunk
                b = min(want + batch_size, end)
                pieces.append(chunk[perm[a - start:b - start]])
                if b < want + batch_size:
                    break  # the rest of this batch is in the next chunk
                yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                pieces = []
                step += 1
                want = step * global_batch + rank * batch_size
            if copied is None:
                free.put((buf, None))  # on the CPU the chunk is the buffer: free it only now
            start = end


def wants_streaming(images: ArrayLike, cfg: DataFeedConfig) -> bool:
    if cfg.streaming != "auto":
        return cfg.streaming == "on"
    return int(np.prod(images.shape)) > cfg.memory_budget_gb * 2**30


def make_feeder(images: ArrayLike, cfg: DataFeedConfig, device: torch.device, seed: int) -> Feeder:
    if wants_streaming(images, cfg):
        return StreamingFeeder(images, device, cfg.chunk_images, seed)
    return InMemoryFeeder(images, device)
