"""VICReg against the paper's equations in numpy, and its known values."""

import numpy as np
import pytest
import torch

from pipeline.methods import VICRegLoss
from tests.methods.helpers import tiny_method


def reference_vicreg(z1: np.ndarray, z2: np.ndarray, a=25.0, b=25.0, c=1.0, gamma=1.0, eps=1e-4) -> float:
    n, d = z1.shape
    inv = ((z1 - z2) ** 2).mean()

    def var(z):
        return np.mean([max(0.0, gamma - np.sqrt(z[:, j].var(ddof=1) + eps)) for j in range(d)])

    def cov(z):
        m = np.cov(z, rowvar=False)  # unbiased, (d, d)
        return sum(m[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return a * inv + b * (var(z1) + var(z2)) / 2 + c * (cov(z1) + cov(z2))


@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_matches_the_numpy_reference(scale):
    g = torch.Generator().manual_seed(0)
    z1, z2 = scale * torch.randn(12, 5, generator=g), scale * torch.randn(12, 5, generator=g)
    got = VICRegLoss()(z1, z2).item()
    assert got == pytest.approx(reference_vicreg(z1.double().numpy(), z2.double().numpy()), rel=1e-5)
    got = VICRegLoss(1.0, 2.0, 3.0, gamma=0.5)(z1, z2).item()
    want = reference_vicreg(z1.double().numpy(), z2.double().numpy(), 1.0, 2.0, 3.0, gamma=0.5)
    assert got == pytest.approx(want, rel=1e-5)


def test_known_values():
    # Columns of +-2 in orthogonal sign patterns: each std is 2 sqrt(4/3) > 1 (the margin), zero mean,
    # zero covariance; identical views. Every term is 0.
    h = 2 * torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    inv, var, cov = VICRegLoss().terms(h, h.clone())
    assert (inv.item(), var.item(), cov.item()) == (0.0, 0.0, 0.0)
    # A constant dimension has std sqrt(eps): its hinge is gamma - sqrt(eps) in each view.
    z = h.clone()
    z[:, 0] = 5.0
    _, var, _ = VICRegLoss().terms(z, z)
    assert var.item() == pytest.approx((1.0 - 1e-2) / 3, rel=1e-6)
    # Two identical dimensions: the covariance term is 2 cov^2 / d per view.
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]])
    cov_12 = (1 + 1 + 4 + 4) / 3
    assert VICRegLoss().terms(z, z)[2].item() == pytest.approx(2 * (2 * cov_12 ** 2 / 2), rel=1e-6)


def test_weights_come_from_the_config():
    _, method = tiny_method("vicreg", variance=10.0)
    assert method.loss.weights == (25.0, 10.0, 1.0)
    with pytest.raises(ValueError, match="N > 1"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
