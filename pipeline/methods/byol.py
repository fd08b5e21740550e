"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

The online network (backbone, projection head, predictor) predicts the projection that a momentum target
network (backbone + head, no predictor) gives of the other view. SparseHead penalises the online head
(and the predictor when asked); the target follows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.engine.distributed import DistContext
from pipeline.methods.base import AsymmetricViewParams, Method, full_precision
from pipeline.methods.momentum import cosine_momentum, ema_update_, momentum_copy
from pipeline.methods.predictor import PredictorMixin, build_predictor
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


def normalized_mse(p: Tensor, t: Tensor) -> Tensor:
    """Batch mean of ``||p/|p| - t/|t| ||^2 = 2 - 2 cos(p, t)`` over (N, D) rows; no gradient flows into t."""
    return (2 - 2 * F.cosine_similarity(p, t.detach(), dim=-1)).mean()


class BYOLLoss(nn.Module):
    """``nmse(p1, t2) + nmse(p2, t1)``: the normalised MSE symmetrised over the views and summed (Grill et
    al. 2020, eq. 2, L + L~)."""

    def forward(self, p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
        """The loss of online predictions and target projections of views 1 and 2, each (N, D)."""
        return normalized_mse(p1, t2) + normalized_mse(p2, t1)


class BYOLParams(AsymmetricViewParams):
    """``pretrain.ssl.byol``."""

    # The target's momentum at the first step, raised to 1 on a cosine schedule (the paper's 0.996 is for
    # ImageNet; 0.99 is solo-learn's and lightly's CIFAR choice)
    momentum: float = Field(0.99, ge=0.0, le=1.0)
    # The predictor's hidden width; None: the head's last hidden width (BYOL's 4096-256 projector and
    # 4096 predictor)
    predictor_hidden_dim: int | None = Field(None, gt=0)


@register_method
class BYOL(PredictorMixin, Method[BYOLParams]):
    """BYOL's loss with a momentum target; the paper's asymmetric views."""

    name = "byol"
    params_model = BYOLParams

    def __init__(self, params: BYOLParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        hidden = params.predictor_hidden_dim or (encoder.spec.head_hidden or [encoder.projection_dim])[-1]
        self.predictor = build_predictor(encoder, hidden)
        self.target = momentum_copy(encoder)
        self.loss = BYOLLoss()

    def step_loss(self, x: Tensor, z: Tensor, dist: DistContext) -> Tensor:
        """The loss of the online predictions against the target's projections of the other view."""
        p = self.predictor(z)
        with torch.no_grad():
            _, t = self.target.forward_both(x)
        with full_precision(z):
            p1, p2 = p.float().chunk(2)
            t1, t2 = t.float().chunk(2)
            return self.loss(p1, p2, t1, t2)

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """The target follows the online encoder with the scheduled momentum."""
        ema_update_(self.target, encoder, cosine_momentum(self.params.momentum, step, total_steps))
