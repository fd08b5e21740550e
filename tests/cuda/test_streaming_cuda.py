"""Streaming through pinned host buffers with non-blocking copies: the exact seeded order, and training
equal to the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine.feeding import InMemoryFeeder, StreamingFeeder, chunk_plan, epoch_generator
from pipeline.engine.trainer import train
from tests.cuda.common import CUDA, DEVICE, images, small_cfg

pytestmark = CUDA


def numbered(n: int) -> np.ndarray:
    """Images whose pixels spell their own index."""
    x = np.zeros((n, 2, 2, 1), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    return x


def ids(batch: torch.Tensor) -> list[int]:
    b = batch.long().cpu()
    return (b[:, 0, 0, 0] + 256 * b[:, 0, 1, 0]).tolist()


def expected_stream(n: int, chunk: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order from its definition: the chunks in plan order, each permuted by the epoch
    generator's draws (taken in chunk order)."""
    g = epoch_generator(DEVICE, seed, epoch)
    out: list[int] = []
    for ranges in chunk_plan(n, chunk, seed, epoch):
        positions = np.concatenate([np.arange(lo, hi) for lo, hi in ranges])
        perm = torch.randperm(len(positions), generator=g, device=DEVICE).cpu().numpy()
        out += positions[perm].tolist()
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_pinned_chunks_arrive_whole_and_in_the_seeded_order(world):
    # Many small chunks: every buffer is refilled while copies out of it may still be in flight.
    n, chunk, batch, seed = 2000, 96, 32, 3
    steps = n // (batch * world)
    for epoch in range(2):
        stream = expected_stream(n, chunk, seed, epoch)
        for rank in range(world):
            feeder = StreamingFeeder(numbered(n), DEVICE, chunk, seed, epochs=2)
            got = [ids(b) for b in feeder.epoch(epoch, epoch_generator(DEVICE, seed, epoch), steps, batch,
                                                world, rank)]
            want = [stream[(s * world + rank) * batch:(s * world + rank + 1) * batch] for s in range(steps)]
            assert got == want
            assert all(len(set(b)) == len(b) for b in got)  # no image twice in a batch


def test_one_pinned_chunk_gives_the_in_memory_batches():
    x = numbered(500)
    mem = InMemoryFeeder(x, DEVICE).epoch(0, epoch_generator(DEVICE, 1, 0), 15, 32)
    streamed = StreamingFeeder(x, DEVICE, 500, 1).epoch(0, epoch_generator(DEVICE, 1, 0), 15, 32)
    for a, b in zip(mem, streamed, strict=True):
        assert a.device.type == b.device.type == DEVICE.type and torch.equal(a, b)


def test_streamed_training_on_cuda_equals_in_memory(deterministic):
    data = images(256, side=16)
    mem = train(small_cfg(data={"streaming": "off"}), data, seed=0, progress=False)
    streamed = train(small_cfg(data={"streaming": "on", "chunk_images": 256}), data, seed=0, progress=False)
    assert [h["loss_total"] for h in streamed.history] == [h["loss_total"] for h in mem.history]
