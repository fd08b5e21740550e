"""SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning").

One encoder, a predictor on the online side and a stop-gradient on the other: the loss is the negative
cosine ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``, ``D(p, z) = -cos(p, z)`` (minimum -1). No momentum
network, no negatives. The predictor is the paper's bottleneck (hidden width a quarter of the output:
2048 -> 512 -> 2048) unless ``pretrain.ssl.predictor_hidden_dim`` says otherwise. The paper's fixed
predictor learning rate is not reproduced: the predictor follows the loop's schedule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.methods.predictor import PredictorMixin, build_predictor
from pipeline.models.encoder import Encoder


class SimSiamLoss(nn.Module):
    """``forward(p1, p2, z1, z2)``: predictions and projections of views 1 and 2, each (N, D); no gradient
    flows into z."""

    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        d12 = F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
        d21 = F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        return -(d12 + d21) / 2


class SimSiam(PredictorMixin, Method):
    name = "simsiam"

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        self.predictor = build_predictor(encoder, cfg.predictor_hidden_dim or max(1, encoder.projection_dim // 4))
        self.loss = SimSiamLoss()

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        _, z = online(torch.cat([v1, v2]))
        p = self.predictor(z)
        with full_precision(z):
            p1, p2 = p.float().chunk(2)
            z1, z2 = z.float().chunk(2)
            return StepOutput(self.loss(p1, p2, z1, z2), z)
