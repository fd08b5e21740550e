"""Shared by the stage-level tests: a tiny learnable data set prepared in a clean working folder."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.format import Dataset, Split, save_dataset
from tests.servers import mlflow_server, postgres  # noqa: F401  (session fixtures: real servers)


def four_class_split(n: int, seed: int) -> Split:
    """8x8 grey images of four classes that differ in brightness and in which half is lit."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.int64)
    for i, c in enumerate(labels):
        images[i, slice(0, 4) if c % 2 else slice(4, 8)] += 60 + 60 * (c // 2)
    return Split(images.clip(0, 255).astype(np.uint8), labels)


@pytest.fixture
def prepared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working folder, holding ``data/prepared``; no tracking or storage overrides."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)
    save_dataset(Dataset(four_class_split(96, 0), four_class_split(32, 1), ["a", "b", "c", "d"], "synthetic"),
                 "data/prepared")
    return tmp_path


class Crash(RuntimeError):
    """Raised by :func:`crash_after` to stop a training run the way a kill would, after a checkpoint."""


def crash_after(epoch: int):
    """An epoch callback that raises :class:`Crash` once ``epoch`` is done (its checkpoint is on disk)."""

    def callback(done: int, metrics: dict, encoder: object) -> None:
        if done == epoch:
            raise Crash

    return callback


def subprocess_env() -> dict[str, str]:
    """This process's environment for a child stage, minus what points at stores: MLflow exports the
    tracking and registry URIs an earlier test set (MLFLOW_*), which would send a child elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "OPTUNA_STORAGE"}


def damaged(rng: random.Random, data: bytes, *, truncate: bool, max_flips: int = 6, head: int = 0) -> bytes:
    """A damaged copy of a file's bytes, drawn from ``rng``: the damage replays of the file readers.

    Args:
        rng: the seeded generator (the same seed, the same files).
        data: the good file.
        truncate: cut it at a random length; otherwise overwrite 1 to ``max_flips`` random bytes.
        max_flips: the most bytes overwritten.
        head: when set, each overwrite falls in the first ``head`` bytes half of the time (where a
            format's header, and so its parser, is).

    Returns:
        The damaged bytes.
    """
    if truncate:
        return data[: rng.randrange(len(data))]
    out = bytearray(data)
    for _ in range(rng.randint(1, max_flips)):
        out[rng.randrange(min(len(out), head) if head and rng.random() < 0.5 else len(out))] = rng.randrange(256)
    return bytes(out)
