"""channels_last, the fused optimiser and torch.compile, each against the default path (fp32, no TF32)."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.trainer import train
from tests.cuda.common import CUDA, images, recipe_cfg, small_cfg

pytestmark = CUDA


def _flat(result) -> torch.Tensor:
    return torch.cat([p.detach().float().cpu().reshape(-1) for p in result.encoder.parameters()])


def _same_training(a, b, rtol: float) -> None:
    """One epoch of four steps from the same start: the same losses and weights within ``rtol``.

    Weights are compared as one vector (the relative norm of the difference): float rounding differs
    between the two paths, and gradients that are sums with heavy cancellation (a batch-norm bias)
    carry it to a few 1e-4 of their own size within a step; a path that computed something else
    moves the whole vector by percents.
    """
    assert b.history[0]["loss_total"] == pytest.approx(a.history[0]["loss_total"], rel=rtol)
    wa, wb = _flat(a), _flat(b)
    assert float((wa - wb).norm() / wa.norm()) <= rtol


def test_channels_last_trains_as_the_default_layout(exact_fp32):
    data = images(128)
    # Both layouts take other cuDNN kernels: the same function, float additions in another order.
    runs = [train(recipe_cfg(precision="fp32", channels_last=cl, epochs=1), data, seed=0, progress=False)
            for cl in (False, True)]
    _same_training(*runs, rtol=1e-3)


def test_fused_sgd_trains_as_plain_sgd(deterministic):
    data = images(128)
    runs = [train(small_cfg(precision="fp32", channels_last=False, epochs=1,
                            optim={"lr": 0.1, "warmup_epochs": 0, "fused": fused}),
                  data, seed=0, progress=False) for fused in (False, True)]
    # The same gradients (the same kernels, deterministic): only the update's arithmetic may differ.
    _same_training(*runs, rtol=1e-6)


@pytest.mark.parametrize("method", ["simclr", "byol"])  # byol: a predictor and a target network beside it
def test_a_compiled_step_trains_as_eager(exact_fp32, method):
    data = images(128)
    runs = [train(small_cfg(precision="fp32", channels_last=False, epochs=1, compile=c, ssl={"method": method}),
                  data, seed=0, progress=False) for c in (False, True)]
    # Inductor fuses kernels and reorders their reductions.
    _same_training(*runs, rtol=1e-3)
