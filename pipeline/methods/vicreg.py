"""VICReg (Bardes, Ponce & LeCun, 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

``loss = a * inv + b * var + c * cov`` with the published a = b = 25, c = 1:

- invariance: the mean squared error between the two views' embeddings;
- variance: for each view, the mean over dimensions of ``max(0, gamma - sqrt(Var(z_j) + eps))``
  (unbiased variance over the batch, gamma = 1, eps = 1e-4), averaged over the two views;
- covariance: for each view, the sum of squared off-diagonal entries of the embeddings' covariance,
  divided by the dimension, summed over the two views.

Under DDP all three terms use the batch gathered from all ranks (with gradient); the paper's code takes
the invariance term on each rank's own slice, which has the same expectation. Views: the paper's
asymmetric blur and solarisation (BYOL's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext, gather_with_grad
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.models.encoder import Encoder


def _variance(z: Tensor, gamma: float, eps: float) -> Tensor:
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


class VICRegLoss(nn.Module):
    """``forward(z1, z2)``: the two views' embeddings, each (N, D) with N > 1; returns the weighted sum."""

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = (invariance, variance, covariance)
        self.gamma, self.eps = gamma, eps

    def terms(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(invariance, variance, covariance), unweighted."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"z1 and z2 must both be (N, D) with N > 1, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
        inv = F.mse_loss(z1, z2)
        var = (_variance(z1, self.gamma, self.eps) + _variance(z2, self.gamma, self.eps)) / 2
        return inv, var, _covariance(z1) + _covariance(z2)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        inv, var, cov = self.terms(z1, z2)
        a, b, c = self.weights
        return a * inv + b * var + c * cov


class VICReg(Method):
    name = "vicreg"
    asymmetric = True
    default_lr = 0.05  # its 25/25/1 weighted loss diverges within two digits epochs at SGD 0.3

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        self.loss = VICRegLoss(cfg.vicreg_invariance, cfg.vicreg_variance, cfg.vicreg_covariance,
                               cfg.vicreg_gamma, cfg.vicreg_eps)

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        _, z = online(torch.cat([v1, v2]))
        with full_precision(z):
            z1, z2 = z.float().chunk(2)
            return StepOutput(self.loss(gather_with_grad(z1, dist), gather_with_grad(z2, dist)), z)
