"""SparseHead: a regulariser that makes the projection head sparse, and the statistics that show it.

``loss = loss_ssl + lambda * R``, with R one of three forms (``pretrain.sparsehead.form``):

- ``l1`` (default): sum over the head's Linear layers of ||W||_1, weights only (no biases, no norm
  parameters).
- ``group``: sum over the input features j of the head's first Linear layer of ||W_1[:, j]||_2, a group
  lasso that drives whole backbone features out of the head: "only a subset of features is necessary".
- ``activation``: the batch mean of ||z||_1, z the head's output.

Two update rules (``pretrain.sparsehead.update``):

- ``gradient``: lambda * R is added to the loss and its (sub)gradient follows the optimiser. Weights
  oscillate around zero and are almost never exactly zero.
- ``proximal``: the optimiser steps on the SSL loss alone, then the penalised weights go through the
  proximal operator of ``lr * lambda * R`` (proximal gradient descent, as ISTA): for ``l1`` the soft
  threshold ``sign(w) max(|w| - lr lambda, 0)``, for ``group`` the group soft threshold of each column
  ``w_j max(1 - lr lambda / ||w_j||, 0)``. Both set weights exactly to zero. ``activation`` penalises an
  activation, which has no proximal operator on the weights: it stays a gradient penalty.

The paper's full text is not available here: these forms are this project's reading of its abstract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from pipeline.models.heads import ProjectionHead

Form = Literal["l1", "group", "activation"]
FORMS: tuple[str, ...] = ("l1", "group", "activation")
UPDATES: tuple[str, ...] = ("gradient", "proximal")
# A weight counts as near zero when it is this small relative to the layer's largest: a scale-free threshold.
NEAR_ZERO_REL = 0.01


def linear_layers(modules: Sequence[nn.Module]) -> list[nn.Linear]:
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.Linear)]


def l1_penalty(modules: Sequence[nn.Module]) -> torch.Tensor:
    return sum(layer.weight.abs().sum() for layer in linear_layers(modules))  # type: ignore[return-value]


def group_penalty(head: ProjectionHead) -> torch.Tensor:
    w1 = head.linear_layers()[0].weight  # (out, in): column j carries input feature j
    return w1.norm(p=2, dim=0).sum()


def activation_penalty(z: torch.Tensor) -> torch.Tensor:
    return z.abs().sum(dim=1).mean()


@torch.no_grad()
def soft_threshold_(w: torch.Tensor, threshold: float) -> None:
    """In place: the proximal operator of ``threshold * ||w||_1``."""
    w.copy_(w.sign() * (w.abs() - threshold).clamp_min(0))


@torch.no_grad()
def group_soft_threshold_(w: torch.Tensor, threshold: float) -> None:
    """In place: the proximal operator of ``threshold * sum_j ||w[:, j]||_2`` (columns are the groups)."""
    norms = w.norm(p=2, dim=0, keepdim=True)
    w.mul_((1 - threshold / norms.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0))


class SparseHeadRegularizer(nn.Module):
    """R for the chosen form and update rule.

    ``forward(head, z)`` returns the unscaled penalty R (a scalar tensor); :attr:`in_loss` says whether
    the loop adds ``lambda * R`` to the loss it differentiates; :meth:`proximal_step` applies the
    proximal update after an optimiser step (a no-op for the gradient rule). ``extra`` are modules beyond
    the head that the l1 form penalises too (a predictor, when ``include_predictor`` asks for it).
    """

    def __init__(self, form: Form = "l1", lam: float = 0.0, update: str = "gradient",
                 extra: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"sparsehead form must be one of {', '.join(FORMS)}, got {form!r}")
        if update not in UPDATES:
            raise ValueError(f"sparsehead update must be one of {', '.join(UPDATES)}, got {update!r}")
        if lam < 0:
            raise ValueError(f"sparsehead lambda must be >= 0, got {lam}")
        self.form, self.lam, self.update = form, float(lam), update
        self.extra = list(extra)

    @property
    def proximal(self) -> bool:
        return self.update == "proximal" and self.form != "activation"

    @property
    def in_loss(self) -> bool:
        return self.lam > 0 and not self.proximal

    def forward(self, head: ProjectionHead, z: torch.Tensor) -> torch.Tensor:
        if self.form == "l1":
            return l1_penalty([head, *self.extra])
        if self.form == "group":
            return group_penalty(head)
        return activation_penalty(z.float())

    @torch.no_grad()
    def proximal_step(self, head: ProjectionHead, lr: float) -> None:
        if not self.proximal or self.lam == 0:
            return
        threshold = lr * self.lam
        if self.form == "l1":
            for layer in linear_layers([head, *self.extra]):
                soft_threshold_(layer.weight, threshold)
        else:
            group_soft_threshold_(head.linear_layers()[0].weight, threshold)


@torch.no_grad()
def head_stats(head: ProjectionHead) -> dict[str, float]:
    """Per-layer L1 norms, the head's near-zero and exactly-zero shares, and the input features it still uses.

    ``head_sparsity``: the share of head weights with ``|w| <= 0.01 * max|w|`` of their layer (scale-free,
    and what a gradient penalty can reach); ``head_exact_zero_frac``: the share that is exactly 0.0 (what
    the proximal update produces, and what a sparse kernel could skip).
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
