"""SimSiam: the negative cosine by hand, the stop-gradient, the bottleneck predictor."""

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig
from pipeline.engine.distributed import DistContext
from pipeline.methods import SimSiamLoss
from tests.methods.helpers import tiny_method


def reference_simsiam(p1, p2, z1, z2) -> float:
    def d(p, z):  # the paper's D: minus the cosine, batch mean
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return -float((p * z).sum(axis=1).mean())
    return d(p1, z2) / 2 + d(p2, z1) / 2


def test_loss_by_hand_and_against_the_reference():
    # p1 along z2 (cos 1), p2 orthogonal to z1 (cos 0): -(1 + 0) / 2.
    p1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[5.0, 0.0]])
    p2, z1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -1.0]])
    assert SimSiamLoss()(p1, p2, z1, z2).item() == pytest.approx(-0.5)
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(7, 5, generator=g) for _ in range(4)]
    assert SimSiamLoss()(*t).item() == pytest.approx(reference_simsiam(*(x.numpy() for x in t)), rel=1e-5)
    assert SimSiamLoss()(t[0], t[1], t[1], t[0]).item() == pytest.approx(-1.0)  # its minimum


def test_stop_gradient_on_the_projection_branch():
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 3, generator=g, requires_grad=True) for _ in range(4))
    SimSiamLoss()(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p2.grad is not None
    # Through the method, the encoder still learns (via the predictor's branch).
    encoder, method = tiny_method("simsiam")
    x = torch.rand(6, 1, 8, 8, generator=g)
    out = method(encoder.forward_both, x, x.flip(-1), DistContext())
    out.loss.backward()
    assert encoder.head.linear_layers()[0].weight.grad.abs().sum() > 0


def test_bottleneck_predictor_and_symmetric_views():
    _, method = tiny_method("simsiam")
    assert method.predictor.linear_layers()[0].weight.shape == (1, 4)  # out_dim 4 // 4: SimSiam's 2048 -> 512
    assert method.view_configs(AugmentConfig()) == (AugmentConfig(), AugmentConfig())
    assert method.penalised_modules(True) == [method.predictor]
