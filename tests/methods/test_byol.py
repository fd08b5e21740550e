"""BYOL: the normalised MSE by hand, no gradient into the target, the EMA and its cosine schedule, the views."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, OptimConfig, SparseHeadConfig
from pipeline.engine.distributed import DistContext
from pipeline.engine.optim import build_optimizer
from pipeline.methods import BYOLLoss
from pipeline.methods.byol import BYOLParams
from pipeline.methods.momentum import MomentumParams, cosine_momentum, ema_update_
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
    # solo-learn's MoCo v2+: 0.99 to 0.999; halfway, the mean of the two.
    assert cosine_momentum(0.99, 6, 10, final=0.999) == pytest.approx((0.99 + 0.999) / 2)
    assert cosine_momentum(0.99, 11, 10, final=0.999) == pytest.approx(0.999)
    assert MomentumParams(momentum=0.9).at(7, 10) == 0.9  # no final_momentum: constant
    assert MomentumParams(momentum=0.9, final_momentum=1.0).at(11, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="final_momentum: 0.5 is below momentum"):
        MomentumParams(momentum=0.9, final_momentum=0.5)


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


def blur_solarize(views: tuple[AugmentConfig, AugmentConfig]) -> tuple[float, ...]:
    return tuple(p for v in views for p in (v.blur_prob, v.solarize_prob))


def test_views_predictor_and_penalised_modules():
    encoder, method = tiny_method("byol")
    # 8 px views: "auto" leaves blur out (as solo-learn's 32 px CIFAR recipes), solarisation on view 2.
    assert blur_solarize(method.view_configs(AugmentConfig())) == (0.0, 0.0, 0.0, 0.2)
    # Above 32 px, BYOL's table 6: blur 1.0 / 0.1, solarisation 0 / 0.2; the rest is pretrain.augment.
    v1, v2 = BYOLParams().views(AugmentConfig(hflip_prob=0.3), 33)
    assert blur_solarize((v1, v2)) == (1.0, 0.0, 0.1, 0.2) and v1.hflip_prob == v2.hflip_prob == 0.3
    assert blur_solarize(BYOLParams().views(AugmentConfig(), 32)) == (0.0, 0.0, 0.0, 0.2)
    # Explicit pairs replace pretrain.augment's probabilities; null keeps them.
    aug = AugmentConfig(blur_prob=0.4, solarize_prob=0.3)
    assert blur_solarize(BYOLParams(view_blur=(0.5, 0.6)).views(aug, 8)) == (0.5, 0.0, 0.6, 0.2)
    _, plain = tiny_method("byol", view_blur=None, view_solarize=None)
    assert plain.view_configs(aug) == (aug, aug)
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        BYOLParams(view_solarize=(0.0, 1.5))
    # The predictor's hidden width defaults to the head's last hidden width (BYOL: 4096 both).
    assert method.predictor.linear_layers()[0].weight.shape == (8, 4)
    assert tiny_method("byol", predictor_hidden_dim=5)[1].predictor.linear_layers()[0].weight.shape == (5, 4)
    assert method.penalised_modules(False) == [] and method.penalised_modules(True) == [method.predictor]
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.predictor.parameters()}


def test_the_predictor_steps_at_its_own_rate():
    encoder, method = tiny_method("byol")
    assert method.lr_scale == 10.0 and tiny_method("byol", predictor_lr_scale=1.0)[1].lr_scale == 1.0
    assert tiny_method("simclr")[1].lr_scale == 1.0
    predictor = list(method.trainable_parameters())
    opt = build_optimizer(encoder, OptimConfig(lr=0.2, momentum=0.0, weight_decay=0.0), 128, extra=predictor,
                          extra_lr_scale=method.lr_scale)
    # 0.2 per 256 images at 128: 0.1 for the encoder, 10 x that for the predictor (weights, then the rest).
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 1.0, 1.0])
    assert {id(p) for g in opt.param_groups[2:] for p in g["params"]} == {id(p) for p in predictor}
    w = method.predictor.linear_layers()[0].weight
    before = w.detach().clone()
    w.grad = torch.ones_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), before - 1.0)


def test_include_predictor_adds_the_predictors_l1_to_the_penalty():
    encoder, method = tiny_method("byol")
    l1 = SparseHeadConfig(form="l1", lam=1.0)
    head_only = SparseHead(l1, extra=method.penalised_modules(False)).value(encoder.head, None)
    both = SparseHead(l1, extra=method.penalised_modules(True)).value(encoder.head, None)
    predictor_l1 = sum(layer.weight.abs().sum() for layer in method.predictor.linear_layers())
    assert (both - head_only).item() == pytest.approx(predictor_l1.item(), rel=1e-6)
