"""The digits default's training images for the method tests (helpers.py holds the tiny models and configs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.digits import load_digits_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    """The digits default's training split (8x8 grey uint8), cut to 512 images to keep runs to a second."""
    return load_digits_dataset(0.2, 0).train.images[:512]
