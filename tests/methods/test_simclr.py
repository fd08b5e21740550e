"""NT-Xent against a hand-computed reference, its symmetry, and its closed form for identical views."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import SSLConfig
from pipeline.methods import NTXentLoss, build_method


def reference_ntxent(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """Written straight from the SimCLR paper's definition, one anchor at a time."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / sum(sims))
    return total / n2


def test_matches_hand_computed_two_pairs():
    # Two pairs in 2-D: z1 = (e1, e2), z2 = (e1, -e2) after normalisation. Anchor 0 (e1) sees its partner e1
    # at similarity 1, e2 at 0 and -e2 at 0: loss_0 = -log(e^{1/t} / (e^{0} + e^{1/t} + e^{0})).
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z2 = torch.tensor([[5.0, 0.0], [0.0, -1.0]])
    t = 0.5
    l0 = -math.log(math.exp(2) / (1 + math.exp(2) + 1))
    # Anchor 1 (e2) partner -e2 at -1; others e1, e1 at 0: -log(e^{-2} / (1 + 1 + e^{-2})).
    l1 = -math.log(math.exp(-2) / (2 + math.exp(-2)))
    expected = (l0 + l1 + l0 + l1) / 4  # anchors 2, 3 mirror anchors 0, 1
    got = NTXentLoss(t)(z1, z2).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(reference_ntxent(z1.numpy(), z2.numpy(), t), rel=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_matches_reference_on_random_batches(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert NTXentLoss(t)(z1, z2).item() == pytest.approx(reference_ntxent(z1.numpy(), z2.numpy(), t), rel=1e-5)


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    loss = NTXentLoss(0.2)
    assert loss(z1, z2).item() == pytest.approx(loss(z2, z1).item(), rel=1e-6)


def test_closed_form_for_identical_orthonormal_views():
    # z1 = z2 = N orthonormal rows: every anchor's positive has similarity 1, its 2N - 2 negatives 0:
    # loss = -log(e^{1/t} / (e^{1/t} + 2N - 2)) = log(1 + (2N - 2) e^{-1/t}).
    n, t = 4, 0.5
    z = torch.eye(n)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert NTXentLoss(t)(z, z.clone()).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_and_rejects_bad_input():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss = NTXentLoss(0.5)
    assert loss(3 * z1, 0.1 * z2).item() == pytest.approx(loss(z1, z2).item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="z1 and z2"):
        loss(z1, z2[:3])
    with pytest.raises(ValueError, match="unknown method"):
        build_method(SSLConfig.model_construct(method="nope"), None)
