"""CIFAR-10 / CIFAR-100 read straight from the official python archives (``cifar-1*-python.tar.gz``).

Each batch member is a pickle of a dict with ``b"data"``: uint8 (N, 3072), one row per image holding the
R, G and B planes of 32x32 pixels in row-major order, and the labels under ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100). The archive is read in one pass with :mod:`tarfile`; nothing is extracted.
"""

from __future__ import annotations

import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from pipeline.data.errors import DataError, described, one_line
from pipeline.data.format import Dataset, Split

log = logging.getLogger(__name__)

SIDE = 32
PLANE = SIDE * SIDE
ROW = 3 * PLANE
DEFAULT_RAW_DIR = Path("data/raw")  # where a download goes when prepare.path is not set


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant keeps its images, labels and class names inside its official archive."""

    source: str
    archive: str  # official archive file name
    train_members: tuple[str, ...]  # in the order their images are concatenated
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes
    torchvision_class: str


CIFAR10 = CifarFormat(
    source="cifar10",
    archive="cifar-10-python.tar.gz",
    train_members=tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    test_member="cifar-10-batches-py/test_batch",
    meta_member="cifar-10-batches-py/batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    torchvision_class="CIFAR10",
)
CIFAR100 = CifarFormat(
    source="cifar100",
    archive="cifar-100-python.tar.gz",
    train_members=("cifar-100-python/train",),
    test_member="cifar-100-python/test",
    meta_member="cifar-100-python/meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    torchvision_class="CIFAR100",
)
FORMATS = {f.source: f for f in (CIFAR10, CIFAR100)}

# The only globals a CIFAR pickle needs: numpy's array/dtype reconstruction (as written by the numpy 1.x
# that made the official files, and by numpy 2) and the bytes encoding of pickles made on Python 3.
# Anything else in an archive from a user path is refused rather than executed.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


# What reading a damaged or truncated archive raises (EOFError too: a gzip stream that ends early).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR pickle never holds")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 moved it; skip the shim
        return super().find_class(module, name)


def _unpickle(f: IO[bytes], where: str) -> Any:
    try:
        # encoding="bytes": the official files are Python 2 pickles whose dict keys are byte strings.
        return _SafeUnpickler(f, encoding="bytes").load()
    except _ARCHIVE_ERRORS:
        raise  # the archive itself (a truncated gzip stream ends mid-pickle): _read_members words it
    except Exception as exc:  # damaged files raise anything: pipeline/data/errors.py
        raise DataError(f"{where}: not a valid CIFAR pickle ({described(exc)})") from exc


def resolve_archive(path: str | None, download: bool, fmt: CifarFormat) -> Path:
    """The archive file ``path`` names, downloaded through torchvision first when missing and asked for.

    Args:
        path: The archive file itself, or a folder holding it under its official name; None: ``data/raw``.
        download: Fetch the archive when it is missing.
        fmt: The CIFAR variant.

    Returns:
        The archive's path.

    Raises:
        DataError: Missing (and no download asked for), not a file, or the download failed.
    """
    if path is None:
        folder = DEFAULT_RAW_DIR
        archive = folder / fmt.archive
    else:
        p = Path(path).expanduser()
        if p.is_dir() or (not p.exists() and not p.name.endswith((".tar.gz", ".tgz", ".tar"))):
            folder, archive = p, p / fmt.archive
        else:
            folder, archive = p.parent, p
    if archive.is_file():
        return archive
    if archive.exists():
        raise DataError(f"{archive}: not a file (expected the {fmt.archive} archive)")
    if not download:
        raise DataError(f"{archive}: {fmt.source} archive not found; set prepare.path to the {fmt.archive} "
                        f"file or its folder, or set prepare.download: true to fetch it")
    if archive.name != fmt.archive:
        raise DataError(f"{archive}: not found, and a download is saved as {fmt.archive}; point prepare.path "
                        f"at a folder to download into")
    download_archive(fmt, folder)
    if not archive.is_file():
        raise DataError(f"{archive}: still missing after the torchvision download")
    return archive


def download_archive(fmt: CifarFormat, folder: Path) -> None:
    """Fetch the official archive into ``folder`` with torchvision (which also checks its MD5).

    Args:
        fmt: The CIFAR variant.
        folder: Where the archive goes (created if missing).

    Raises:
        DataError: The download or its checksum failed.
    """
    import torchvision.datasets  # deferred: only a download needs torchvision, and it is slow to import

    folder.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s into %s", fmt.archive, folder)
    try:
        getattr(torchvision.datasets, fmt.torchvision_class)(root=str(folder), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad checksum is a RuntimeError
        raise DataError(f"{folder / fmt.archive}: download through torchvision failed ({one_line(exc)})") from exc


def _read_members(archive: Path, wanted: set[str], progress: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    current = "the archive header"
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(total=len(wanted), desc=f"read {archive.name}",
                                                       unit="member", disable=not progress, leave=False) as bar:
            # One pass in archive order: a gzip stream cannot seek back cheaply, and members may come in any order.
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                current = member.name
                f = tar.extractfile(member)
                if f is None:
                    raise DataError(f"{archive}: member {member.name} cannot be read")
                found[member.name] = _unpickle(f, f"{archive}:{member.name}")
                bar.update(1)
    except _ARCHIVE_ERRORS as exc:
        raise DataError(f"{archive}: not a readable tar.gz archive, or it is truncated "
                        f"(while reading {current}: {one_line(exc)})") from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"{archive}: member {missing[0]} is missing (is this the official {archive.name}?)")
    return found


def _check_batch(obj: Any, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, got {type(obj).__name__}")
    for key in (b"data", label_key):
        if key not in obj:
            raise DataError(f"{where}: key {key!r} is missing")
    data = obj[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' must be uint8 of shape (N, {ROW}), got {got}")
    try:
        labels = np.asarray(obj[label_key])
    except (TypeError, ValueError) as exc:  # ragged or odd label lists
        raise DataError(f"{where}: {label_key!r} is not a list of integers ({one_line(exc)})") from exc
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{where}: {label_key!r} must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: {label_key!r} holds {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return data, labels.astype(np.int64)


def _class_names(obj: Any, where: str, names_key: bytes) -> list[str]:
    names = obj.get(names_key) if isinstance(obj, dict) else None
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{where}: key {names_key!r} must be a non-empty list of class names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: key {names_key!r} holds a class name that is not UTF-8 ({one_line(exc)})") from exc


def _assemble(batches: list[tuple[np.ndarray, np.ndarray]]) -> Split:
    """Row-major R, G, B planes -> (N, 32, 32, 3), written into one preallocated array.

    np.empty only commits pages as they are written and each raw batch is dropped once copied, so the
    peak stays near one copy of the split plus one batch.
    """
    n = sum(len(d) for d, _ in batches)
    images = np.empty((n, SIDE, SIDE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    start = 0
    while batches:
        data, lab = batches.pop(0)
        stop = start + len(data)
        images[start:stop] = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
        labels[start:stop] = lab
        start = stop
        del data, lab
    return Split(images, labels)


def read_cifar_archive(archive: str | Path, fmt: CifarFormat, progress: bool = False) -> Dataset:
    """The official train/test split of a CIFAR archive, read in one pass without extracting anything.

    Args:
        archive: The official ``cifar-1*-python.tar.gz``.
        fmt: The CIFAR variant.
        progress: Show a tqdm bar.

    Returns:
        The data set: uint8 (N, 32, 32, 3) images, the archive's class names.

    Raises:
        DataError: Unreadable, truncated, missing members, or pickles that are not CIFAR's.
    """
    archive = Path(archive)
    found = _read_members(archive, {*fmt.train_members, fmt.test_member, fmt.meta_member}, progress)
    classes = _class_names(found.pop(fmt.meta_member), f"{archive}:{fmt.meta_member}", fmt.names_key)

    def take(member: str) -> tuple[np.ndarray, np.ndarray]:
        # pop, so the raw dict (and its array) is freed as soon as the split has copied it
        return _check_batch(found.pop(member), f"{archive}:{member}", fmt.label_key, len(classes))

    train = _assemble([take(m) for m in fmt.train_members])
    test = _assemble([take(fmt.test_member)])
    return Dataset(train=train, test=test, classes=classes, source=fmt.source,
                   extra={"archive": archive.name, "split": "official"})


def load_cifar(source: str, path: str | None, download: bool, progress: bool = False) -> Dataset:
    """A CIFAR source of the prepare stage (:func:`resolve_archive`, then :func:`read_cifar_archive`).

    Args:
        source: "cifar10" or "cifar100".
        path: ``prepare.path``.
        download: ``prepare.download``.
        progress: Show a tqdm bar.

    Returns:
        The data set.

    Raises:
        DataError: As :func:`resolve_archive` and :func:`read_cifar_archive`.
    """
    fmt = FORMATS[source]
    return read_cifar_archive(resolve_archive(path, download, fmt), fmt, progress)
