"""The one stratified splitter: train/test for sources without an official split, train/validation for
evaluation and tuning. Both round a class's share the same way and keep every class on both sides."""

from __future__ import annotations

import math

import numpy as np

from pipeline.data.arrays import Split


def class_test_count(n: int, test_fraction: float) -> int:
    """How many of a class's ``n`` images go to test: round-half-up of ``n * test_fraction``,
    at least one and never all of them when the class has two or more (so every class is in both)."""
    if n < 2:
        return 0
    return min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices into ``labels``, per class and fixed by ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):  # sorted, so the draw order and thus the split depend only on the seed
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: class_test_count(len(idx), test_fraction)])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def train_val_split(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a validation set from training data, stratified by class and fixed by the seed."""
    fit_idx, val_idx = stratified_split(split.labels, val_fraction, seed)
    return split.subset(fit_idx), split.subset(val_idx)
