"""Shared by the CUDA tests: the device they run on, their configs and data, and the one import of the
augmentation class (its name may change: only this line would)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.config import PretrainConfig
from pipeline.engine.augment import ViewAugmentation as Augment  # noqa: F401 - re-exported for the tests

# CUDA_TESTS_ON_CPU=1 runs every test on the CPU instead (CPU against CPU): it checks the tests' own code
# where no GPU is lent, so that a GPU's minutes go to the GPU's answers.
ON_CPU = os.environ.get("CUDA_TESTS_ON_CPU") == "1"
DEVICE = torch.device("cpu" if ON_CPU else "cuda")

# Every test module's marks: `pytest -m cuda` selects them, and without a GPU they are skipped.
CUDA = [pytest.mark.cuda,
        pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="no CUDA device")]

# The CIFAR-10 recipe's network (ResNet-18, CIFAR stem, 512-2048-128 head) at 32x32x3; on the CPU the
# small ConvNet at 12x12, so that a check of the tests' logic takes seconds.
RECIPE_NET = ({"backbone": {"name": "small", "width": 8}, "head": {"hidden_dims": [32], "out_dim": 16}} if ON_CPU
              else {"backbone": {"name": "resnet18"}, "head": {"hidden_dims": [2048], "out_dim": 128}})
SIDE = 12 if ON_CPU else 32


def images(n: int, side: int = SIDE, channels: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 (n, side, side, channels) of four classes of smooth blobs: data a network can tell apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    centres = rng.uniform(0.2, 0.8, (n, 2))
    width = np.where(np.arange(n) % 4 < 2, 0.1, 0.25)[:, None, None]
    blob = np.exp(-((xx - centres[:, :1, None]) ** 2 + (yy - centres[:, 1:, None]) ** 2) / width**2)
    colour = np.where((np.arange(n) % 2)[:, None] == 0, [1.0, 0.3, 0.1], [0.1, 0.4, 1.0])[:, :channels]
    x = blob[..., None] * colour[:, None, None, :] + rng.normal(0, 0.05, (n, side, side, channels))
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def small_cfg(**over: object) -> PretrainConfig:
    """A few seconds of training on ``DEVICE``: the small ConvNet, 2 epochs, SGD."""
    base: dict = {"backbone": {"name": "small", "width": 8}, "head": {"hidden_dims": [32], "out_dim": 16},
                  "epochs": 2, "batch_size": 32, "device": DEVICE.type, "optim": {"lr": 0.1, "warmup_epochs": 0},
                  "sparsehead": {"form": "l1", "lambda": 1e-3}}
    base.update(over)
    return PretrainConfig.model_validate(base)


def recipe_cfg(**over: object) -> PretrainConfig:
    """The recipe's network on ``DEVICE`` (see ``RECIPE_NET``), SGD, 2 epochs."""
    return small_cfg(**{**RECIPE_NET, **over})
