"""Evaluation time of a frozen encoder: feature extraction + linear probe + kNN + spectrum, in seconds.

    python bench/evaluate.py                                   # digits-sized: small backbone, 1,437 + 360 of 8x8x1
    python bench/evaluate.py --backbone resnet18 --size 32 --channels 3 --train 50000 --test 10000   # CIFAR-10-sized

Runs :func:`pipeline.evaluation.evaluate_encoder` (the evaluate stage's code) on random uint8 images with
random labels, on the GPU when there is one, and prints each phase's time from its own timers.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline.config import EvaluateConfig
from pipeline.data.arrays import Split
from pipeline.data.preprocess import InputSpec
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.evaluation import evaluate_encoder
from pipeline.models import Encoder, EncoderSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="small")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--train", type=int, default=1437)
    ap.add_argument("--test", type=int, default=360)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--random-baseline", action="store_true", help="also evaluate a random twin (doubles it)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    shape = (args.size, args.size, args.channels)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, args.classes, n))

    train, val = train_val_split(split(args.train), 0.1, 0)
    test = split(args.test)
    c = args.channels
    spec = EncoderSpec(args.backbone, InputSpec(args.size, c, (0.5,) * c, (0.25,) * c), width=args.width,
                       head_hidden=[2048] if args.backbone != "small" else [256],
                       head_out=128 if args.backbone != "small" else 64)
    encoder = Encoder(spec).eval()
    cfg = EvaluateConfig(random_baseline=args.random_baseline)
    start = time.perf_counter()
    result = evaluate_encoder(encoder, train, val, test, args.classes, cfg, device, seed=0)
    total = time.perf_counter() - start
    print(json.dumps({
        "device": str(device), "backbone": args.backbone, "images": args.train + args.test,
        "shape": list(shape), **{k: round(v, 3) for k, v in result.timings.items()}, "wall_seconds": round(total, 3),
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
