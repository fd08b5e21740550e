"""MoCo v2 (Chen, Fan, Girshick & He, 2020, "Improved Baselines with Momentum Contrastive Learning"; MoCo:
He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning").

Queries come from the online encoder, keys from a momentum copy of it (backbone + head, momentum
``pretrain.ssl.momentum``: MoCo's 0.999 for ImageNet, 0.99 here for small data), negatives from a
first-in-first-out queue of past keys. InfoNCE with temperature 0.2:
``-log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_queue exp(q.k- / t)) )`` on L2-normalised vectors.

Departures, each documented: the loss is symmetrised (each view is the query of the other's key, as
MoCo v3 and solo-learn's MoCo v2+ do), so the online network sees both views like every other method
here, and both views' keys enter the queue; the queue holds ``pretrain.ssl.moco_queue_size`` keys
(1024 by default: digits has 1,437 training images; the paper's 65536 is for ImageNet); there is no
shuffled batch norm (one device sees the whole batch; MoCo v3 dropped it too). Under DDP the keys of all
ranks enter the queue (gathered without gradient), so every rank holds the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import SSLConfig
from pipeline.engine.distributed import DistContext, gather
from pipeline.errors import UserError
from pipeline.methods.base import Method, OnlineForward, StepOutput, full_precision
from pipeline.methods.momentum import ema_update_, momentum_copy
from pipeline.models.encoder import Encoder


class InfoNCELoss(nn.Module):
    """``forward(query, key, negatives)``: (N, D) queries, their (N, D) positive keys and (K, D) negatives
    shared by all queries; every vector is L2-normalised here. Returns the batch mean."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor) -> Tensor:
        q, k, neg = (F.normalize(t, dim=1) for t in (query, key, negatives))
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ neg.T], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
        return F.cross_entropy(logits, labels)


class KeyQueue(nn.Module):
    """A ring buffer of the last ``size`` keys; buffers, so the checkpoint holds it and its pointer."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        # Random unit vectors until real keys replace them, as MoCo starts.
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(self, new: Tensor) -> None:
        """Overwrite the oldest ``len(new)`` keys; the pointer stays on the device (no host sync)."""
        m = new.shape[0]
        if m > self.size:
            raise UserError(f"pretrain.ssl.moco_queue_size: {self.size} is smaller than one step's {m} keys "
                             "(2 x batch size x ranks); raise it")
        idx = (self.ptr + torch.arange(m, device=new.device)) % self.size
        self.keys.index_copy_(0, idx, new.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + m) % self.size)


class MoCoV2(Method):
    name = "mocov2"

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__(cfg, encoder)
        self.target = momentum_copy(encoder)
        self.queue = KeyQueue(cfg.moco_queue_size, encoder.projection_dim)
        self.loss = InfoNCELoss(cfg.moco_temperature)
        self._pending: Tensor | None = None  # this step's keys, queued after the optimiser step

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        x = torch.cat([v1, v2])
        _, z = online(x)
        with torch.no_grad():
            _, k = self.target.forward_both(x)
        with full_precision(z):
            q1, q2 = z.float().chunk(2)
            k = F.normalize(k.float(), dim=1)
            k1, k2 = k.chunk(2)
            # This step's keys are not yet in the queue: it is written in after_step, once backward is done.
            neg = self.queue.keys
            loss = (self.loss(q1, k2, neg) + self.loss(q2, k1, neg)) / 2
        if self.training:
            self._pending = gather(k, dist)
        return StepOutput(loss, z)

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        if self._pending is not None:
            self.queue.push(self._pending)
            self._pending = None
        ema_update_(self.target, encoder, self.cfg.momentum)
