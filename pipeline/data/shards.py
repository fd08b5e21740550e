"""Memory-mapped uint8 shards: how a split larger than memory is written and read.

A sharded split is ``<split>/shard-NNNNN.npy`` files of uint8 (n, H, W, C) and ``<split>/labels.npy``;
:mod:`pipeline.data.format` records each split's entry in the manifest and reads it through
:class:`ShardedImages`. This module imports nothing else of the pipeline's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, overload

import numpy as np

from pipeline.data.errors import REPREPARE, DataError, described
from pipeline.errors import UserError

SHARD_PATTERN = "shard-{:05d}.npy"
LABELS = "labels.npy"
LEVELS = 256  # uint8 pixel values

__all__ = ["ImageArray", "ShardWriter", "ShardedImages", "array_sha256", "entry_sha256", "level_counts",
           "write_shards"]


def array_sha256(array: np.ndarray) -> str:
    """The sha256 of an array's shape and bytes (C order).

    Args:
        array: Any numpy array; a non-contiguous one is copied first.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256(str(array.shape).encode())
    # The buffer in place: .tobytes() would copy a CIFAR-sized array for nothing.
    h.update(np.ascontiguousarray(array).data.cast("B"))
    return h.hexdigest()


def level_counts(images: np.ndarray) -> np.ndarray:
    """How often each pixel value occurs in each channel.

    Args:
        images: uint8 (n, H, W, C).

    Returns:
        int64 (C, 256): ``out[c, v]`` counts the pixels of channel ``c`` that equal ``v``.
    """
    c = images.shape[-1]
    flat = np.asarray(images).reshape(-1, c)
    return np.stack([np.bincount(flat[:, k], minlength=LEVELS) for k in range(c)]).astype(np.int64)


class ShardWriter:
    """Appends uint8 (n, H, W, C) batches to ``<folder>/<split>/``, one shard file per ``shard_images``.

    Only one shard is ever held in memory, so a data set larger than memory can be written image by image.
    The per-channel pixel histogram is counted on the way (:func:`level_counts`), so the training's
    normalisation statistics never need another pass over the pixels.

    Args:
        folder: The (staging) folder of the prepared data set.
        split: The split's name ("train", "test"): its sub-folder.
        image_shape: (H, W, C) of every image.
        shard_images: Images per shard file (the last one may hold fewer).

    Raises:
        ValueError: ``shard_images`` is below 1.
    """

    def __init__(self, folder: str | Path, split: str, image_shape: tuple[int, ...], shard_images: int) -> None:
        if shard_images < 1:
            raise ValueError(f"shard_images must be >= 1, got {shard_images}")
        self.split = split
        self.dir = Path(folder) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.shard_images = shard_images
        self.buffer = np.empty((shard_images, *self.image_shape), dtype=np.uint8)
        self.filled = 0
        self.files: list[dict[str, Any]] = []
        self.counts = np.zeros((self.image_shape[-1], LEVELS), dtype=np.int64)

    @property
    def count(self) -> int:
        """Images added so far."""
        return sum(f["count"] for f in self.files) + self.filled

    def add(self, images: np.ndarray) -> None:
        """Append a batch.

        Args:
            images: uint8 (n, H, W, C) at the writer's image shape.

        Raises:
            ValueError: Another dtype or image shape.
        """
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
        # No temporary file per shard: shards go into the staging folder of format.staged_dir, which is
        # swapped in whole or not at all.
        np.save(self.dir / name, shard)
        self.counts += level_counts(shard)
        self.files.append({"file": f"{self.split}/{name}", "count": int(self.filled), "sha256": array_sha256(shard)})
        self.filled = 0

    def close(self, labels: np.ndarray) -> dict[str, Any]:
        """Write the last shard and the labels.

        Args:
            labels: int (N,), one per image added.

        Returns:
            The split's manifest entry: ``count``, ``image_shape``, ``shard_images``, ``files`` (each
            ``file``, ``count``, ``sha256``), ``labels`` (``file``, ``sha256``) and ``level_counts``.

        Raises:
            ValueError: Not one label per image.
        """
        self._flush()
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (self.count,):
            raise UserError(f"{self.dir}: {labels.shape[0]} labels for {self.count} images")
        np.save(self.dir / LABELS, labels)
        return {"count": self.count, "image_shape": list(self.image_shape), "shard_images": self.shard_images,
                "files": self.files, "labels": {"file": f"{self.split}/{LABELS}", "sha256": array_sha256(labels)},
                "level_counts": self.counts.tolist()}


def entry_sha256(entry: dict[str, Any]) -> str:
    """A sharded split's hash from its manifest entry alone: shape, shard hashes and labels hash.

    Args:
        entry: The split's manifest entry (:meth:`ShardWriter.close`).

    Returns:
        The hex digest that stands for the split's pixels and labels.
    """
    h = hashlib.sha256(str((entry["count"], *entry["image_shape"])).encode())
    for f in entry["files"]:
        h.update(f["sha256"].encode())
    h.update(entry["labels"]["sha256"].encode())
    return h.hexdigest()


