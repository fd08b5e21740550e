"""The projection head: an MLP whose Linear layers the SparseHead regulariser acts on."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear -> [BN] -> ReLU for each hidden width, then a final Linear to ``out_dim``."""

    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(d, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            d = width
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
