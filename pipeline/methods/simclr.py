"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.config import MethodParams
from pipeline.methods.base import Method
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


class NTXentLoss(nn.Module):
    """NT-Xent: for a batch of N pairs, each of the 2N views must pick its partner among the other 2N - 1.

    ``loss = mean_i -log( exp(s(i, p(i)) / t) / sum_{k != i} exp(s(i, k) / t) )`` with s the cosine
    similarity and p(i) the other view of the same image (Chen et al. 2020, eq. 1). Under DDP, pass the
    embeddings gathered from every rank.

    Args:
        temperature: t > 0.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The loss of views 1 and 2, each (N, D), row i of both the same image; a scalar."""
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        # Exclude self-similarity; -inf rather than a large negative so the softmax ignores it exactly.
        logits.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, targets)


class SimCLRParams(MethodParams):
    """``pretrain.ssl.simclr``."""

    temperature: float = Field(0.5, gt=0.0)  # NT-Xent's


@register_method
class SimCLR(Method[SimCLRParams]):
    """Two symmetric views through one encoder; NT-Xent over the global batch (gathered under DDP)."""

    name = "simclr"
    params_model = SimCLRParams

    def __init__(self, params: SimCLRParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.loss = NTXentLoss(params.temperature)
