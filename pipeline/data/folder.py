"""An image folder: ``root/<class>/<images>`` (sorted sub-folder names are the classes), or
``root/train/<class>/...`` + ``root/test/<class>/...`` as an official split.

Any file PIL reads is an image. Images become RGB, or L when every one is greyscale; when sizes differ,
``image_size`` is required and every image is resized to that square by the shared :func:`fit_image`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.arrays import Dataset, Split
from pipeline.data.errors import DataError, one_line
from pipeline.data.preprocess import InputSpec, convert_channels, fit_image
from pipeline.data.splits import stratified_split

log = logging.getLogger(__name__)

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Decoding errors PIL raises for unreadable, truncated or hostile files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass
class _Files:
    paths: list[Path]
    labels: np.ndarray  # int64, index into the class list

    def subset(self, idx: np.ndarray) -> _Files:
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
    """(width, height) and whether the file is greyscale, from the header alone."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode in GREY_MODES
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: not a readable image ({one_line(exc)})") from exc


def _grey8(im: Image.Image) -> np.ndarray:
    if im.mode == "I" or im.mode.startswith("I;16"):
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling, which would blow out 16-bit scans.
        return np.floor(np.asarray(im, dtype=np.float64) / 257.0 + 0.5).clip(0, 255).astype(np.uint8)
    return np.array(im.convert("L"))


def _decode(path: Path) -> np.ndarray:
    """uint8 (H, W) for greyscale files, (H, W, 3) for the rest."""
    try:
        with Image.open(path) as im:
            im.load()
            # np.array copies: a read-only view of PIL memory would make torch warn inside fit_image
            return _grey8(im) if im.mode in GREY_MODES else np.array(im.convert("RGB"))
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: corrupt or unreadable image ({one_line(exc)})") from exc


def _read(files: _Files, shape: tuple[int, int, int], image_size: int | None, desc: str, progress: bool) -> Split:
    """Decode into one preallocated uint8 (N, H, W, C) array."""
    channels = shape[2]
    spec = InputSpec(image_size, channels, (0.0,) * channels, (1.0,) * channels) if image_size else None
    images = np.empty((len(files.paths), *shape), dtype=np.uint8)
    for i, path in enumerate(tqdm(files.paths, desc=desc, unit="img", disable=not progress, leave=False)):
        raw = _decode(path)
        image = fit_image(raw, spec) if spec is not None else convert_channels(raw, channels)
        if image.shape != shape:  # a header that lied about the size
            raise DataError(f"{path}: decoded to {image.shape}, expected {shape}")
        images[i] = image
    return Split(images, files.labels)


def load_folder(root: str | Path, image_size: int | None, test_fraction: float, seed: int,
                progress: bool = False) -> Dataset:
    root = Path(root).expanduser()
    if image_size is not None and image_size < 1:
        raise DataError(f"{root}: prepare.image_size must be a positive side length, got {image_size}")
    extensions = set(Image.registered_extensions())
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

    train = _read(train_files, shape, image_size, "read train images", progress)
    test = _read(test_files, shape, image_size, "read test images", progress)
    extra = {"split": "official" if official else "stratified", "image_size": image_size, "skipped_files": skipped}
    if not official:
        extra |= {"test_fraction": test_fraction, "seed": seed}
    return Dataset(train=train, test=test, classes=classes, source="folder", extra=extra)
