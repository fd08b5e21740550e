"""Data sets larger than memory: a split as uint8 ``.npy`` shards on disk, read memory-mapped.

Layout of a sharded split inside the prepared folder::

    <split>/shard-00000.npy ...   uint8 (n_i, H, W, C), n_i = prepare.shard_images except the last
    <split>/labels.npy            int64 (N,)

and its manifest entry ``manifest["shards"][<split>]`` = ``{"count", "image_shape", "shard_images",
"files": [{"file", "count", "sha256"}], "labels": {"file", "sha256"}}``. The split's sha256 is the hash
of its shape, its shards' hashes and its labels' hash, so a run's fingerprint costs no pass over the
pixels. :class:`ShardedImages` is the array-like the rest of the pipeline sees: ``len``, ``shape``,
``dtype``, slicing (a copy in memory) and fancy indexing (a lazy subset, as train/validation splits take).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.data.arrays import MANIFEST, REPREPARE, Dataset, Split, load_manifest, load_split
from pipeline.data.errors import DataError, one_line
from pipeline.errors import UserError

SHARD_PATTERN = "shard-{:05d}.npy"
LABELS = "labels.npy"


def _sha256(array: np.ndarray) -> str:
    h = hashlib.sha256(str(array.shape).encode())
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    # No temporary file per shard: shards are written into the staging folder of
    # arrays.staged_dir, which is swapped in whole or not at all.
    np.save(path, array)


class ShardWriter:
    """Appends uint8 (n, H, W, C) batches to ``<folder>/<split>/``, one shard file per ``shard_images``.

    Only one shard is ever held in memory, so a data set larger than memory can be written image by image.
    """

    def __init__(self, folder: str | Path, split: str, image_shape: tuple[int, int, int], shard_images: int) -> None:
        if shard_images < 1:
            raise ValueError(f"shard_images must be >= 1, got {shard_images}")
        self.split = split
        self.dir = Path(folder) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.shard_images = shard_images
        self.buffer = np.empty((shard_images, *self.image_shape), dtype=np.uint8)
        self.filled = 0
        self.files: list[dict] = []

    @property
    def count(self) -> int:
        return sum(f["count"] for f in self.files) + self.filled

    def add(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise UserError(f"{self.dir}: expected uint8 (n, {', '.join(map(str, self.image_shape))}) images, "
                             f"got {images.dtype} {images.shape}")
        while len(images):
            take = min(len(images), self.shard_images - self.filled)
            self.buffer[self.filled:self.filled + take] = images[:take]
            self.filled += take
            images = images[take:]
            if self.filled == self.shard_images:
                self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        shard = self.buffer[:self.filled]
        name = SHARD_PATTERN.format(len(self.files))
        _save_npy(self.dir / name, shard)
        self.files.append({"file": f"{self.split}/{name}", "count": int(self.filled), "sha256": _sha256(shard)})
        self.filled = 0

    def close(self, labels: np.ndarray) -> dict:
        """Write the last shard and the labels; return the split's manifest entry."""
        self._flush()
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (self.count,):
            raise UserError(f"{self.dir}: {labels.shape[0]} labels for {self.count} images")
        _save_npy(self.dir / LABELS, labels)
        return {"count": self.count, "image_shape": list(self.image_shape), "shard_images": self.shard_images,
                "files": self.files, "labels": {"file": f"{self.split}/{LABELS}", "sha256": _sha256(labels)}}


def entry_sha256(entry: dict) -> str:
    """The split's hash from its manifest entry alone (shape, shard hashes, labels hash)."""
    h = hashlib.sha256(str((entry["count"], *entry["image_shape"])).encode())
    for f in entry["files"]:
        h.update(f["sha256"].encode())
    h.update(entry["labels"]["sha256"].encode())
    return h.hexdigest()


def write_split(folder: str | Path, name: str, split: Split, shard_images: int) -> dict:
    """An in-memory split as shards (the digits and CIFAR sources load whole, then shard)."""
    writer = ShardWriter(folder, name, split.images.shape[1:], shard_images)
    for lo in range(0, len(split), shard_images):
        writer.add(np.asarray(split.images[lo:lo + shard_images]))
    return writer.close(split.labels)


