"""Throughput of the batched SimCLR augmentation: images per second for one view.

    .venv/bin/python bench/augment.py [--device cuda] [--iters N] [--warmup 3] [--threads T]

A training step makes two views per image, so the augmentation cost of a step is 2 * batch / rate.
Synchronising after every call (to time calls one by one) costs a little CUDA throughput: the figure
is a lower bound there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import AugmentConfig  # noqa: E402
from pipeline.engine.augment import ViewAugmentation, make_generator  # noqa: E402

# (name, batch, channels, side, config): CIFAR-like RGB with every op on, and digits-like grey.
CASES = [
    ("rgb 32x32x3, all ops", 512, 3, 32, AugmentConfig(hflip_prob=0.5, blur_prob=0.5)),
    ("rgb 32x32x3, fixed jitter order", 512, 3, 32,
     AugmentConfig(hflip_prob=0.5, blur_prob=0.5, jitter_random_order=False)),
    ("grey 8x8x1, defaults", 256, 1, 8, AugmentConfig()),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(aug: ViewAugmentation, x: torch.Tensor, warmup: int, iters: int) -> tuple[float, float]:
    """(images/s over the whole timed run, images/s of the median call): the median resists the noise
    of a CPU shared with other work."""
    g = make_generator(0, x.device)
    for _ in range(warmup):
        aug(x, g)
    _sync(x.device)
    times = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        aug(x, g)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return iters * x.shape[0] / total, x.shape[0] / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default: 30 on CPU, 200 on CUDA)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = args.iters or (200 if device.type == "cuda" else 30)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {iters} timed calls after {args.warmup} warm-up")
    for label, batch, c, side, cfg in CASES:
        x = torch.rand(batch, c, side, side, device=device)
        rate, median_rate = bench(ViewAugmentation(cfg, side), x, args.warmup, iters)
        print(f"{label:32s} batch {batch:4d}: {rate:10,.0f} images/s (median call {median_rate:10,.0f};"
              f" {1e3 * batch / median_rate:6.2f} ms/call)")


if __name__ == "__main__":
    main()
