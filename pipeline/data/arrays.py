"""The prepared data set on disk: ``train.npz``, ``test.npz`` and ``manifest.json`` in one folder.

Images are uint8 arrays of shape (N, H, W, C); labels int64 of shape (N,). The manifest records the
source, class names, counts, shape and a sha256 of each split's arrays, so every run can name exactly
the data it saw.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.errors import DataError, one_line
from pipeline.io import ordinary_mode, read_json, write_json

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


def manifest_for(ds: Dataset, shards: dict[str, dict] | None = None) -> dict:
    """The manifest; with ``shards`` (split -> shard entry) the hashes come from the shards' own."""
    if shards is not None:
        from pipeline.data.shards import entry_sha256

        shas = {name: entry_sha256(shards[name]) for name in SPLITS}
    else:
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
        **({"shards": shards} if shards is not None else {}),
    }


@contextmanager
def staged_dir(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to build the data set in; swapped in only if the block succeeds."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    ordinary_mode(tmp)
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_dataset(ds: Dataset, out_dir: str | Path, shard_images: int | None = None) -> dict:
    """Write the data set to ``out_dir`` atomically: build it in a temporary sibling, then swap it in.

    With ``shard_images``, each split is written as memory-mappable shards (:mod:`pipeline.data.shards`)
    instead of one npz.
    """
    with staged_dir(out_dir) as tmp:
        shards = None
        if shard_images:
            from pipeline.data.shards import write_split

            shards = {name: write_split(tmp, name, getattr(ds, name), shard_images) for name in SPLITS}
        else:
            for name in SPLITS:
                split = getattr(ds, name)
                np.savez(tmp / f"{name}.npz", images=split.images, labels=split.labels)
        manifest = manifest_for(ds, shards)
        write_json(tmp / MANIFEST, manifest)
    return manifest


# The way out of every bad prepared file: prepare rewrites the whole folder.
REPREPARE = "rerun the prepare stage (dvc repro -f prepare)"
# What np.load and reading an npz member raise on a truncated, corrupt or foreign file.
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)
# What prepare writes into a manifest and later stages read from it.
_MANIFEST_KEYS = ("source", "classes", "num_classes", "image_shape", "counts", "sha256", "dataset_sha256")


def _bad(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {REPREPARE}")


def load_split(data_dir: str | Path, name: str, manifest: dict | None = None) -> Split:
    """A prepared split, checked: a readable npz with uint8 images and their labels, whose sha256 is the
    manifest's (``manifest`` as :func:`load_manifest` returned it; read from ``data_dir`` when None)."""
    path = Path(data_dir) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: prepared split not found (run the prepare stage first)")
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    try:
        # allow_pickle=False: a prepared split is plain arrays; an object array is not ours, never executed.
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise _bad(path, f"no {' or '.join(repr(k) for k in missing)} array (it holds {sorted(z.files)})")
            images, labels = z["images"], z["labels"]
    except _NPZ_ERRORS as exc:
        if isinstance(exc, DataError):
            raise
        raise _bad(path, f"not a readable npz archive, truncated or corrupt ({type(exc).__name__}: "
                         f"{one_line(exc)[:160]})") from exc
    try:
        split = Split(images, labels)
    except ValueError as exc:
        raise _bad(path, one_line(exc)) from exc
    expected = manifest["sha256"].get(name)
    if expected is None:
        raise _bad(path.with_name(MANIFEST), f"no sha256 for the {name!r} split")
    if split_sha256(split) != expected:
        raise _bad(path, f"its arrays do not match the sha256 in {path.with_name(MANIFEST)} (changed or "
                         "corrupted since prepare wrote them)")
    return split


def load_manifest(data_dir: str | Path) -> dict:
    """``manifest.json``, checked for the keys the stages read."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found (run the prepare stage first)")
    try:
        manifest = read_json(path)
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _bad(path, f"not valid JSON ({one_line(exc)[:160]})") from exc
    if not isinstance(manifest, dict):
        raise _bad(path, f"expected a JSON object, got {type(manifest).__name__}")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise _bad(path, f"missing {', '.join(missing)}")
    if not isinstance(manifest["sha256"], dict) or not isinstance(manifest["classes"], list):
        raise _bad(path, "'sha256' must be an object and 'classes' a list")
    return manifest


def load_dataset(data_dir: str | Path) -> Dataset:
    manifest = load_manifest(data_dir)
    return Dataset(
        train=load_split(data_dir, "train", manifest),
        test=load_split(data_dir, "test", manifest),
        classes=manifest["classes"],
        source=manifest["source"],
        extra=manifest.get("extra", {}),
    )
