"""The embedded default source: scikit-learn's 8x8 handwritten digits (ships with the package, no network)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from pipeline.data.format import Dataset, Split
from pipeline.data.splits import stratified_split

DIGITS_MAX = 16  # load_digits pixels are counts of set bits in 4x4 blocks: integers 0..16


def digits_to_uint8(images: np.ndarray) -> np.ndarray:
    """The digits' pixel counts as uint8 grey levels: round(v * 255 / 16).

    Args:
        images: (N, 8, 8) values 0..16.

    Returns:
        uint8 (N, 8, 8, 1).
    """
    scaled = np.floor(np.asarray(images, dtype=np.float64) * (255.0 / DIGITS_MAX) + 0.5)
    return scaled.clip(0, 255).astype(np.uint8)[..., None]


def load_digits_dataset(test_fraction: float, seed: int) -> Dataset:
    """scikit-learn's 1797 digits, split into train and test by class.

    Args:
        test_fraction: Each class's share that goes to test (:func:`~pipeline.data.splits.stratified_split`).
        seed: Fixes the split.

    Returns:
        The data set: uint8 (N, 8, 8, 1) images, classes "0".."9".
    """
    bunch = load_digits()
    images = digits_to_uint8(bunch.images)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)  # digits has no official split
    return Dataset(
        train=Split(images[train_idx], labels[train_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        classes=[str(i) for i in range(10)],
        source="digits",
        extra={"split": "stratified", "test_fraction": test_fraction, "seed": seed},
    )
