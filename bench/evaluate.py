"""Evaluation time: exactly the evaluate stage's work, with the params it reads, in seconds.

    python bench/evaluate.py                          # params.yaml; the prepared data and pretrained encoder
                                                      # when `make run` made them, else digits + a fresh encoder
    python bench/evaluate.py --repeats 5 --params other.yaml
    python bench/evaluate.py --synthetic 50000,32,3 --backbone resnet18      # CIFAR-10-sized

What is timed is the stage body without its MLflow logging: open the prepared splits (memory-mapped
when sharded), carve validation from train (``evaluate.val_fraction``, ``seed``), evaluate the encoder
with ``evaluate.*`` (feature extraction, linear probe with its weight-decay search, kNN, spectrum; all
of it again for the random-init reference when ``evaluate.random_baseline`` is on, as it is by
default), on ``pretrain.device`` with ``pretrain.num_threads``, and write the metrics and plots (into a
temporary folder). Each phase's median and spread (min-max) over ``--repeats`` runs. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Params, load_params
from pipeline.data.format import Dataset, Split, load_dataset
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.engine.trainer import build_encoder
from pipeline.evaluation import evaluate_encoder
from pipeline.evaluation.plots import write_plots
from pipeline.io import write_json
from pipeline.models import ENCODER_FILE, Encoder, load_encoder


def load_inputs(params: Params, args: argparse.Namespace) -> tuple[Dataset, Encoder, str]:
    data_dir = Path(params.prepare.out_dir)
    model = Path(params.pretrain.out_dir) / ENCODER_FILE
    if args.synthetic:
        n, s, c = (int(v) for v in args.synthetic.split(","))
        rng = np.random.default_rng(0)

        def split(k: int) -> Split:
            return Split(rng.integers(0, 256, (k, s, s, c), dtype=np.uint8), rng.integers(0, 10, k))

        ds, source = Dataset(split(n), split(max(1, n // 5)), [str(i) for i in range(10)], "synthetic"), args.synthetic
    elif (data_dir / "manifest.json").exists():
        ds, source = load_dataset(data_dir), str(data_dir)
    else:
        from pipeline.data.digits import load_digits_dataset

        ds, source = load_digits_dataset(params.prepare.test_fraction, params.seed), "digits (not prepared)"
    if model.exists() and not args.synthetic and not args.backbone:
        return ds, load_encoder(model)[0], f"{source}; {model}"
    cfg = params.pretrain
    if args.backbone:
        cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"name": args.backbone})})
    torch.manual_seed(params.seed)
    return ds, build_encoder(cfg, ds.train.images).eval(), f"{source}; fresh {cfg.backbone.name} encoder"


def run_once(params: Params, ds: Dataset, encoder: Encoder, device: torch.device, out: Path) -> dict[str, float]:
    start = time.perf_counter()
    cfg = params.evaluate
    train, val = train_val_split(ds.train, cfg.val_fraction, params.seed)
    result = evaluate_encoder(encoder, train, val, ds.test, len(ds.classes), cfg, device, params.seed)
    write_json(out / "eval.json", result.metrics)
    write_plots(result, out / "plots", ds.classes)
    return {**result.timings, "stage_seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic", help="N,SIZE,CHANNELS random uint8 images (and N/5 test) instead")
    ap.add_argument("--backbone", help="a fresh encoder of this backbone instead of the pretrained one")
    args = ap.parse_args()
    params = load_params(args.params)
    if params.pretrain.num_threads:
        torch.set_num_threads(params.pretrain.num_threads)
    device = resolve_device(params.pretrain.device)
    ds, encoder, what = load_inputs(params, args)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            runs.append(run_once(params, ds, encoder, device, Path(tmp)))
    phases = {k: {"median": round(statistics.median(r[k] for r in runs), 3),
                  "min": round(min(r[k] for r in runs), 3), "max": round(max(r[k] for r in runs), 3)}
              for k in runs[0]}
    print(json.dumps({
        "device": str(device), "threads": torch.get_num_threads(), "inputs": what,
        "images": {"train": len(ds.train), "test": len(ds.test)}, "random_baseline": params.evaluate.random_baseline,
        "probe_epochs": params.evaluate.probe.epochs, "weight_decays": len(params.evaluate.probe.weight_decays),
        "repeats": args.repeats, "seconds": phases,
    }, indent=2))


if __name__ == "__main__":
    main()
