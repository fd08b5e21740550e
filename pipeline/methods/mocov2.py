"""MoCo v2 (Chen, Fan, Girshick & He, 2020, "Improved Baselines with Momentum Contrastive Learning"; MoCo:
He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning").

Queries come from the online encoder, keys from a momentum copy of it (backbone + head), negatives from
a first-in-first-out queue of past keys. Departures, each documented: the loss is symmetrised (each view
is the query of the other's key, as MoCo v3 and solo-learn's MoCo v2+ do), so the online network sees
both views like every other method here, and both views' keys enter the queue; there is no shuffled
batch norm (one device sees the whole batch; MoCo v3 dropped it too). Under DDP the keys of all ranks
enter the queue (gathered without gradient), so every rank holds the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from pipeline.engine.distributed import DistContext, gather
from pipeline.errors import UserError
from pipeline.methods.base import Method, full_precision
from pipeline.methods.momentum import MomentumParams, ema_update_, momentum_copy
from pipeline.methods.registry import register_method
from pipeline.models.encoder import Encoder


class InfoNCELoss(nn.Module):
    """``-log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_neg exp(q.k- / t)) )`` on L2-normalised vectors, batch
    mean (He et al. 2020, eq. 1).

    Args:
        temperature: t > 0.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor) -> Tensor:
        """The loss of (N, D) queries, their (N, D) positive keys and (K, D) negatives shared by all queries."""
        q, k, neg = (F.normalize(t, dim=1) for t in (query, key, negatives))
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ neg.T], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
        return F.cross_entropy(logits, labels)


class KeyQueue(nn.Module):
    """A ring buffer of the last ``size`` keys, (size, dim); buffers, so the checkpoint holds it and its
    pointer. Random unit vectors until real keys replace them, as MoCo starts.

    Args:
        size: the number of keys kept.
        dim: their dimension.
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """The number of keys kept."""
        return int(self.keys.shape[0])

    @torch.no_grad()
    def push(self, new: Tensor) -> None:
        """Overwrite the oldest ``len(new)`` keys with (M, dim) ``new``; the pointer stays on the device (no
        host sync).

        Raises:
            ValueError: M exceeds the queue's size.
        """
        m = new.shape[0]
        if m > self.size:
            raise UserError(f"pretrain.ssl.mocov2.queue_size: {self.size} is smaller than one step's {m} keys "
                             "(2 x batch size x ranks); raise it")
        idx = (self.ptr + torch.arange(m, device=new.device)) % self.size
        self.keys.index_copy_(0, idx, new.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + m) % self.size)


class MoCoV2Params(MomentumParams):
    """``pretrain.ssl.mocov2``: the key encoder's ``momentum`` is constant unless ``final_momentum`` is set
    (MoCo's 0.999 is for ImageNet; 0.99 for small data; solo-learn's MoCo v2+ rises from 0.99 to 0.999)."""

    temperature: float = Field(0.2, gt=0.0)  # InfoNCE's
    # Negatives kept: 1024 for small data sets (digits has 1,437 training images; the paper's 65536 is for
    # ImageNet)
    queue_size: int = Field(1024, gt=0)


@register_method
class MoCoV2(Method[MoCoV2Params]):
    """Symmetrised InfoNCE of online queries against momentum keys and a queue of past keys."""

    name = "mocov2"
    params_model = MoCoV2Params

    def __init__(self, params: MoCoV2Params, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.target = momentum_copy(encoder)
        self.queue = KeyQueue(params.queue_size, encoder.projection_dim)
        self.loss = InfoNCELoss(params.temperature)
        self._pending: Tensor | None = None  # this step's keys, queued after the optimiser step

    def step_loss(self, x: Tensor, z: Tensor, dist: DistContext) -> Tensor:
        """Each view's queries against the other view's keys and the queue; this step's keys wait for
        :meth:`after_step` (backward must not see the queue change)."""
        with torch.no_grad():
            _, k = self.target.forward_both(x)
        with full_precision(z):
            q1, q2 = z.float().chunk(2)
            k = F.normalize(k.float(), dim=1)
            k1, k2 = k.chunk(2)
            neg = self.queue.keys
            loss = (self.loss(q1, k2, neg) + self.loss(q2, k1, neg)) / 2
        if self.training:
            self._pending = gather(k, dist)
        return loss

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """Queue this step's keys; the key encoder follows the online one with the momentum of this step."""
        if self._pending is not None:
            self.queue.push(self._pending)
            self._pending = None
        ema_update_(self.target, encoder, self.params.at(step, total_steps))
