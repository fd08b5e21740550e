"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Each embedding dimension is standardised over the batch (batch norm without affine, as the paper's code),
and the cross-correlation matrix C of the two views' embeddings is pushed towards the identity. Under DDP,
C is computed on the batch gathered from all ranks (with gradient), which is what the paper's all-reduced
C over synchronised batch norm computes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from pipeline.methods.base import AsymmetricViewParams, Method
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


def standardize(z: Tensor, eps: float) -> Tensor:
    """Per-dimension ``(z - mean) / sqrt(var + eps)`` over the batch of (N, D) ``z``, biased variance
    (batch norm's)."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


class BarlowTwinsLoss(nn.Module):
    """``scale * (sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2)``, C the (D, D) cross-correlation of the two
    views' batch-standardised embeddings (Zbontar et al. 2021, eq. 1).

    Args:
        lambda_offdiag: the off-diagonal weight (the published code's 0.0051; the paper rounds it to 5e-3).
        eps: in the standardisation's ``sqrt(var + eps)``.
        scale: what the whole loss is multiplied by (the paper's 1; solo-learn's CIFAR recipe 0.1).
    """

    def __init__(self, lambda_offdiag: float = 0.0051, eps: float = 1e-5, scale: float = 1.0) -> None:
        super().__init__()
        self.lambda_offdiag, self.eps, self.scale = lambda_offdiag, eps, scale

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
        return self.scale * (on + self.lambda_offdiag * off)


PUBLISHED_LAMBDA = 0.0051  # the paper's code (8192 dimensions) and solo-learn's CIFAR recipe (2048)
SMALL_LAMBDA, SMALL_DIM = 0.02, 64  # measured on the digits default's 64-dimensional projection


def offdiag_weight(setting: float | str, dim: int) -> float:
    """The off-diagonal weight for a projection of ``dim`` dimensions: ``setting``, or for ``"auto"``
    ``max(0.0051, 0.02 x 64 / dim)``.

    The D (D - 1) off-diagonal terms of a D-dimensional projection against its D diagonal ones: with the
    published 0.0051 they weigh 0.32 times the diagonal at the digits default's 64 dimensions, and the
    projections collapse to a few (RankMe of z 6). ``auto`` scales the weight as 1 / D from the value
    measured best at 64 dimensions (0.02, against 1 / 64 and 0.0051; README "SSL methods"), never below the
    published value, which it reaches at 251 dimensions.
    """
    if setting == "auto":
        return max(PUBLISHED_LAMBDA, SMALL_LAMBDA * SMALL_DIM / dim)
    if isinstance(setting, str):
        raise ValueError(f"lambda_offdiag: a number >= 0 or 'auto', got {setting!r}")
    return float(setting)


class BarlowTwinsParams(AsymmetricViewParams):
    """``pretrain.ssl.barlow_twins``."""

    # The weight of the off-diagonal term; auto: the published 0.0051 from 251 dimensions up, 0.02 x 64 / D
    # below (offdiag_weight)
    lambda_offdiag: float | Literal["auto"] = "auto"

    @field_validator("lambda_offdiag")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if isinstance(v, float) and v < 0:
            raise ValueError(f"must be >= 0 or 'auto', got {v}")
        return v
    scale_loss: float = Field(1.0, gt=0.0)  # the whole loss's factor (solo-learn's CIFAR recipe: 0.1)


@register_method
class BarlowTwins(Method[BarlowTwinsParams]):
    """Barlow Twins' loss on the two views' projections; the paper's asymmetric views (BYOL's)."""

    name = "barlow_twins"
    params_model = BarlowTwinsParams
    # Its loss sums D squared correlations: at SGD 0.3 the backbone's features collapse on the digits default
    # (RankMe of h 5 to 8, test linear 0.864 at seed 0); 0.05 keeps them (README, "SSL methods").
    default_lr = 0.05

    def __init__(self, params: BarlowTwinsParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.loss = BarlowTwinsLoss(offdiag_weight(params.lambda_offdiag, encoder.projection_dim),
                                    scale=params.scale_loss)
