"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

The online network (backbone, projection head, predictor) predicts the projection that a momentum
target network (backbone + head, no predictor) gives of the other view; the loss is the normalised MSE
``2 - 2 cos(p, t)``, symmetrised over the two views and summed (the paper's L + L~). The target's
momentum rises from ``pretrain.ssl.momentum`` (0.996 in the paper for ImageNet; 0.99 here, solo-learn's
and lightly's CIFAR choice) to 1 on a cosine schedule. Views: the paper's asymmetric blur and
solarisation. SparseHead penalises the online head (and the predictor when asked); the target follows.
Both views go through one forward pass, so batch norm sees them together, as in SimCLR here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.methods.momentum import cosine_momentum, ema_update_, momentum_copy
from pipeline.methods.predictor import PredictorMixin, build_predictor
from pipeline.models.encoder import Encoder


def normalized_mse(p: Tensor, t: Tensor) -> Tensor:
    """Batch mean of ``||p/|p| - t/|t| ||^2 = 2 - 2 cos(p, t)``; no gradient flows into t."""
    return (2 - 2 * F.cosine_similarity(p, t.detach(), dim=-1)).mean()


class BYOLLoss(nn.Module):
    """``forward(p1, p2, t1, t2)``: online predictions and target projections of views 1 and 2, each (N, D);
    returns ``nmse(p1, t2) + nmse(p2, t1)``."""

    def forward(self, p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        return normalized_mse(p1, t2) + normalized_mse(p2, t1)


class BYOL(PredictorMixin, Method):
    name = "byol"
    asymmetric = True

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        hidden = cfg.predictor_hidden_dim or (encoder.spec.head_hidden or [encoder.projection_dim])[-1]
        self.predictor = build_predictor(encoder, hidden)
        self.target = momentum_copy(encoder)
        self.loss = BYOLLoss()

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        x = torch.cat([v1, v2])
        _, z = online(x)
        p = self.predictor(z)
        with torch.no_grad():
            _, t = self.target.forward_both(x)
        with full_precision(z):
            p1, p2 = p.float().chunk(2)
            t1, t2 = t.float().chunk(2)
            return StepOutput(self.loss(p1, p2, t1, t2), z)

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        ema_update_(self.target, encoder, cosine_momentum(self.cfg.momentum, step, total_steps))
