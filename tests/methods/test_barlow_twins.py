"""Barlow Twins against the paper's equations in numpy, and its known values."""

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig
from pipeline.methods import BarlowTwinsLoss
from pipeline.methods.barlow_twins import offdiag_weight
from tests.methods.helpers import tiny_method


def reference_barlow(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float = 1e-5) -> float:
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)  # numpy's var is the biased one, as batch norm's
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
    c = np.array([[(a[:, i] * b[:, j]).sum() / n for j in range(d)] for i in range(d)])
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off


@pytest.mark.parametrize("lam", [0.0051, 0.5])
def test_matches_the_numpy_reference(lam):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    got = BarlowTwinsLoss(lam)(z1, z2).item()
    want = reference_barlow(z1.double().numpy(), z2.double().numpy(), lam)
    assert got == pytest.approx(want, rel=1e-5)
    assert BarlowTwinsLoss(lam, scale=0.1)(z1, z2).item() == pytest.approx(0.1 * want, rel=1e-5)


def test_on_diagonal_term_is_zero_for_identical_views_and_known_for_opposite_ones():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 5, generator=g) * 3 + 1
    on, off = BarlowTwinsLoss().terms(z, z.clone())
    assert on.item() == pytest.approx(0.0, abs=1e-8)
    assert off.item() > 0  # random dimensions are correlated a little within 32 samples
    on, _ = BarlowTwinsLoss().terms(z, -z)  # C = -I on the diagonal: (1 - (-1))^2 per dimension
    assert on.item() == pytest.approx(4 * 5, rel=1e-4)
    # Orthogonal, standardised columns: C = I exactly, the loss is 0.
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert BarlowTwinsLoss()(h, h).item() == pytest.approx(0.0, abs=1e-8)


def test_rejects_bad_shapes_and_uses_the_paper_views():
    with pytest.raises(ValueError, match="N > 1"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))
    _, method = tiny_method("barlow_twins", scale_loss=0.1)
    assert (method.loss.lambda_offdiag, method.loss.scale) == (0.32, 0.1)  # auto: 0.02 x 64 / D for D = 4
    assert tiny_method("barlow_twins", lambda_offdiag=0.0051)[1].loss.lambda_offdiag == 0.0051
    # auto: the published 0.0051 from 251 dimensions up (the paper's 8192, solo-learn's 2048), 0.02 x 64 / D
    # below (0.02 measured at the digits default's 64).
    assert [offdiag_weight("auto", d) for d in (64, 128, 251, 2048, 8192)] == pytest.approx(
        [0.02, 0.01, 0.0051, 0.0051, 0.0051])
    v1, v2 = method.view_configs(AugmentConfig())
    assert (v1.blur_prob, v2.blur_prob, v2.solarize_prob) == (0.0, 0.0, 0.2)  # 8 px: no blur (README)
