"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Each embedding dimension is standardised over the batch (batch norm without affine, as the paper's code),
and the cross-correlation matrix C of the two views' embeddings is pushed towards the identity:
``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` with lambda = 0.0051 (the published code's; the
paper rounds it to 5e-3). Under DDP, C is computed on the batch gathered from all ranks (with gradient),
which is what the paper's all-reduced C over synchronised batch norm computes. Views: the paper's
asymmetric blur and solarisation (BYOL's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext, gather_with_grad
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.models.encoder import Encoder


def standardize(z: Tensor, eps: float) -> Tensor:
    """Per-dimension ``(z - mean) / sqrt(var + eps)`` over the batch, biased variance (batch norm's)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


class BarlowTwinsLoss(nn.Module):
    """``forward(z1, z2)``: the two views' embeddings, each (N, D) with N > 1; returns the loss above."""

    def __init__(self, lambda_offdiag: float = 0.0051, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambda_offdiag, self.eps = lambda_offdiag, eps

    def cross_correlation(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"z1 and z2 must both be (N, D) with N > 1, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        return standardize(z1, self.eps).T @ standardize(z2, self.eps) / z1.shape[0]

    def terms(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """(on-diagonal, off-diagonal) sums of squares, the latter unweighted."""
        c = self.cross_correlation(z1, z2)
        diag = torch.diagonal(c)
        return (1 - diag).pow(2).sum(), c.pow(2).sum() - diag.pow(2).sum()

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        on, off = self.terms(z1, z2)
        return on + self.lambda_offdiag * off


class BarlowTwins(Method):
    name = "barlow_twins"
    asymmetric = True

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        self.loss = BarlowTwinsLoss(cfg.barlow_lambda)

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        _, z = online(torch.cat([v1, v2]))
        with full_precision(z):
            z1, z2 = z.float().chunk(2)
            return StepOutput(self.loss(gather_with_grad(z1, dist), gather_with_grad(z2, dist)), z)
