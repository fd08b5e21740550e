"""SparseHead: the regulariser that makes the projection head sparse, its update rules and the head's statistics.

Everything lambda means lives here: the training loop adds ``penalty = reg(head, z)`` to its loss and
calls ``reg.after_step(head, optimizer)`` after each optimiser step. The forms and rules are explained in
the README ("What SparseHead is here"); the paper's full text is not available to this project, so they
are this project's reading of its abstract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast, get_args

import torch
from torch import nn

from pipeline.config import SparseHeadConfig, SparseHeadForm, SparseHeadUpdate
from pipeline.engine.optim import applied_rate
from pipeline.models.heads import ProjectionHead

FORMS: tuple[str, ...] = get_args(SparseHeadForm)
UPDATES: tuple[str, ...] = get_args(SparseHeadUpdate)
# A weight counts as near zero when it is this small relative to the layer's largest: a scale-free threshold.
NEAR_ZERO_REL = 0.01

Threshold = float | torch.Tensor  # a 0-d tensor under LARS: the rate applied differs per layer


def linear_layers(modules: Sequence[nn.Module]) -> list[nn.Linear]:
    """Every ``nn.Linear`` inside ``modules``, in module order."""
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.Linear)]


def l1_penalty(modules: Sequence[nn.Module]) -> torch.Tensor:
    """Sum over the Linear layers of ``modules`` of ``||W||_1`` (weights only: no biases, no norm parameters)."""
    # Summed one layer after another (not stacked and reduced): the loss stays the same to the bit.
    return cast(torch.Tensor, sum(layer.weight.abs().sum() for layer in linear_layers(modules)))


def group_penalty(head: ProjectionHead) -> torch.Tensor:
    """Sum over the input features j of the head's first Linear layer of ``||W_1[:, j]||_2`` (group lasso)."""
    w1 = head.linear_layers()[0].weight  # (out, in): column j carries input feature j
    return w1.norm(p=2, dim=0).sum()


def activation_penalty(z: torch.Tensor) -> torch.Tensor:
    """The batch mean of ``||z||_1`` for projections z of shape (N, D)."""
    return z.abs().sum(dim=1).mean()


@torch.no_grad()
def soft_threshold_(w: torch.Tensor, threshold: Threshold) -> None:
    """In place: the proximal operator of ``threshold * ||w||_1``, ``sign(w) max(|w| - threshold, 0)``."""
    w.copy_(w.sign() * (w.abs() - threshold).clamp_min(0))


@torch.no_grad()
def group_soft_threshold_(w: torch.Tensor, threshold: Threshold) -> None:
    """In place: the proximal operator of ``threshold * sum_j ||w[:, j]||_2`` (columns are the groups)."""
    norms = w.norm(p=2, dim=0, keepdim=True)
    w.mul_((1 - threshold / norms.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0))


