"""The ``prepare`` stage: a data source -> versioned uint8 arrays (train.npz, test.npz, manifest.json)."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.data.arrays import save_dataset
from pipeline.data.sources import load_source


def summary(manifest: dict, out_dir: str) -> str:
    h, w, c = manifest["image_shape"]
    counts = manifest["counts"]
    return (f"prepare: {manifest['source']}: {counts['train']} train / {counts['test']} test images of "
            f"{h}x{w}x{c}, {manifest['num_classes']} classes, dataset sha256 {manifest['dataset_sha256']} "
            f"-> {out_dir}")


def run(params: Params, args: object = None) -> None:
    cfg = params.prepare
    ds = load_source(cfg, params.seed, progress=True)
    manifest = save_dataset(ds, cfg.out_dir)  # atomic: a failure leaves the previous output as it was
    print(summary(manifest, cfg.out_dir))
