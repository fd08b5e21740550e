"""An image folder: ``root/<class>/<images>`` (sorted sub-folder names are the classes), or
``root/train/<class>/...`` + ``root/test/<class>/...`` as an official split.

Files are decoded by :mod:`pipeline.data.decode`, the decoder the service and batch embedding use. Images
become RGB, or grey when every one is; when sizes differ, ``image_size`` is required and every image is
resized to that square by the shared :func:`fit_image`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.decode import FORMATS, DecodeError, decode_image, is_grey, open_image, oriented_size
from pipeline.data.errors import DataError
from pipeline.data.format import MANIFEST, Dataset, Split, manifest_for, staged_dir
from pipeline.data.preprocess import InputSpec, convert_channels, fit_image
from pipeline.data.shards import ShardedImages, ShardWriter
from pipeline.data.splits import stratified_split
from pipeline.io import write_json

log = logging.getLogger(__name__)

_DECODE_BATCH = 256  # images decoded per round of the thread pool


def image_extensions() -> set[str]:
    """The file extensions (lower case, with the dot) of the formats the decoder reads."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


@dataclass
class _Files:
    paths: list[Path]
    labels: np.ndarray  # int64, index into the class list

    def subset(self, idx: np.ndarray) -> _Files:
        """The files at ``idx``, in that order."""
        return _Files([self.paths[i] for i in idx], self.labels[idx])


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"{root}: image folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected <root>/<class>/<image files>)")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image files>)")
    return dirs


def _image_files(class_dir: Path, extensions: set[str]) -> tuple[list[Path], int]:
    """Image files under ``class_dir`` (recursively, sorted), and how many other files were skipped."""
    files, skipped = [], 0
    for p in sorted(class_dir.rglob("*")):
        if not p.is_file() or not _visible(p, class_dir):
            continue
        if p.suffix.lower() in extensions:
            files.append(p)
        else:
            skipped += 1
    if not files:
        raise DataError(f"{class_dir}: class folder holds no image files")
    return files, skipped


def _scan(root: Path, classes: list[str] | None, extensions: set[str]) -> tuple[list[str], _Files, int]:
    """Class names and files of one ``root/<class>/...`` tree; ``classes`` fixes the label order."""
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        for d in dirs:
            if d.name not in classes:
                raise DataError(f"{d}: class {d.name!r} is not among the training classes")
    paths: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for d in dirs:
        files, n_skipped = _image_files(d, extensions)
        paths += files
        labels += [classes.index(d.name)] * len(files)
        skipped += n_skipped
    return classes, _Files(paths, np.asarray(labels, dtype=np.int64)), skipped


def _probe(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) as a viewer shows the file, and whether it decodes to grey, from its header."""
    try:
        opened = open_image(path)
        with opened.image:
            return oriented_size(opened.image), is_grey(opened.image.mode)
    except DecodeError as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def _decode_fitted(path: Path, shape: tuple[int, int, int], spec: InputSpec | None) -> np.ndarray:
    try:
        raw = decode_image(path, spec.image_size if spec is not None else None)
    except DecodeError as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({exc})") from exc
    image = fit_image(raw, spec) if spec is not None else convert_channels(raw, shape[2])
    if image.shape != shape:  # a header that lied about the size
        raise DataError(f"{path}: decoded to {image.shape}, expected {shape}")
    return image


def _decoded(files: _Files, shape: tuple[int, int, int], image_size: int | None, workers: int, batch: int,
             desc: str, progress: bool) -> Iterator[np.ndarray]:
    """uint8 (<= batch, H, W, C) batches of the files in order, decoded by ``workers`` threads (PIL's
    decoders and the resize release the GIL); only a few batches are in memory at a time."""
    channels = shape[2]
    spec = InputSpec(image_size, channels, (0.0,) * channels, (1.0,) * channels) if image_size else None
    bar = tqdm(total=len(files.paths), desc=desc, unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lo in range(0, len(files.paths), batch):
            paths = files.paths[lo:lo + batch]
            yield np.stack(list(pool.map(lambda p: _decode_fitted(p, shape, spec), paths)))
            bar.update(len(paths))
    bar.close()


def _read(files: _Files, shape: tuple[int, int, int], image_size: int | None, workers: int, desc: str,
          progress: bool) -> Split:
    """Decode into one preallocated uint8 (N, H, W, C) array."""
    images = np.empty((len(files.paths), *shape), dtype=np.uint8)
    lo = 0
    for batch in _decoded(files, shape, image_size, workers, _DECODE_BATCH, desc, progress):
        images[lo:lo + len(batch)] = batch
        lo += len(batch)
    return Split(images, files.labels)


@dataclass
class FolderScan:
    """What a folder holds, from its listing and image headers alone (nothing decoded yet)."""

    classes: list[str]
    train: _Files
    test: _Files
    shape: tuple[int, int, int]
    image_size: int | None
    extra: dict

    @property
    def nbytes(self) -> int:
        """The decoded set's size in bytes."""
        return (len(self.train.paths) + len(self.test.paths)) * int(np.prod(self.shape))