class ShardedImages:
    """uint8 (N, H, W, C) images over memory-mapped shards, optionally a subset (``index``) of them.

    The array-like the rest of the pipeline sees: ``len``, ``shape``, ``dtype``, ``x[a:b]`` (those images
    read into a new in-memory array), ``x[idx]`` with an integer array (a lazy subset: nothing read) and
    :meth:`take_into` (the streaming feeder's reads).

    Args:
        shards: The memory-mapped shard arrays, in order, all of one image shape.
        index: Positions into the concatenated shards that make this view; None for all of them.
        digest: Stands for the pixels in run fingerprints (the manifest's hash; a subset adds its index).
        counts: The (C, 256) pixel histogram of the whole split (:func:`level_counts`) when known; a
            subset drops it.

    Raises:
        ValueError: No shards.
    """

    def __init__(self, shards: list[np.ndarray], index: np.ndarray | None = None, digest: str = "",
                 counts: np.ndarray | None = None) -> None:
        if not shards:
            raise ValueError("a sharded split needs at least one shard")
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.index = index
        self.digest = digest
        self.level_counts = counts if index is None else None
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        n = int(self.offsets[-1]) if index is None else len(index)
        self.shape: tuple[int, ...] = (n, *shards[0].shape[1:])

    @classmethod
    def open(cls, data_dir: str | Path, entry: dict[str, Any]) -> ShardedImages:
        """Memory-map a split's shards, checking each one's dtype and shape (not its hash).

        Args:
            data_dir: The prepared folder.
            entry: The split's manifest entry.

        Returns:
            The split's images.

        Raises:
            FileNotFoundError: A listed shard is missing.
            DataError: A shard is unreadable or not what the manifest says.
        """
        data_dir = Path(data_dir)
        shards = []
        shape = tuple(entry["image_shape"])
        for f in entry["files"]:
            path = data_dir / f["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard listed in the manifest is missing ({REPREPARE})")
            try:
                shard = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # damaged files raise anything: pipeline/data/errors.py
                raise DataError(f"{path}: unreadable shard ({described(exc)}); {REPREPARE}") from exc
            if shard.dtype != np.uint8 or shard.shape != (f["count"], *shape):
                raise DataError(f"{path}: holds {shard.dtype} {shard.shape}, the manifest says uint8 "
                                f"{(f['count'], *shape)}; {REPREPARE}")
            shards.append(shard)
        counts = entry.get("level_counts")
        return cls(shards, digest=entry_sha256(entry),
                   counts=None if counts is None else np.asarray(counts, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes the images would take in memory."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)

    @overload
    def __getitem__(self, key: slice) -> np.ndarray: ...

    @overload
    def __getitem__(self, key: np.ndarray | list[int]) -> ShardedImages: ...

    def __getitem__(self, key: slice | np.ndarray | list[int]) -> np.ndarray | ShardedImages:
        """``x[a:b]``: a contiguous range read into memory; ``x[idx]``: a lazy subset.

        Raises:
            IndexError: A stepped slice, or an index array that is not 1-d.
        """
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
        digest = hashlib.sha256(self.digest.encode() + np.ascontiguousarray(index).data.cast("B")).hexdigest()
        return ShardedImages(self.shards, index, digest)

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Copy positions [lo, hi) of this view into ``out[:hi - lo]``.

        Args:
            lo: First position.
            hi: One past the last position.
            out: uint8 (>= hi - lo, H, W, C).
        """
        if self.index is None:
            self._copy_global(lo, hi, out)
        else:
            self._gather(self.index[lo:hi], out)

    def take_into(self, positions: np.ndarray, out: np.ndarray) -> None:
        """Copy the images at ``positions`` of this view into ``out[:len(positions)]``, in that order.

        Args:
            positions: int (k,) positions; ascending order reads each shard's pages in order.
            out: uint8 (>= k, H, W, C).
        """
        ids = np.asarray(positions, dtype=np.int64)
        self._gather(ids if self.index is None else self.index[ids], out)

    def _gather(self, ids: np.ndarray, out: np.ndarray) -> None:
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


# What a split's images may be: an in-memory array or memory-mapped shards.
ImageArray = np.ndarray | ShardedImages


def write_shards(folder: str | Path, name: str, images: ImageArray, labels: np.ndarray,
                 shard_images: int) -> dict[str, Any]:
    """An in-memory split as shards (the digits and CIFAR sources load whole, then shard).

    Args:
        folder: The (staging) folder of the prepared data set.
        name: The split's name.
        images: uint8 (N, H, W, C), in memory or sharded.
        labels: int (N,).
        shard_images: Images per shard file.

    Returns:
        The split's manifest entry (:meth:`ShardWriter.close`).
    """
    writer = ShardWriter(folder, name, images.shape[1:], shard_images)
    for lo in range(0, len(images), shard_images):
        writer.add(np.asarray(images[lo:lo + shard_images]))
    return writer.close(labels)
