"""How the training loop gets its uint8 batches onto the device: all at once, or streamed in chunks.

:func:`make_feeder` picks :class:`InMemoryFeeder` or :class:`StreamingFeeder`; both draw an epoch's order
from the epoch's generator (:func:`epoch_generator`). The streamed order, what each rank reads, and the
read-ahead are described in the README ("Data larger than memory").
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pipeline.config import DataFeedConfig
from pipeline.data.shards import ImageArray, ShardedImages

__all__ = ["ChunkRead", "Feeder", "InMemoryFeeder", "StreamingFeeder", "chunk_plan", "epoch_generator",
           "make_feeder", "rank_reads", "wants_streaming"]


def epoch_generator(device: torch.device, seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator an epoch draws its order (rank 0: and its augmentations) from.

    An epoch depends only on (seed, epoch), so a run resumed at epoch k replays epochs k+1.. exactly.

    Args:
        device: Where the draws happen (the training device: a CUDA generator for CUDA tensors).
        seed: The run's seed.
        epoch: The epoch, 0-based.
        rank: A DDP rank's own stream (its augmentations); rank 0's is the shared one.

    Returns:
        A freshly seeded generator on ``device``.
    """
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch + rank * 7_919_993)
    return g


class Feeder(Protocol):
    """What the loop iterates: one epoch's batches of this rank."""

    n: int
    streaming: bool

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        """This rank's share of one epoch.

        Args:
            epoch: The epoch, 0-based.
            g: The epoch's generator (:func:`epoch_generator`); the order is its first draw.
            steps: Batches to yield.
            batch_size: Images per batch of this rank (the global batch is ``batch_size * world_size``).
            world_size: DDP ranks.
            rank: This rank.

        Yields:
            uint8 (batch_size, H, W, C) tensors on the device; rank r's is the r-th slice of each global
            batch.
        """
        ...


class InMemoryFeeder:
    """The whole uint8 set on the device once; an epoch is a permutation drawn from ``g``.

    Args:
        images: uint8 (N, H, W, C).
        device: The training device.
    """

    streaming = False

    def __init__(self, images: ImageArray, device: torch.device) -> None:
        self.n = len(images)
        self.data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.device = device

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        """See :meth:`Feeder.epoch`."""
        perm = torch.randperm(self.n, generator=g, device=self.device)  # the same on every rank
        for step in range(steps):
            lo = (step * world_size + rank) * batch_size
            yield self.data[perm[lo:lo + batch_size]]