def scan_folder(root: str | Path, image_size: int | None, test_fraction: float, seed: int,
                progress: bool = False) -> FolderScan:
    """List a folder and read every image's header (nothing is decoded): classes, split, shape.

    Args:
        root: ``root/<class>/<images>`` or ``root/train|test/<class>/<images>``.
        image_size: the square side to resize to; None keeps the size, which must then be the same for all
            (as a viewer shows them: EXIF orientation applied).
        test_fraction: the held-out share without an official split.
        seed: fixes that split.
        progress: show a tqdm bar.

    Raises:
        DataError: one line naming the file or folder and the problem.
    """
    root = Path(root).expanduser()
    if image_size is not None and image_size < 1:
        raise DataError(f"{root}: prepare.image_size must be a positive side length, got {image_size}")
    extensions = image_extensions()
    top = _class_dirs(root)
    names = [d.name for d in top]
    official = names == ["test", "train"]
    if not official and {"train", "test"} <= set(names):
        raise DataError(f"{root}: holds train/ and test/ beside other folders ({', '.join(names)}); use either "
                        f"<root>/train|test/<class>/ or <root>/<class>/ alone")
    if official:
        classes, train_files, skipped = _scan(root / "train", None, extensions)
        _, test_files, skipped_test = _scan(root / "test", classes, extensions)
        skipped += skipped_test
    else:
        classes, files, skipped = _scan(root, None, extensions)
        train_idx, test_idx = stratified_split(files.labels, test_fraction, seed)
        if len(test_idx) == 0:
            raise DataError(f"{root}: too few images to hold out a test set (every class has a single image)")
        train_files, test_files = files.subset(train_idx), files.subset(test_idx)
    if skipped:
        log.warning("%s: skipped %d file(s) that are not images by their extension", root, skipped)

    every = train_files.paths + test_files.paths
    sizes: dict[tuple[int, int], Path] = {}
    all_grey = True
    for path in tqdm(every, desc="scan images", unit="img", disable=not progress, leave=False):
        size, grey = _probe(path)
        sizes.setdefault(size, path)
        all_grey &= grey
    if image_size is None and len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(f"{p2}: is {s2[0]}x{s2[1]} but {p1} is {s1[0]}x{s1[1]}; set prepare.image_size "
                        f"to resize every image to one square side")
    channels = 1 if all_grey else 3
    if image_size is not None:
        shape = (image_size, image_size, channels)
    else:
        (w, h), = sizes
        shape = (h, w, channels)

    extra: dict[str, object] = {"split": "official" if official else "stratified", "image_size": image_size, "skipped_files": skipped}
    if not official:
        extra |= {"test_fraction": test_fraction, "seed": seed}
    return FolderScan(classes, train_files, test_files, shape, image_size, extra)


def read_folder(scan: FolderScan, workers: int | None = None, progress: bool = False) -> Dataset:
    """Decode every image of a scanned folder into memory."""
    workers = workers or os.cpu_count() or 1
    train = _read(scan.train, scan.shape, scan.image_size, workers, "read train images", progress)
    test = _read(scan.test, scan.shape, scan.image_size, workers, "read test images", progress)
    return Dataset(train=train, test=test, classes=scan.classes, source="folder", extra=scan.extra)


def shard_folder(scan: FolderScan, out_dir: str | Path, shard_images: int, workers: int | None = None,
                 progress: bool = False) -> dict:
    """Decode a scanned folder once, in parallel, straight into shards in ``out_dir`` (atomically);
    memory holds one shard and a few decoded batches whatever the folder's size. Returns the manifest."""
    workers = workers or os.cpu_count() or 1
    with staged_dir(out_dir) as tmp:
        entries, splits = {}, {}
        for name, files in (("train", scan.train), ("test", scan.test)):
            writer = ShardWriter(tmp, name, scan.shape, shard_images)
            for batch in _decoded(files, scan.shape, scan.image_size, workers, _DECODE_BATCH,
                                  f"shard {name} images", progress):
                writer.add(batch)
            entries[name] = writer.close(files.labels)
            splits[name] = Split(ShardedImages.open(tmp, entries[name]), files.labels)
        ds = Dataset(train=splits["train"], test=splits["test"], classes=scan.classes, source="folder",
                     extra=scan.extra)
        manifest = manifest_for(ds, entries)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def load_folder(root: str | Path, image_size: int | None, test_fraction: float, seed: int,
                progress: bool = False, workers: int | None = None) -> Dataset:
    """:func:`scan_folder` then :func:`read_folder`: the whole folder decoded into memory."""
    return read_folder(scan_folder(root, image_size, test_fraction, seed, progress), workers, progress)
