"""The one stratified splitter: train/test for sources without an official split, train/validation for
evaluation and tuning. Both round a class's share the same way and keep every class on both sides."""

from __future__ import annotations

import math

import numpy as np

from pipeline.data.format import Split


def class_test_count(n: int, test_fraction: float) -> int:
    """How many of a class's images go to test.

    Args:
        n: The class's image count.
        test_fraction: The share asked for.

    Returns:
        Round-half-up of ``n * test_fraction``, at least one and never all of them when the class has
        two or more (so every class is on both sides); 0 for a class of one.
    """
    if n < 2:
        return 0
    return min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of positions: each class's share drawn on its own.

    Args:
        labels: int (N,) class labels.
        test_fraction: Each class's share on the test side (:func:`class_test_count`).
        seed: Fixes the draw.

    Returns:
        (train, test): sorted int64 positions into ``labels``, disjoint, together all of them.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1).
    """
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
    """Carve a validation set from training data, stratified by class.

    Args:
        split: The training split (a sharded one gives lazy subsets: nothing is read).
        val_fraction: Each class's share that goes to validation.
        seed: Fixes the draw.

    Returns:
        (fit, validation).
    """
    fit_idx, val_idx = stratified_split(split.labels, val_fraction, seed)
    return split.subset(fit_idx), split.subset(val_idx)