class SparseHead:
    """The SparseHead regulariser of one run: its penalty, its proximal update and its epoch statistics.

    Under the ``gradient`` rule ``lambda * R`` goes into the loss and its (sub)gradient follows the
    optimiser. Under the ``proximal`` rule the optimiser steps on the SSL loss alone and
    :meth:`after_step` applies the proximal operator of ``rate * lambda * R`` to the penalised weights,
    ``rate`` being the step size the optimiser applied to that layer (its lr; lr times the layer's trust
    ratio under LARS), as proximal gradient descent (ISTA) prescribes. The ``activation`` form penalises
    an activation, which has no proximal operator on the weights: it stays a gradient penalty.

    Args:
        cfg: ``pretrain.sparsehead``, validated by pydantic.
        extra: modules besides the head whose Linear layers the ``l1`` form penalises too (a predictor,
            when ``include_predictor`` asks for it).
    """

    def __init__(self, cfg: SparseHeadConfig, extra: Sequence[nn.Module] = ()) -> None:
        self.form, self.lam, self.update = cfg.form, float(cfg.lam), cfg.update
        self.extra = list(extra)
        self._r_sum: torch.Tensor | None = None  # R summed over this epoch's steps, on the device
        self._steps = 0

    @property
    def proximal(self) -> bool:
        """Whether :meth:`after_step` applies a proximal operator (the proximal rule, a weight form)."""
        return self.update == "proximal" and self.form != "activation"

    @property
    def in_loss(self) -> bool:
        """Whether the penalty carries gradient into the loss the loop differentiates."""
        return self.lam > 0 and not self.proximal

    def value(self, head: ProjectionHead, z: torch.Tensor | None) -> torch.Tensor:
        """The unscaled penalty R, a scalar tensor.

        Args:
            head: the online projection head.
            z: its output for the batch, (N, D); read by the ``activation`` form only.

        Returns:
            R for this run's form, with gradient.
        """
        if self.form == "l1":
            return l1_penalty([head, *self.extra])
        if self.form == "group":
            return group_penalty(head)
        if z is None:
            raise ValueError("the activation form needs the projections z")
        return activation_penalty(z.float())

    def __call__(self, head: ProjectionHead, z: torch.Tensor | None) -> torch.Tensor:
        """``lambda * R`` for the loss; R is also summed for :meth:`epoch_metrics`.

        Args:
            head: the online projection head.
            z: its output for the batch, (N, D).

        Returns:
            A scalar tensor to add to the SSL loss: with gradient under the gradient rule, detached under
            the proximal rule or at lambda 0 (then it changes the logged total, not the update).
        """
        r = self.value(head, z)
        r_detached = r.detach().float()
        self._r_sum = r_detached if self._r_sum is None else self._r_sum + r_detached
        self._steps += 1
        penalty = self.lam * r
        return penalty if self.in_loss else penalty.detach()

    @torch.no_grad()
    def after_step(self, head: ProjectionHead, optimizer: torch.optim.Optimizer) -> None:
        """The proximal update, once the optimiser has stepped (a no-op for the gradient rule).

        Args:
            head: the online projection head.
            optimizer: the optimiser that just stepped; its rate for each penalised layer sets the
                threshold ``rate * lambda``.
        """
        if not self.proximal or self.lam == 0:
            return
        if self.form == "l1":
            for layer in linear_layers([head, *self.extra]):
                soft_threshold_(layer.weight, applied_rate(optimizer, layer.weight) * self.lam)
        else:
            w1 = head.linear_layers()[0].weight
            group_soft_threshold_(w1, applied_rate(optimizer, w1) * self.lam)

    def epoch_metrics(self, head: ProjectionHead) -> dict[str, float]:
        """This epoch's mean R (``sparse_reg``) and :func:`head_stats`; starts the next epoch's mean."""
        mean_r = float(self._r_sum / self._steps) if self._r_sum is not None else float("nan")
        self._r_sum, self._steps = None, 0
        return {"sparse_reg": mean_r, **head_stats(head)}


@torch.no_grad()
def head_stats(head: ProjectionHead) -> dict[str, float]:
    """Per-layer L1 norms, the head's near-zero and exactly-zero shares, and the input features it still uses.

    Args:
        head: a projection head.

    Returns:
        ``head_l1_layer{i}``, ``head_sparsity_layer{i}``; ``head_sparsity``, the share of head weights with
        ``|w| <= 0.01 * max|w|`` of their layer (scale-free, and what a gradient penalty can reach);
        ``head_exact_zero_frac``, the share that is exactly 0.0 (what the proximal update produces, and what a
        sparse kernel could skip); ``head_features_used`` and its fraction, the input features whose column
        of the first layer is not near zero.
    """
    stats: dict[str, float] = {}
    total = zeros = exact = 0
    for i, layer in enumerate(head.linear_layers()):
        w = layer.weight.detach().float()
        stats[f"head_l1_layer{i}"] = float(w.abs().sum())
        near_zero = int((w.abs() <= NEAR_ZERO_REL * w.abs().max()).sum())
        stats[f"head_sparsity_layer{i}"] = near_zero / w.numel()
        total += w.numel()
        zeros += near_zero
        exact += int((w == 0).sum())
    stats["head_sparsity"] = zeros / total
    stats["head_exact_zero_frac"] = exact / total
    col = head.linear_layers()[0].weight.detach().float().norm(dim=0)
    used = int((col > NEAR_ZERO_REL * col.max()).sum())
    stats["head_features_used"] = float(used)
    stats["head_features_used_frac"] = used / col.numel()
    return stats
