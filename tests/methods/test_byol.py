"""BYOL: the normalised MSE by hand, no gradient into the target, the EMA and its cosine schedule, the views."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, SparseHeadConfig
from pipeline.engine.distributed import DistContext
from pipeline.methods import BYOLLoss
from pipeline.methods.momentum import cosine_momentum, ema_update_
from pipeline.sparsehead import SparseHead
from tests.methods.helpers import tiny_method


def reference_byol(p1, p2, t1, t2) -> float:
    """The paper's eq. 2, both directions summed: ||p/|p| - t/|t| ||^2 averaged over the batch."""
    def nmse(p, t):
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        return float(((p - t) ** 2).sum(axis=1).mean())
    return nmse(p1, t2) + nmse(p2, t1)


def test_loss_by_hand_and_against_the_reference():
    # p1 = e1 against t2 = e2: orthogonal, 2 - 2 cos = 2; p2 = (1, 1) against t1 = (2, 2): aligned, 0.
    p1, t2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    p2, t1 = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])
    assert BYOLLoss()(p1, p2, t1, t2).item() == pytest.approx(2.0)
    g = torch.Generator().manual_seed(0)
    p1, p2, t1, t2 = (torch.randn(6, 5, generator=g) for _ in range(4))
    assert BYOLLoss()(p1, p2, t1, t2).item() == pytest.approx(reference_byol(*(t.numpy() for t in (p1, p2, t1, t2))),
                                                              rel=1e-5)


def test_no_gradient_reaches_the_target_branch():
    g = torch.Generator().manual_seed(1)
    p1, p2, t1, t2 = (torch.randn(4, 3, generator=g, requires_grad=True) for _ in range(4))
    BYOLLoss()(p1, p2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None
    assert p1.grad is not None and p2.grad is not None

    encoder, method = tiny_method("byol")
    method.train()
    x = torch.rand(6, 1, 8, 8, generator=g)
    out = method(encoder.forward_both, x, x.flip(-1), DistContext())
    out.loss.backward()
    assert all(p.grad is None for p in method.target.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert encoder.head.linear_layers()[0].weight.grad is not None
    assert out.z.shape == (12, 4)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 1, 10) == pytest.approx(0.99)  # the first update uses the base
    assert cosine_momentum(0.99, 6, 10) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)
    assert cosine_momentum(0.99, 11, 10) == pytest.approx(1.0)
    ms = [cosine_momentum(0.9, s, 20) for s in range(1, 21)]
    assert ms == sorted(ms) and ms[-1] < 1.0


def test_after_step_is_the_ema_of_the_online_encoder():
    encoder, method = tiny_method("byol")
    for p in method.target.parameters():
        assert not p.requires_grad
    t0 = [p.detach().clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    method.after_step(encoder, 3, 10)
    m = cosine_momentum(0.99, 3, 10)
    for t, before, o in zip(method.target.parameters(), t0, encoder.parameters(), strict=True):
        torch.testing.assert_close(t, m * before + (1 - m) * o, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="parameters"):
        ema_update_(method.target, method.predictor, 0.5)


def test_views_predictor_and_penalised_modules():
    encoder, method = tiny_method("byol")
    v1, v2 = method.view_configs(AugmentConfig())
    assert (v1.blur_prob, v1.solarize_prob, v2.blur_prob, v2.solarize_prob) == (1.0, 0.0, 0.1, 0.2)
    _, plain = tiny_method("byol", asymmetric_views=False)
    assert plain.view_configs(AugmentConfig()) == (AugmentConfig(), AugmentConfig())
    # The predictor's hidden width defaults to the head's last hidden width (BYOL: 4096 both).
    assert method.predictor.linear_layers()[0].weight.shape == (8, 4)
    assert tiny_method("byol", predictor_hidden_dim=5)[1].predictor.linear_layers()[0].weight.shape == (5, 4)
    assert method.penalised_modules(False) == [] and method.penalised_modules(True) == [method.predictor]
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.predictor.parameters()}


def test_include_predictor_adds_the_predictors_l1_to_the_penalty():
    encoder, method = tiny_method("byol")
    l1 = SparseHeadConfig(form="l1", lam=1.0)
    head_only = SparseHead(l1, extra=method.penalised_modules(False)).value(encoder.head, None)
    both = SparseHead(l1, extra=method.penalised_modules(True)).value(encoder.head, None)
    predictor_l1 = sum(layer.weight.abs().sum() for layer in method.predictor.linear_layers())
    assert (both - head_only).item() == pytest.approx(predictor_l1.item(), rel=1e-6)
