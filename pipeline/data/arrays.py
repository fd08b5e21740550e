"""The prepared data set on disk: ``train.npz``, ``test.npz`` and ``manifest.json`` in one folder.

Images are uint8 arrays of shape (N, H, W, C); labels int64 of shape (N,). The manifest records the
source, class names, counts, shape and a sha256 of each split's arrays, so every run can name exactly
the data it saw.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.io import read_json, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "test")


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    source: str
    extra: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train.images.shape[1:])  # type: ignore[return-value]


def split_sha256(split: Split) -> str:
    h = hashlib.sha256()
    h.update(str(split.images.shape).encode())
    # Hash the buffers in place: .tobytes() would copy a CIFAR-sized array for nothing.
    h.update(memoryview(np.ascontiguousarray(split.images)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(split.labels)).cast("B"))
    return h.hexdigest()


def manifest_for(ds: Dataset) -> dict:
    shas = {name: split_sha256(getattr(ds, name)) for name in SPLITS}
    return {
        "source": ds.source,
        "classes": list(ds.classes),
        "num_classes": len(ds.classes),
        "image_shape": list(ds.image_shape),
        "counts": {name: len(getattr(ds, name)) for name in SPLITS},
        "sha256": shas,
        "dataset_sha256": hashlib.sha256("".join(shas[s] for s in SPLITS).encode()).hexdigest(),
        **({"extra": ds.extra} if ds.extra else {}),
    }


def save_dataset(ds: Dataset, out_dir: str | Path) -> dict:
    """Write the data set to ``out_dir`` atomically: build it in a temporary sibling, then swap it in."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in SPLITS:
            split = getattr(ds, name)
            np.savez(tmp / f"{name}.npz", images=split.images, labels=split.labels)
        manifest = manifest_for(ds)
        write_json(tmp / MANIFEST, manifest)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_split(data_dir: str | Path, name: str) -> Split:
    path = Path(data_dir) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: prepared split not found (run the prepare stage first)")
    with np.load(path) as z:
        return Split(z["images"], z["labels"])


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found (run the prepare stage first)")
    return read_json(path)


def load_dataset(data_dir: str | Path) -> Dataset:
    manifest = load_manifest(data_dir)
    return Dataset(
        train=load_split(data_dir, "train"),
        test=load_split(data_dir, "test"),
        classes=manifest["classes"],
        source=manifest["source"],
        extra=manifest.get("extra", {}),
    )
