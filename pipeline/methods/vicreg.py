"""VICReg (Bardes, Ponce & LeCun, 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

Under DDP all three terms use the batch gathered from all ranks (with gradient); the paper's code takes
the invariance term on each rank's own slice, which has the same expectation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.methods.base import AsymmetricViewParams, Method
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


def _variance(z: Tensor, gamma: float, eps: float) -> Tensor:
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


class VICRegLoss(nn.Module):
    """``a * invariance + b * variance + c * covariance`` (Bardes et al. 2022, eq. 6).

    - invariance: the mean squared error between the two views' embeddings;
    - variance: for each view, the mean over dimensions of ``max(0, gamma - sqrt(Var(z_j) + eps))``
      (unbiased variance over the batch), averaged over the two views;
    - covariance: for each view, the sum of squared off-diagonal entries of the embeddings' covariance,
      divided by the dimension, summed over the two views.

    Args:
        invariance: a (the paper's 25).
        variance: b (25).
        covariance: c (1).
        gamma: the standard deviation each dimension is pushed above (1).
        eps: in ``sqrt(var + eps)`` (1e-4).
    """

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = (invariance, variance, covariance)
        self.gamma, self.eps = gamma, eps

    def terms(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The invariance, variance and covariance terms, unweighted, of views (N, D) each with N > 1."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"z1 and z2 must both be (N, D) with N > 1, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        inv = F.mse_loss(z1, z2)
        var = (_variance(z1, self.gamma, self.eps) + _variance(z2, self.gamma, self.eps)) / 2
        return inv, var, _covariance(z1) + _covariance(z2)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The weighted loss of views 1 and 2, each (N, D) with N > 1; a scalar."""
        inv, var, cov = self.terms(z1, z2)
        a, b, c = self.weights
        return a * inv + b * var + c * cov


class VICRegParams(AsymmetricViewParams):
    """``pretrain.ssl.vicreg``: the loss weights and the variance hinge, the paper's."""

    invariance: float = Field(25.0, ge=0.0)  # weight of the invariance (MSE) term
    variance: float = Field(25.0, ge=0.0)  # weight of the variance hinge
    covariance: float = Field(1.0, ge=0.0)  # weight of the covariance term
    gamma: float = Field(1.0, gt=0.0)  # the std each dimension is pushed above
    eps: float = Field(1e-4, gt=0.0)  # in sqrt(var + eps)


@register_method
class VICReg(Method[VICRegParams]):
    """VICReg's loss on the two views' projections; the paper's asymmetric views (BYOL's)."""

    name = "vicreg"
    params_model = VICRegParams
    default_lr = 0.05  # its 25/25/1 weighted loss diverges within two digits epochs at SGD 0.3

    def __init__(self, params: VICRegParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.loss = VICRegLoss(params.invariance, params.variance, params.covariance, params.gamma, params.eps)
