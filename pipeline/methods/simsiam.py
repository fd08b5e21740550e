"""SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning").

One encoder, a predictor on the online side and a stop-gradient on the other; no momentum network, no
negatives. The paper's fixed predictor learning rate is not reproduced: the predictor follows the loop's
schedule.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.config import MethodParams
from pipeline.engine.distributed import DistContext
from pipeline.methods.base import Method, full_precision
from pipeline.methods.predictor import PredictorMixin, build_predictor
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


class SimSiamLoss(nn.Module):
    """``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D(p, z) = -cos(p, z)``, batch mean; minimum -1
    (Chen & He 2021, eq. 3)."""

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """The loss of predictions and projections of views 1 and 2, each (N, D); no gradient flows into z."""
        d12 = F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
        d21 = F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        return -(d12 + d21) / 2


class SimSiamParams(MethodParams):
    """``pretrain.ssl.simsiam``."""

    # The predictor's hidden width; None: a quarter of the head's output, the paper's 2048 -> 512 bottleneck
    predictor_hidden_dim: int | None = Field(None, gt=0)


@register_method
class SimSiam(PredictorMixin, Method[SimSiamParams]):
    """The online projections predict each other through the predictor; symmetric views."""

    name = "simsiam"
    params_model = SimSiamParams

    def __init__(self, params: SimSiamParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.predictor = build_predictor(encoder, params.predictor_hidden_dim or max(1, encoder.projection_dim // 4))
        self.loss = SimSiamLoss()

    def step_loss(self, x: Tensor, z: Tensor, dist: DistContext) -> Tensor:
        """The loss of the online predictions against the other view's projections (each rank's own batch)."""
        p = self.predictor(z)
        with full_precision(z):
            p1, p2 = p.float().chunk(2)
            z1, z2 = z.float().chunk(2)
            return self.loss(p1, p2, z1, z2)
