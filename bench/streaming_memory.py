"""Peak memory of pretraining on a set written as shards, streamed against loaded whole.

    python bench/streaming_memory.py                         # 50,000 x 32x32x3 (CIFAR-10-sized), 1 epoch
    python bench/streaming_memory.py --n 5000 --modes streaming

Writes a synthetic sharded set (random uint8 images, as ``prepare`` writes shards) into a temporary
folder, then for each mode runs one child process that (1) trains one epoch of the tiny model on 512
in-memory images of the same shape, the model's own peak (torch, the model, optimiser, activations),
and (2) trains one epoch on the whole sharded set; it reports the peak resident set size
(``ru_maxrss``) after each, and the difference: the memory the data costs. Prints JSON; never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_shards(folder: Path, n: int, size: int, shard_images: int) -> dict:
    from pipeline.data.shards import ShardWriter, entry_sha256

    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, "train", (size, size, 3), shard_images)
    for lo in range(0, n, shard_images):
        writer.add(rng.integers(0, 256, (min(shard_images, n - lo), size, size, 3), dtype=np.uint8))
    entry = writer.close(rng.integers(0, 10, n))
    entry["sha256"] = entry_sha256(entry)
    return entry


def child(folder: Path, mode: str, batch: int, chunk: int) -> dict:
    import torch

    from pipeline.config import PretrainConfig
    from pipeline.data.shards import ShardedImages
    from pipeline.engine.trainer import train

    torch.set_num_threads(1)
    entry = json.loads((folder / "entry.json").read_text())
    images = ShardedImages.open(folder, entry)
    cfg = PretrainConfig.model_validate({
        "backbone": {"name": "small", "width": 8}, "head": {"hidden_dims": [32], "out_dim": 16},
        "epochs": 1, "batch_size": batch, "device": "cpu", "data": {"streaming": mode, "chunk_images": chunk},
    })
    small = images[0:512]
    train(cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": "off"})}), small, progress=False)
    model_peak = peak_gib()
    t0 = time.perf_counter()
    hist = train(cfg, images, progress=False, data_digest=entry["sha256"]).history
    seconds = time.perf_counter() - t0
    return {"mode": mode, "model_peak_gib": round(model_peak, 3), "peak_gib": round(peak_gib(), 3),
            "data_gib_above_model": round(peak_gib() - model_peak, 3), "epoch_seconds": round(seconds, 1),
            "img_per_s": round(hist[-1]["img_per_s"], 1), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk-images", type=int, default=8192)
    ap.add_argument("--shard-images", type=int, default=4096)
    ap.add_argument("--modes", default="on,off", help="streaming on (shards, chunks) and/or off (loaded whole)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.folder), args.child, args.batch, args.chunk_images)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        entry = write_shards(folder, args.n, args.size, args.shard_images)
        (folder / "entry.json").write_text(json.dumps(entry))
        report: dict = {"images": f"{args.n}x{args.size}x{args.size}x3",
                        "data_gib": round(args.n * args.size**2 * 3 / 2**30, 3),
                        "write_seconds": round(time.perf_counter() - t0, 1), "runs": []}
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder),
                                  "--batch", str(args.batch), "--chunk-images", str(args.chunk_images)],
                                 capture_output=True, text=True, check=True)
            report["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
