"""The embedded default source: scikit-learn's 8x8 handwritten digits (ships with the package, no network)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from pipeline.data.arrays import Dataset, Split
from pipeline.data.splits import stratified_split

DIGITS_MAX = 16  # load_digits pixels are counts of set bits in 4x4 blocks: integers 0..16


def digits_to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> uint8 (N, 8, 8, 1) via round(v * 255 / 16)."""
    scaled = np.floor(np.asarray(images, dtype=np.float64) * (255.0 / DIGITS_MAX) + 0.5)
    return scaled.clip(0, 255).astype(np.uint8)[..., None]


def load_digits_dataset(test_fraction: float, seed: int) -> Dataset:
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
