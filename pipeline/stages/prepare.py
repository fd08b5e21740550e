"""The ``prepare`` stage: a data source -> versioned uint8 arrays (train.npz, test.npz, manifest.json), or
memory-mappable shards (``<split>/shard-*.npy``) for a set larger than ``prepare.shard_above_gb``."""

from __future__ import annotations

from pipeline.config import Params, PrepareConfig
from pipeline.data.format import save_dataset
from pipeline.data.sources import load_source


def summary(manifest: dict, out_dir: str) -> str:
    h, w, c = manifest["image_shape"]
    counts = manifest["counts"]
    layout = f", {sum(len(e['files']) for e in manifest['shards'].values())} shards" if "shards" in manifest else ""
    return (f"prepare: {manifest['source']}: {counts['train']} train / {counts['test']} test images of "
            f"{h}x{w}x{c}, {manifest['num_classes']} classes{layout}, dataset sha256 "
            f"{manifest['dataset_sha256']} -> {out_dir}")


def shard_images_for(cfg: PrepareConfig, nbytes: int) -> int | None:
    """Images per shard when this set is to be sharded, None for npz arrays."""
    if cfg.format == "shards" or (cfg.format == "auto" and nbytes > cfg.shard_above_gb * 2**30):
        return cfg.shard_images
    return None


def run(params: Params, args: object = None) -> None:
    cfg = params.prepare
    if cfg.source == "folder" and cfg.path is not None:
        # An image folder may not fit in memory: scan it first, then decode straight into shards.
        from pipeline.data.folder import read_folder, scan_folder, shard_folder

        scan = scan_folder(cfg.path, cfg.image_size, cfg.test_fraction, params.seed, progress=True)
        shard_images = shard_images_for(cfg, scan.nbytes)
        if shard_images:
            manifest = shard_folder(scan, cfg.out_dir, shard_images, cfg.workers, progress=True)
        else:
            manifest = save_dataset(read_folder(scan, cfg.workers, progress=True), cfg.out_dir)
    else:
        ds = load_source(cfg, params.seed, progress=True)
        nbytes = ds.train.images.nbytes + ds.test.images.nbytes
        # atomic: a failure leaves the previous output as it was
        manifest = save_dataset(ds, cfg.out_dir, shard_images_for(cfg, nbytes))
    print(summary(manifest, cfg.out_dir))
