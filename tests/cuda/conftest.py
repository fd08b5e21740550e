"""Fixtures of the CUDA tests: numerics pinned where a comparison needs them, and restored after."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# Deterministic cuBLAS (for the deterministic-algorithms tests): read when CUDA starts, so set it first.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """No TF32: cuDNN's convolutions round fp32 inputs to 10 mantissa bits by default (1e-3 relative),
    which would swamp the differences between two fp32 paths that a comparison is after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic(exact_fp32: None) -> Iterator[None]:
    """Deterministic kernels (cuDNN's backward otherwise accumulates with atomics, in a run-dependent
    order): two runs of the same thing are then bit-identical.

    ``warn_only``: torch has no deterministic twin of adaptive average pooling's backward nor of NLLLoss
    on CUDA and would raise; for the global pooling and the (N, C) losses here each output is written once
    (a single-block reduction), so they are deterministic in fact.
    """
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, \
        torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
