"""Training throughput of the real loop (augment + forward + backward + step), in images/s.

    python bench/train.py                                   # the CPU default: small backbone on 8x8x1
    python bench/train.py --backbone resnet18 --size 32 --channels 3 --batch 512 --n 10240   # the GPU recipe

It runs ``pipeline.train.train`` on random uint8 images and reports the last epoch's img/s (the first
epoch pays for warm-up: cuDNN autotuning, allocator growth).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pipeline.config import PretrainConfig
from pipeline.engine.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="small")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=1536, help="images per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--head", default="256,64", help="hidden widths then output width")
    args = ap.parse_args()

    *hidden, out = (int(v) for v in args.head.split(","))
    cfg = PretrainConfig.model_validate({
        "backbone": {"name": args.backbone, "width": args.width},
        "head": {"hidden_dims": hidden, "out_dim": out},
        "epochs": args.epochs, "batch_size": args.batch, "device": args.device, "precision": args.precision,
        "augment": {"hflip_prob": 0.5},
    })
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, args.size, args.size, args.channels), dtype=np.uint8)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, images, seed=0, progress=False)
    last = result.history[-1]
    report = {
        "backbone": args.backbone, "input": f"{args.size}x{args.size}x{args.channels}", "batch": args.batch,
        "device": (torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "img_per_s": round(last["img_per_s"], 1),
        "epoch_seconds": round(last["epoch_seconds"], 3),
    }
    if torch.cuda.is_available() and args.device != "cpu":
        report["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
