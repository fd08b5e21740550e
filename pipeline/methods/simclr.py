"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext, gather_with_grad
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.models.encoder import Encoder


class NTXentLoss(nn.Module):
    """For a batch of N pairs, each of the 2N views must pick its partner among the other 2N - 1.

    ``loss = mean_i -log( exp(s(i, p(i)) / t) / sum_{k != i} exp(s(i, k) / t) )`` with s the cosine
    similarity and p(i) the other view of the same image. Under DDP, pass gathered embeddings.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        # Exclude self-similarity; -inf rather than a large negative so the softmax ignores it exactly.
        logits.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)


class SimCLR(Method):
    """Two symmetric views through one encoder; NT-Xent over the global batch (gathered under DDP)."""

    name = "simclr"

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        self.loss = NTXentLoss(cfg.temperature)

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        _, z = online(torch.cat([v1, v2]))
        with full_precision(z):
            z1, z2 = z.float().chunk(2)
            return StepOutput(self.loss(gather_with_grad(z1, dist), gather_with_grad(z2, dist)), z)
