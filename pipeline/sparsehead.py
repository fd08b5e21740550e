"""SparseHead: a regulariser that makes the projection head sparse, and the statistics that show it.

``loss = loss_ssl + lambda * R``, with R one of three forms (``pretrain.sparsehead.form``):

- ``l1`` (default): sum over the head's Linear layers of ||W||_1, weights only (no biases, no norm
  parameters).
- ``group``: sum over the input features j of the head's first Linear layer of ||W_1[:, j]||_2, a group
  lasso that drives whole backbone features out of the head: "only a subset of features is necessary".
- ``activation``: the batch mean of ||z||_1, z the head's output.

The paper's full text is not available here: these forms are this project's reading of its abstract.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.models.heads import ProjectionHead

Form = Literal["l1", "group", "activation"]
FORMS: tuple[str, ...] = ("l1", "group", "activation")
# A weight counts as zero when it is this small relative to the layer's largest: a scale-free threshold.
NEAR_ZERO_REL = 0.01


def l1_penalty(head: ProjectionHead) -> torch.Tensor:
    return sum(layer.weight.abs().sum() for layer in head.linear_layers())  # type: ignore[return-value]


def group_penalty(head: ProjectionHead) -> torch.Tensor:
    w1 = head.linear_layers()[0].weight  # (out, in): column j carries input feature j
    return w1.norm(p=2, dim=0).sum()


def activation_penalty(z: torch.Tensor) -> torch.Tensor:
    return z.abs().sum(dim=1).mean()


class SparseHeadRegularizer(nn.Module):
    """R for the chosen form; ``forward(head, z)`` returns the unscaled penalty R (a scalar tensor)."""

    def __init__(self, form: Form = "l1", lam: float = 0.0) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"sparsehead form must be one of {', '.join(FORMS)}, got {form!r}")
        if lam < 0:
            raise ValueError(f"sparsehead lambda must be >= 0, got {lam}")
        self.form, self.lam = form, float(lam)

    def forward(self, head: ProjectionHead, z: torch.Tensor) -> torch.Tensor:
        if self.form == "l1":
            return l1_penalty(head)
        if self.form == "group":
            return group_penalty(head)
        return activation_penalty(z.float())


@torch.no_grad()
def head_stats(head: ProjectionHead) -> dict[str, float]:
    """Per-layer L1 norms, the head's share of near-zero weights, and the input features it still uses."""
    stats: dict[str, float] = {}
    total = zeros = 0
    for i, layer in enumerate(head.linear_layers()):
        w = layer.weight.detach().float()
        stats[f"head_l1_layer{i}"] = float(w.abs().sum())
        near_zero = int((w.abs() <= NEAR_ZERO_REL * w.abs().max()).sum())
        stats[f"head_sparsity_layer{i}"] = near_zero / w.numel()
        total += w.numel()
        zeros += near_zero
    stats["head_sparsity"] = zeros / total
    col = head.linear_layers()[0].weight.detach().float().norm(dim=0)
    used = int((col > NEAR_ZERO_REL * col.max()).sum())
    stats["head_features_used"] = float(used)
    stats["head_features_used_frac"] = used / col.numel()
    return stats
