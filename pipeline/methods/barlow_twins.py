"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Each embedding dimension is standardised over the batch (batch norm without affine, as the paper's code),
and the cross-correlation matrix C of the two views' embeddings is pushed towards the identity. Under DDP,
C is computed on the batch gathered from all ranks (with gradient), which is what the paper's all-reduced
C over synchronised batch norm computes.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from pipeline.methods.base import AsymmetricViewParams, Method
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


def standardize(z: Tensor, eps: float) -> Tensor:
    """Per-dimension ``(z - mean) / sqrt(var + eps)`` over the batch of (N, D) ``z``, biased variance
    (batch norm's)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


class BarlowTwinsLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``, C the (D, D) cross-correlation of the two
    views' batch-standardised embeddings (Zbontar et al. 2021, eq. 1).

    Args:
        lambda_offdiag: the off-diagonal weight (the published code's 0.0051; the paper rounds it to 5e-3).
        eps: in the standardisation's ``sqrt(var + eps)``.
    """

    def __init__(self, lambda_offdiag: float = 0.0051, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambda_offdiag, self.eps = lambda_offdiag, eps

    def cross_correlation(self, z1: Tensor, z2: Tensor) -> Tensor:
        """C of views 1 and 2, each (N, D) with N > 1; (D, D)."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"z1 and z2 must both be (N, D) with N > 1, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        return standardize(z1, self.eps).T @ standardize(z2, self.eps) / z1.shape[0]

    def terms(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """The on-diagonal and the (unweighted) off-diagonal sums of squares."""
        c = self.cross_correlation(z1, z2)
        diag = torch.diagonal(c)
        return (1 - diag).pow(2).sum(), c.pow(2).sum() - diag.pow(2).sum()

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The loss of views 1 and 2, each (N, D) with N > 1; a scalar."""
        on, off = self.terms(z1, z2)
        return on + self.lambda_offdiag * off


class BarlowTwinsParams(AsymmetricViewParams):
    """``pretrain.ssl.barlow_twins``."""

    lambda_offdiag: float = Field(0.0051, ge=0.0)  # the weight of the off-diagonal term


@register_method
class BarlowTwins(Method[BarlowTwinsParams]):
    """Barlow Twins' loss on the two views' projections; the paper's asymmetric views (BYOL's)."""

    name = "barlow_twins"
    params_model = BarlowTwinsParams

    def __init__(self, params: BarlowTwinsParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.loss = BarlowTwinsLoss(params.lambda_offdiag)
