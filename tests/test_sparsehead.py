"""Each SparseHead form's value and gradient against hand computation on small matrices."""

import pytest
import torch
from torch import nn

from pipeline.config import SparseHeadConfig
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
