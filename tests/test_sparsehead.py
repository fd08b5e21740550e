"""Each SparseHead form's value and gradient, and each update rule, against hand computation on small
matrices; the README's figures about R recomputed from the code."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import SparseHeadConfig
from pipeline.engine.optim import LARS, applied_rate
from pipeline.models.heads import ProjectionHead
from pipeline.sparsehead import SparseHead, head_stats


def reg(form: str, lam: float = 0.0, update: str = "gradient", extra=()) -> SparseHead:
    return SparseHead(SparseHeadConfig.model_validate({"form": form, "lambda": lam, "update": update}), extra)


def sgd_at(head: ProjectionHead, lr: float) -> torch.optim.SGD:
    """An optimiser whose last step used ``lr`` for every parameter of ``head`` (no step is taken here)."""
    return torch.optim.SGD(head.parameters(), lr=lr)


def small_head() -> ProjectionHead:
    """A 3 -> 2 -> 2 head with hand-set weights: W1 = [[1, -2, 0], [3, 0, 0]], W2 = [[0.5, -0.5], [0, 4]]."""
    head = ProjectionHead(3, [2], 2, batch_norm=True)
    w1, w2 = head.linear_layers()
    with torch.no_grad():
        w1.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.0]]))
        w2.weight.copy_(torch.tensor([[0.5, -0.5], [0.0, 4.0]]))
        w2.bias.copy_(torch.tensor([100.0, -100.0]))  # biases must not count
        head.net[1].weight.fill_(7.0)  # nor batch-norm parameters
    return head


def test_l1_value_and_gradient():
    head = small_head()
    r = reg("l1", 1.0)(head, torch.zeros(1, 2))  # lambda 1: the penalty is R itself
    assert r.item() == pytest.approx(1 + 2 + 3 + 0.5 + 0.5 + 4)
    r.backward()
    w1, w2 = head.linear_layers()
    # d|w|/dw = sign(w), and torch's sign(0) = 0.
    assert torch.equal(w1.weight.grad, torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(w2.weight.grad, torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    assert w2.bias.grad is None and head.net[1].weight.grad is None


def test_group_value_and_gradient():
    head = small_head()
    r = reg("group", 1.0)(head, torch.zeros(1, 2))
    # Columns of W1: (1, 3), (-2, 0), (0, 0): norms sqrt(10), 2, 0.
    assert r.item() == pytest.approx(10 ** 0.5 + 2.0)
    r.backward()
    w1, w2 = head.linear_layers()
    # d||c||/dc = c / ||c||; the zero column's subgradient is taken as 0.
    expected = torch.tensor([[1 / 10 ** 0.5, -1.0, 0.0], [3 / 10 ** 0.5, 0.0, 0.0]])
    assert torch.allclose(w1.weight.grad, expected, atol=1e-6)
    assert w2.weight.grad is None  # only the first layer is grouped


def test_activation_value_and_gradient():
    head = small_head()
    z = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 1.0]], requires_grad=True)
    r = reg("activation", 1.0)(head, z)
    assert r.item() == pytest.approx((3 + 0.5 + 4) / 3)
    r.backward()
    assert torch.allclose(z.grad, torch.sign(z.detach()) / 3)


def test_rejects_unknown_form_and_negative_lambda():
    # pydantic is the one place that checks them (SparseHead trusts its validated config).
    with pytest.raises(ValueError, match="form"):
        reg("l2")
    with pytest.raises(ValueError, match="lambda"):
        reg("l1", -1.0)


def test_head_stats_hand_computed():
    stats = head_stats(small_head())
    assert stats["head_l1_layer0"] == pytest.approx(6.0)
    assert stats["head_l1_layer1"] == pytest.approx(5.0)
    # Near zero: |w| <= 1% of the layer's max. W1: three zeros of six; W2: one of four.
    assert stats["head_sparsity_layer0"] == pytest.approx(3 / 6)
    assert stats["head_sparsity_layer1"] == pytest.approx(1 / 4)
    assert stats["head_sparsity"] == pytest.approx(4 / 10)
    assert stats["head_features_used"] == 2.0  # the third input feature's column is all zero
    assert stats["head_features_used_frac"] == pytest.approx(2 / 3)


def test_l1_gradient_step_shrinks_weights():
    head = small_head()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    before = sum(layer.weight.abs().sum().item() for layer in head.linear_layers())
    reg("l1", 1.0)(head, torch.zeros(1, 2)).backward()
    opt.step()
    after = sum(layer.weight.abs().sum().item() for layer in head.linear_layers())
    assert after < before
    assert isinstance(head.net[-1], nn.Linear)


def test_proximal_l1_is_the_soft_threshold():
    head = small_head()
    sh = reg("l1", 0.5, update="proximal")
    assert sh.proximal and not sh.in_loss
    sh.after_step(head, sgd_at(head, lr=2.0))  # threshold lr * lambda = 1
    w1, w2 = head.linear_layers()
    # sign(w) max(|w| - 1, 0), by hand: 1 -> 0, -2 -> -1, 3 -> 2; 0.5, -0.5 -> 0; 4 -> 3.
    assert torch.equal(w1.weight, torch.tensor([[0.0, -1.0, 0.0], [2.0, 0.0, 0.0]]))
    assert torch.equal(w2.weight, torch.tensor([[0.0, 0.0], [0.0, 3.0]]))
    assert torch.equal(w2.bias, torch.tensor([100.0, -100.0]))  # biases untouched


def test_proximal_group_shrinks_whole_columns():
    head = small_head()
    reg("group", 1.0, update="proximal").after_step(head, sgd_at(head, lr=2.5))  # threshold 2.5
    w1, w2 = head.linear_layers()
    # Column norms sqrt(10), 2, 0: the first scales by 1 - 2.5 / sqrt(10), the second (2 < 2.5) goes to zero.
    scale = 1 - 2.5 / 10 ** 0.5
    expected = torch.tensor([[1.0 * scale, 0.0, 0.0], [3.0 * scale, 0.0, 0.0]])
    assert torch.allclose(w1.weight, expected, atol=1e-7) and (w1.weight[:, 1:] == 0).all()
    assert torch.equal(w2.weight, torch.tensor([[0.5, -0.5], [0.0, 4.0]]))  # group acts on layer 1 only


def test_activation_form_stays_a_gradient_penalty_under_proximal():
    sh = reg("activation", 0.1, update="proximal")
    assert not sh.proximal and sh.in_loss
    head = small_head()
    before = [w.weight.clone() for w in head.linear_layers()]
    sh.after_step(head, sgd_at(head, lr=1.0))
    assert all(torch.equal(a, w.weight) for a, w in zip(before, head.linear_layers(), strict=True))


def test_exact_zero_share_counts_only_exact_zeros():
    stats = head_stats(small_head())
    # W1 has 3 zeros of 6, W2 one of 4: 4 of 10.
    assert stats["head_exact_zero_frac"] == pytest.approx(4 / 10)


def test_proximal_training_makes_exact_zeros_where_the_gradient_update_leaves_none():
    from pipeline.config import PretrainConfig
    from pipeline.engine.trainer import train
    from tests.conftest import four_class_split

    torch.set_num_threads(1)
    images = four_class_split(96, 0).images
    base = {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
            "batch_size": 32, "epochs": 4, "device": "cpu", "optim": {"warmup_epochs": 0}}
    zeros = {}
    for update in ("gradient", "proximal"):
        cfg = PretrainConfig.model_validate({**base, "sparsehead": {"lambda": 0.5, "update": update}})
        zeros[update] = train(cfg, images, seed=0, progress=False).final["head_exact_zero_frac"]
    assert zeros["gradient"] == 0.0
    assert zeros["proximal"] > 0.2


def test_the_penalty_carries_gradient_only_under_the_gradient_rule():
    head, z = small_head(), torch.zeros(1, 2)
    r = 1 + 2 + 3 + 0.5 + 0.5 + 4
    grad = reg("l1", 0.1)(head, z)
    assert grad.requires_grad and grad.item() == pytest.approx(0.1 * r)
    for sh in (reg("l1", 0.1, update="proximal"), reg("l1", 0.0)):
        penalty = sh(head, z)  # in the logged total, not in the update
        assert not penalty.requires_grad and penalty.item() == pytest.approx(sh.lam * r)


def test_epoch_metrics_are_the_mean_R_of_the_epoch_and_start_afresh():
    sh, head = reg("l1", 0.0), small_head()
    sh(head, None)
    with torch.no_grad():
        head.linear_layers()[1].weight.zero_()  # R drops from 11 to 6
    sh(head, None)
    first = sh.epoch_metrics(head)
    assert first["sparse_reg"] == pytest.approx((11 + 6) / 2)
    assert first["head_l1_layer1"] == 0.0  # the head's statistics come along
    sh(head, None)
    assert sh.epoch_metrics(head)["sparse_reg"] == pytest.approx(6.0)


def test_proximal_threshold_under_lars_is_the_step_lars_applied():
    # LARS moves a layer by lr * trust * (g + wd w): the threshold must be lr * trust * lambda, by hand.
    head = small_head()
    w1, w2 = head.linear_layers()
    lr, lam, eta, wd = 0.5, 0.4, 0.01, 0.1
    opt = LARS([{"params": [w1.weight, w2.weight]}], lr=lr, momentum=0.9, weight_decay=wd, eta=eta)
    grads = [torch.tensor([[0.5, 1.0, -1.0], [2.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0], [-2.0, 0.5]])]
    expected = []
    for layer, g in zip((w1, w2), grads, strict=True):
        w = layer.weight.detach().clone()
        d = g + wd * w
        trust = eta * w.norm() / d.norm()
        stepped = w - lr * trust * d  # the first step: the momentum buffer is d itself
        t = lr * trust * lam
        expected.append(stepped.sign() * (stepped.abs() - t).clamp_min(0))
        layer.weight.grad = g
    opt.step()
    reg("l1", lam, update="proximal").after_step(head, opt)
    for layer, e in zip((w1, w2), expected, strict=True):
        torch.testing.assert_close(layer.weight.detach(), e, rtol=0, atol=1e-7)
    # W2's trust is ~0.017: a threshold of lr * lambda = 0.2 (60 times the step LARS applied) would have
    # zeroed the weight that the step moved from 0 to ~0.017; the threshold of the step taken keeps it.
    assert w2.weight[1, 0] > 0.01 and (w2.weight != 0).all()


def test_proximal_group_threshold_under_lars_uses_the_first_layer_trust():
    head = small_head()
    w1 = head.linear_layers()[0].weight
    lr, lam, eta = 1.0, 2.0, 0.1
    opt = LARS([{"params": [w1]}], lr=lr, momentum=0.0, weight_decay=0.0, eta=eta)
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    w = w1.detach().clone()
    trust = eta * w.norm() / g.norm()
    stepped = w - lr * trust * g
    norms = stepped.norm(dim=0, keepdim=True)
    expected = stepped * (1 - lr * trust * lam / norms.clamp_min(torch.finfo(torch.float32).tiny)).clamp_min(0)
    w1.grad = g
    opt.step()
    reg("group", lam, update="proximal").after_step(head, opt)
    torch.testing.assert_close(w1.detach(), expected, rtol=0, atol=1e-7)


def test_applied_rate_is_the_group_lr_for_sgd_and_lr_times_trust_for_lars():
    p, b = torch.nn.Parameter(torch.tensor([[3.0, 4.0]])), torch.nn.Parameter(torch.tensor([1.0]))
    sgd = torch.optim.SGD([{"params": [p]}, {"params": [b], "lr": 0.01}], lr=0.1)
    assert applied_rate(sgd, p) == 0.1 and applied_rate(sgd, b) == 0.01
    lars = LARS([{"params": [p]}, {"params": [b], "lars": False}], lr=0.1, eta=0.2)
    p.grad, b.grad = torch.tensor([[0.0, 10.0]]), torch.tensor([1.0])
    lars.step()
    assert float(applied_rate(lars, p)) == pytest.approx(0.1 * 0.2 * 5 / 10)  # trust eta ||w|| / ||g||
    assert applied_rate(lars, b) == 0.1  # biases take plain steps
    with pytest.raises(ValueError, match="does not step"):
        applied_rate(sgd, torch.nn.Parameter(torch.zeros(1)))


# ------------------------------------------------------------------ figures the README states


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_head_figures_come_from_code():
    # "the `l1` R of the default 64-256-64 head is 1539 at initialisation (seed 0; ... = 1536 ...), that of
    # ResNet-18's 512-2048-128 projector 2.6e4"
    from pipeline.config import load_params
    from pipeline.data.digits import load_digits_dataset
    from pipeline.engine.trainer import build_encoder
    from pipeline.sparsehead import l1_penalty

    text = " ".join(_readme_section("What SparseHead is here").split())
    m = re.search(r"default (\d+)-(\d+)-(\d+) head is (\d+) at initialisation \(seed 0; in expectation .*? = (\d+)",
                  text)
    assert m, "the README no longer states the default head's R"
    dims, r_stated, expectation = [int(v) for v in m.groups()[:3]], int(m[4]), int(m[5])
    params = load_params(README.parent / "params.yaml")
    torch.manual_seed(0)  # as the trainer builds it at seed 0
    head = build_encoder(params.pretrain, load_digits_dataset(0.2, 0).train.images).head
    layers = head.linear_layers()
    assert dims == [layers[0].in_features, *(layer.out_features for layer in layers)]
    with torch.no_grad():
        assert round(float(l1_penalty([head]))) == r_stated
    # PyTorch's default init draws U(-1/sqrt(in), 1/sqrt(in)): E|w| = 1 / (2 sqrt(in)) per weight.
    assert sum(layer.out_features * layer.in_features ** 0.5 / 2 for layer in layers) == expectation

    m = re.search(r"ResNet-18's (\d+)-(\d+)-(\d+) projector ([\d.]+)e(\d)", text)
    assert m
    d_in, hidden, out = (int(v) for v in m.groups()[:3])
    torch.manual_seed(0)
    projector = ProjectionHead(d_in, [hidden], out)
    with torch.no_grad():
        r = float(l1_penalty([projector]))
    assert f"{r:.1e}" == f"{m[4]}e+0{m[5]}"