def chunk_plan(n: int, chunk_images: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The epoch's chunks: a seeded permutation of blocks of consecutive images, grouped greedily.

    Blocks hold ``ceil(chunk_images / 4)`` images, so every chunk mixes several distant parts of the set.

    Args:
        n: Images in the set.
        chunk_images: The most images a chunk holds.
        seed: The run's seed.
        epoch: The epoch, 0-based.

    Returns:
        Per chunk, its position ranges [lo, hi) in ascending order; together every position once.
    """
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


@dataclass(frozen=True)
class ChunkRead:
    """What one rank reads of one chunk.

    Attributes:
        positions: int64 (k,) positions in the set, ascending (sequential reads of each shard).
        order: int64 (k,): this rank's images of the chunk in stream order are ``read[order]``.
    """

    positions: np.ndarray
    order: np.ndarray


def rank_reads(plan: list[list[tuple[int, int]]], perms: list[np.ndarray], steps: int, batch_size: int,
               world_size: int = 1, rank: int = 0) -> list[ChunkRead]:
    """Which images of each chunk one rank needs, and in what order.

    The epoch's stream is the concatenation of the chunks, each permuted by its ``perms`` entry, cut into
    global batches of ``batch_size * world_size``; rank r takes the r-th slice of each of the first
    ``steps``. So a rank reads about 1/world_size of each chunk, and nothing past the last batch.

    Args:
        plan: :func:`chunk_plan`.
        perms: Per chunk, a permutation of its images (int, the chunk's size).
        steps: Global batches in the epoch.
        batch_size: Images per rank and batch.
        world_size: DDP ranks.
        rank: This rank.

    Returns:
        One entry per chunk this rank reads from (chunks it takes nothing from are left out), in order;
        their images, in that order, are exactly this rank's ``steps * batch_size`` images.
    """
    global_batch = batch_size * world_size
    used = steps * global_batch
    reads, start = [], 0
    for ranges, perm in zip(plan, perms, strict=True):
        size = sum(hi - lo for lo, hi in ranges)
        if start >= used:
            break
        slots = np.arange(start, min(start + size, used), dtype=np.int64)
        mine = slots[(slots % global_batch) // batch_size == rank] - start
        start += size
        if not len(mine):
            continue
        positions = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in ranges])[perm[mine]]
        ascending = np.argsort(positions, kind="stable")
        order = np.empty_like(ascending)
        order[ascending] = np.arange(len(ascending))
        reads.append(ChunkRead(positions[ascending], order))
    return reads


@dataclass(frozen=True)
class _Ahead:
    """The next epoch's first read, done while this epoch ends."""

    key: tuple[int, int, int, int, int]  # epoch, steps, batch_size, world_size, rank
    positions: np.ndarray
    buffer: int


class StreamingFeeder:
    """The set stays where it is (memory-mapped shards, or any uint8 array) and moves in chunks.

    A background thread reads this rank's share of each chunk (into pinned memory on CUDA) while the
    previous one trains, and reads the next epoch's first share while this epoch ends; two buffers are
    alive at a time. With one chunk holding the whole set an epoch gives the in-memory batches.

    Args:
        images: uint8 (N, H, W, C), in memory or memory-mapped shards.
        device: The training device.
        chunk_images: The most images a chunk holds.
        seed: The run's seed (the chunk plan's and the read-ahead's).
        epochs: The run's epochs: no read-ahead past the last one (None: always read ahead).
    """

    streaming = True

    def __init__(self, images: ImageArray, device: torch.device, chunk_images: int, seed: int,
                 epochs: int | None = None) -> None:
        self.images = images
        self.n = len(images)
        self.device = device
        self.chunk_images = min(chunk_images, self.n)
        self.seed = seed
        self.epochs = epochs
        self.cuda = device.type == "cuda"
        self.images_read = 0  # what the reader thread has read so far, read-ahead included
        self._buffers: list[torch.Tensor] = []
        # Per buffer, the event of its last copy to the device: the reader waits for it before refilling.
        self._copied: list[torch.cuda.Event | None] = []
        self._reader: threading.Thread | None = None
        self._ahead: _Ahead | None = None

    def _draw(self, plan: list[list[tuple[int, int]]], g: torch.Generator) -> list[np.ndarray]:
        # On the device and up front, so that g's stream (rank 0's augmentations continue it) does not
        # depend on the chunk size or on when the chunks arrive; one copy to the host.
        perms = [torch.randperm(sum(hi - lo for lo, hi in c), generator=g, device=self.device) for c in plan]
        return [p.numpy() for p in torch.cat(perms).cpu().split([len(p) for p in perms])]

    def _next_first_read(self, epoch: int, steps: int, batch_size: int, world_size: int,
                         rank: int) -> _Ahead | None:
        """The first read of ``epoch``, as it will be drawn from :func:`epoch_generator`."""
        if self.epochs is not None and epoch >= self.epochs:
            return None
        plan = chunk_plan(self.n, self.chunk_images, self.seed, epoch)[:1]
        perm = torch.randperm(sum(hi - lo for lo, hi in plan[0]), device=self.device,
                              generator=epoch_generator(self.device, self.seed, epoch)).cpu().numpy()
        reads = rank_reads(plan, [perm], steps, batch_size, world_size, rank)
        if not reads:
            return None
        return _Ahead((epoch, steps, batch_size, world_size, rank), reads[0].positions, -1)

    def _ensure_buffers(self, capacity: int) -> None:
        if self._buffers and len(self._buffers[0]) >= capacity:
            return
        self._ahead = None
        shape = (capacity, *self.images.shape[1:])
        self._buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2)]
        self._copied = [None, None]

    def wait(self) -> None:
        """Block until the background reads are done (the next epoch's read-ahead included)."""
        if self._reader is not None:
            self._reader.join()
            self._reader = None

    def epoch(self, epoch: int, g: torch.Generator, steps: int, batch_size: int, world_size: int = 1,
              rank: int = 0) -> Iterator[torch.Tensor]:
        """See :meth:`Feeder.epoch`."""
        plan = chunk_plan(self.n, self.chunk_images, self.seed, epoch)
        reads = rank_reads(plan, self._draw(plan, g), steps, batch_size, world_size, rank)
        nxt = self._next_first_read(epoch + 1, steps, batch_size, world_size, rank)
        self.wait()
        self._ensure_buffers(max([len(r.positions) for r in reads]
                                 + ([len(nxt.positions)] if nxt is not None else [0])))
        ahead, self._ahead = self._ahead, None
        key = (epoch, steps, batch_size, world_size, rank)
        if ahead is not None and not (reads and ahead.key == key and np.array_equal(ahead.positions,
                                                                                    reads[0].positions)):
            ahead = None  # another order than foreseen (a generator of the caller's own): read it again
        free: queue.Queue[int | None] = queue.Queue()
        for i in range(len(self._buffers)):
            if ahead is None or i != ahead.buffer:
                free.put(i)
        ready: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        stop = threading.Event()
        jobs = reads[1:] if ahead is not None else reads
        self._reader = threading.Thread(target=self._produce, args=(jobs, nxt, free, ready, stop), daemon=True,
                                        name="chunk-reader")
        self._reader.start()
        done = False
        try:
            yield from self._batches(reads, ahead, free, ready, batch_size)
            done = True
        finally:
            if not done:  # stopped early (an exception, a pruned trial): no read-ahead survives
                stop.set()
                free.put(None)  # wakes a reader waiting for a buffer
                self.wait()
                self._ahead = None
                if self.cuda:
                    torch.cuda.synchronize(self.device)

    def _take(self, free: queue.Queue[int | None], stop: threading.Event) -> int | None:
        i = free.get()
        if i is None or stop.is_set():
            return None
        event = self._copied[i]
        if event is not None:
            event.synchronize()  # the device copy out of this pinned buffer has finished
        return i

    def _read(self, positions: np.ndarray, i: int) -> None:
        out = self._buffers[i].numpy()[:len(positions)]
        if isinstance(self.images, ShardedImages):
            self.images.take_into(positions, out)
        else:
            # mode="clip" writes straight into ``out`` ("raise" buffers a copy); positions come from the plan.
            np.take(self.images, positions, axis=0, out=out, mode="clip")
        self.images_read += len(positions)

    def _produce(self, jobs: list[ChunkRead], nxt: _Ahead | None, free: queue.Queue[int | None],
                 ready: queue.Queue[tuple[int, BaseException | None]], stop: threading.Event) -> None:
        try:
            for job in jobs:
                i = self._take(free, stop)
                if i is None:
                    return
                self._read(job.positions, i)
                ready.put((i, None))
        except BaseException as exc:  # handed to the training thread, which raises it
            ready.put((-1, exc))
            return
        if nxt is None:
            return
        i = self._take(free, stop)
        if i is None:
            return
        try:
            self._read(nxt.positions, i)
        except Exception:  # noqa: BLE001 - a failed read-ahead is redone (and raises) in its own epoch
            return
        self._ahead = _Ahead(nxt.key, nxt.positions, i)

    def _batches(self, reads: list[ChunkRead], ahead: _Ahead | None, free: queue.Queue[int | None],
                 ready: queue.Queue[tuple[int, BaseException | None]], batch_size: int) -> Iterator[torch.Tensor]:
        pieces: list[torch.Tensor] = []
        have = 0
        for n, read in enumerate(reads):
            if n == 0 and ahead is not None:
                i = ahead.buffer
            else:
                i, error = ready.get()
                if error is not None:
                    raise error
            k = len(read.positions)
            if self.cuda:
                chunk = self._buffers[i][:k].to(self.device, non_blocking=True)
                order = torch.from_numpy(read.order).to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._copied[i] = event
                free.put(i)
            else:
                chunk, order = self._buffers[i][:k], torch.from_numpy(read.order)
            o = 0
            while o < k:
                take = min(batch_size - have, k - o)
                pieces.append(chunk[order[o:o + take]])  # a copy: the buffer may be refilled after it
                have, o = have + take, o + take
                if have == batch_size:
                    yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                    pieces, have = [], 0
            if not self.cuda:
                free.put(i)  # on the CPU the chunk is the buffer: free it only now


def wants_streaming(images: ImageArray, cfg: DataFeedConfig) -> bool:
    """Whether to stream: ``pretrain.data.streaming``, or with ``auto`` whether the set exceeds the budget.

    Args:
        images: uint8 (N, H, W, C).
        cfg: ``pretrain.data``.

    Returns:
        True to stream.
    """
    if cfg.streaming != "auto":
        return cfg.streaming == "on"
    return int(np.prod(images.shape)) > cfg.memory_budget_gb * 2**30


def make_feeder(images: ImageArray, cfg: DataFeedConfig, device: torch.device, seed: int,
                epochs: int | None = None) -> Feeder:
    """The feeder ``pretrain.data`` asks for.

    Args:
        images: uint8 (N, H, W, C), in memory or memory-mapped shards.
        cfg: ``pretrain.data``.
        device: The training device.
        seed: The run's seed.
        epochs: The run's epochs (a streaming feeder reads no further ahead); None: unknown.

    Returns:
        A :class:`StreamingFeeder` when :func:`wants_streaming`, else an :class:`InMemoryFeeder`.
    """
    if wants_streaming(images, cfg):
        return StreamingFeeder(images, device, cfg.chunk_images, seed, epochs)
    return InMemoryFeeder(images, device)