class ShardedImages:
    """uint8 (N, H, W, C) images over memory-mapped shards, optionally a subset (``index``) of them.

    ``x[a:b]`` reads those images into a new in-memory array; ``x[idx]`` with an integer array is a lazy
    subset (nothing read). Reads of sorted positions touch each shard's pages in order.
    """

    def __init__(self, shards: list[np.ndarray], index: np.ndarray | None = None, digest: str = "") -> None:
        if not shards:
            raise ValueError("a sharded split needs at least one shard")
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.index = index
        # Stands for the pixels in run fingerprints (the manifest's hash; a subset adds its index).
        self.digest = digest
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        n = int(self.offsets[-1]) if index is None else len(index)
        self.shape = (n, *shards[0].shape[1:])

    @classmethod
    def open(cls, data_dir: str | Path, entry: dict) -> ShardedImages:
        data_dir = Path(data_dir)
        shards = []
        shape = tuple(entry["image_shape"])
        for f in entry["files"]:
            path = data_dir / f["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard listed in {data_dir / MANIFEST} is missing ({REPREPARE})")
            try:
                shard = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"{path}: unreadable shard ({one_line(exc)[:160]}); {REPREPARE}") from exc
            if shard.dtype != np.uint8 or shard.shape != (f["count"], *shape):
                raise DataError(f"{path}: holds {shard.dtype} {shard.shape}, the manifest says uint8 "
                                f"{(f['count'], *shape)}; {REPREPARE}")
            shards.append(shard)
        return cls(shards, digest=entry_sha256(entry))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - numpy's protocol
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: slice | np.ndarray | list[int]) -> np.ndarray | ShardedImages:
        if isinstance(key, slice):
            lo, hi, step = key.indices(len(self))
            if step != 1:
                raise IndexError("sharded images take contiguous slices only")
            out = np.empty((max(0, hi - lo), *self.shape[1:]), dtype=np.uint8)
            self.read_into(lo, hi, out)
            return out
        idx = np.asarray(key, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("sharded images take slices or 1-d integer index arrays")
        index = idx if self.index is None else self.index[idx]
        digest = hashlib.sha256(self.digest.encode() + memoryview(np.ascontiguousarray(index)).cast("B")).hexdigest()
        return ShardedImages(self.shards, index, digest)

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Copy positions [lo, hi) into ``out[:hi - lo]`` (the feeder's chunk buffers)."""
        if self.index is None:
            self._copy_global(lo, hi, out)
            return
        ids = self.index[lo:hi]
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        for s in np.unique(which):
            at = np.flatnonzero(which == s)
            out[at] = self.shards[s][ids[at] - self.offsets[s]]

    def _copy_global(self, lo: int, hi: int, out: np.ndarray) -> None:
        first = int(np.searchsorted(self.offsets, lo, side="right") - 1)
        o = 0
        for s in range(first, len(self.shards)):
            start = self.offsets[s]
            if start >= hi:
                break
            a, b = max(lo, start) - start, min(hi, self.offsets[s + 1]) - start
            out[o:o + b - a] = self.shards[s][a:b]
            o += b - a


def is_sharded(manifest: dict) -> bool:
    return "shards" in manifest


def open_split(data_dir: str | Path, name: str, manifest: dict | None = None) -> Split:
    """A prepared split, memory-mapped when ``prepare`` sharded it, the (checked) npz arrays otherwise.

    Shards are checked for their count and shape, not re-hashed: the manifest's hashes name the data.
    """
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    if not is_sharded(manifest):
        return load_split(data_dir, name, manifest)
    entry = manifest["shards"].get(name)
    if entry is None:
        raise DataError(f"{Path(data_dir) / MANIFEST}: no shards for the {name!r} split; {REPREPARE}")
    path = Path(data_dir) / entry["labels"]["file"]
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable labels ({one_line(exc)[:160]}); {REPREPARE}") from exc
    return Split(ShardedImages.open(data_dir, entry), labels)  # type: ignore[arg-type]


def open_dataset(data_dir: str | Path) -> Dataset:
    """Both splits of a prepared folder, as :func:`open_split` gives them."""
    manifest = load_manifest(data_dir)
    return Dataset(train=open_split(data_dir, "train", manifest), test=open_split(data_dir, "test", manifest),
                   classes=manifest["classes"], source=manifest["source"], extra=manifest.get("extra", {}))


def image_bytes(images: np.ndarray | ShardedImages) -> int:
    return int(np.prod(images.shape))
