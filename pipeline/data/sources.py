"""Data sources -> a :class:`Dataset` of uint8 arrays: the one entry point of the prepare stage."""

from __future__ import annotations

from pipeline.config import PrepareConfig
from pipeline.data.errors import DataError
from pipeline.data.format import Dataset

__all__ = ["DataError", "load_source"]


def load_source(cfg: PrepareConfig, seed: int, progress: bool = False) -> Dataset:
    """Read the source ``cfg`` names into memory.

    Args:
        cfg: The prepare section: the source, its path and options.
        seed: Fixes the train/test split of sources without an official one.
        progress: Show tqdm bars (the stage sets it; library callers and tests stay quiet).

    Returns:
        The data set, uint8 (N, H, W, C) images.

    Raises:
        DataError: Anything unreadable (one line naming the file and the problem), or an unknown source.
    """
    # Each reader is imported only when chosen: scikit-learn (digits) and torch (folder resizing) take
    # seconds to import, which a CIFAR run, or a run that fails on a missing file, should not pay.
    if cfg.source == "digits":
        from pipeline.data.digits import load_digits_dataset

        return load_digits_dataset(cfg.test_fraction, seed)
    if cfg.source in ("cifar10", "cifar100"):
        from pipeline.data.cifar import load_cifar

        return load_cifar(cfg.source, cfg.path, cfg.download, progress)
    if cfg.source == "folder":
        from pipeline.data.folder import load_folder

        if cfg.path is None:
            raise DataError("prepare.path: not set; the folder source needs the root of <class>/<image> folders")
        return load_folder(cfg.path, cfg.image_size, cfg.test_fraction, seed, progress, cfg.workers)
    raise DataError(f"prepare.source: unknown source {cfg.source!r}")
