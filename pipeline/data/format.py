"""The prepared data set on disk, and the one API that writes and reads it.

A prepared folder holds ``manifest.json`` and each split as one ``<split>.npz`` or as memory-mapped
shards (:mod:`pipeline.data.shards`); :func:`save_dataset` writes either, :func:`load_dataset` and
:func:`load_split` read either. The README's "Data larger than memory" describes the layout.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.errors import REPREPARE, DataError, described, one_line
from pipeline.data.shards import ImageArray, ShardedImages, entry_sha256, write_shards
from pipeline.io import ordinary_mode, read_json, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "test")

__all__ = ["MANIFEST", "REPREPARE", "SPLITS", "Dataset", "ImageArray", "Split", "load_dataset", "load_manifest",
           "load_split", "manifest_for", "save_dataset", "split_sha256", "staged_dir"]


@dataclass
class Split:
    """Images and their labels.

    Attributes:
        images: uint8 (N, H, W, C), in memory or memory-mapped shards.
        labels: int64 (N,), class indices.

    Raises:
        ValueError: Images that are not uint8 (N, H, W, C), or not one label per image.
    """

    images: ImageArray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> Split:
        """The images and labels at ``index`` (int (k,)); a lazy view of sharded images."""
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """A prepared data set: both splits, the class names, and where it came from.

    Attributes:
        train: The training split.
        test: The test split.
        classes: Class names; label ``i`` is ``classes[i]``.
        source: The source that made it ("digits", "cifar10", "folder", ...).
        extra: Source details for the manifest (the split's seed, the archive's name, ...).
    """

    train: Split
    test: Split
    classes: list[str]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        h, w, c = (int(s) for s in self.train.images.shape[1:])
        return h, w, c


def split_sha256(split: Split) -> str:
    """The sha256 of an in-memory split: its image shape, then its image and label bytes.

    Args:
        split: A split whose images are an in-memory array.

    Returns:
        The hex digest the manifest records.
    """
    h = hashlib.sha256()
    h.update(str(split.images.shape).encode())
    # Hash the buffers in place: .tobytes() would copy a CIFAR-sized array for nothing.
    h.update(np.ascontiguousarray(split.images).data.cast("B"))
    h.update(np.ascontiguousarray(split.labels).data.cast("B"))
    return h.hexdigest()


def manifest_for(ds: Dataset, shards: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest of a data set.

    Args:
        ds: The data set.
        shards: Split name -> shard entry (:meth:`pipeline.data.shards.ShardWriter.close`) when the splits
            were written as shards: the hashes then come from the entries, without a pass over the pixels.

    Returns:
        ``source``, ``classes``, ``num_classes``, ``image_shape``, ``counts``, ``sha256`` (per split),
        ``dataset_sha256``, and ``extra`` and ``shards`` when there are any.
    """
    if shards is not None:
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
    """A temporary sibling of ``out_dir`` to build a data set in, swapped in only if the block succeeds.

    Args:
        out_dir: The folder to replace.

    Yields:
        The staging folder; on success it becomes ``out_dir`` (the old one is removed), on an exception
        it is removed and ``out_dir`` stays as it was.
    """
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


def save_dataset(ds: Dataset, out_dir: str | Path, shard_images: int | None = None) -> dict[str, Any]:
    """Write a data set to ``out_dir`` atomically (built in a temporary sibling, then swapped in).

    Args:
        ds: The data set (in-memory arrays).
        out_dir: The prepared folder.
        shard_images: Write each split as memory-mappable shards of this many images; None: one npz each.

    Returns:
        The manifest written.
    """
    with staged_dir(out_dir) as tmp:
        shards = None
        if shard_images:
            shards = {name: write_shards(tmp, name, getattr(ds, name).images, getattr(ds, name).labels,
                                         shard_images) for name in SPLITS}
        else:
            for name in SPLITS:
                split = getattr(ds, name)
                np.savez(tmp / f"{name}.npz", images=split.images, labels=split.labels)
        manifest = manifest_for(ds, shards)
        write_json(tmp / MANIFEST, manifest)
    return manifest


# What prepare writes into a manifest and later stages read from it.
_MANIFEST_KEYS = ("source", "classes", "num_classes", "image_shape", "counts", "sha256", "dataset_sha256")


def _bad(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {REPREPARE}")


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a prepared folder, checked for the keys the stages read.

    Args:
        data_dir: The prepared folder.

    Returns:
        The manifest (:func:`manifest_for`).

    Raises:
        FileNotFoundError: No manifest (prepare has not run).
        DataError: Not JSON, not an object, or keys missing.
    """
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


def _load_npz(data_dir: Path, name: str, manifest: dict[str, Any]) -> Split:
    path = data_dir / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: prepared split not found (run the prepare stage first)")
    try:
        # allow_pickle=False: a prepared split is plain arrays; an object array is not ours, never executed.
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise _bad(path, f"no {' or '.join(repr(k) for k in missing)} array (it holds {sorted(z.files)})")
            images, labels = z["images"], z["labels"]
    except DataError:
        raise
    except Exception as exc:  # damaged files raise anything: pipeline/data/errors.py
        raise _bad(path, f"not a readable npz archive, truncated or corrupt ({described(exc)})") from exc
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


def _open_shards(data_dir: Path, name: str, manifest: dict[str, Any]) -> Split:
    entry = manifest["shards"].get(name)
    if entry is None:
        raise DataError(f"{data_dir / MANIFEST}: no shards for the {name!r} split; {REPREPARE}")
    path = data_dir / entry["labels"]["file"]
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:  # damaged files raise anything: pipeline/data/errors.py
        raise DataError(f"{path}: unreadable labels ({described(exc)}); {REPREPARE}") from exc
    try:
        return Split(ShardedImages.open(data_dir, entry), labels)
    except DataError:
        raise
    except ValueError as exc:
        raise _bad(path, one_line(exc)) from exc


def load_split(data_dir: str | Path, name: str, manifest: dict[str, Any] | None = None) -> Split:
    """One prepared split, whichever format prepare wrote.

    An npz split is read into memory and checked against the manifest's sha256; a sharded split is
    memory-mapped and each shard checked for its count and shape, not re-hashed (the manifest's hashes
    name the data, so a run's fingerprint costs no pass over the pixels).

    Args:
        data_dir: The prepared folder.
        name: "train" or "test".
        manifest: The folder's manifest as :func:`load_manifest` returned it; read when None.

    Returns:
        The split (its images a :class:`~pipeline.data.shards.ShardedImages` when sharded).

    Raises:
        FileNotFoundError: The manifest, the npz or a shard is missing.
        DataError: A file is unreadable, or not what the manifest says.
    """
    data_dir = Path(data_dir)
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    if "shards" in manifest:
        return _open_shards(data_dir, name, manifest)
    return _load_npz(data_dir, name, manifest)


def load_dataset(data_dir: str | Path) -> Dataset:
    """Both splits of a prepared folder, as :func:`load_split` reads them, with its classes and source.

    Args:
        data_dir: The prepared folder.

    Returns:
        The data set.

    Raises:
        FileNotFoundError: The manifest or a split's file is missing.
        DataError: A file is unreadable, or not what the manifest says.
    """
    manifest = load_manifest(data_dir)
    return Dataset(train=load_split(data_dir, "train", manifest), test=load_split(data_dir, "test", manifest),
                   classes=manifest["classes"], source=manifest["source"], extra=manifest.get("extra", {}))
