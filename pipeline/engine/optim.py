"""Optimisers and the learning-rate schedule: SGD with momentum or LARS, linear warm-up then cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as SimCLR uses it: SGD with momentum whose step for each weight matrix is
    scaled by the trust ratio eta * ||w|| / ||g + wd * w||. Groups with ``lars=False`` (biases and norm
    parameters) take plain SGD steps without weight decay. With ``clip`` the ratio is divided by the
    rate and capped at 1 (solo-learn's ``clip_lr``), so a layer never moves faster than plain SGD would.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, clip: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True,
                                      clip=clip))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = p.norm(), d.norm()
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    if group["clip"]:
                        trust = (trust / group["lr"]).clamp(max=1.0)
                    d = d.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _param_groups(params: list[nn.Parameter], weight_decay: float, lars: bool) -> list[dict]:
    # Biases and norm parameters carry no weight decay (and no trust ratio): decaying them hurts SSL.
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if lars:
        groups[1]["lars"] = False
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int,
                    extra: list[nn.Parameter] | None = None, default_lr: float = 0.3) -> torch.optim.Optimizer:
    """SGD or LARS over ``model``'s parameters and ``extra`` ones (a method's predictor, say).

    ``cfg.lr`` (or ``default_lr``, the SSL method's, when it is None) is the rate for a batch of 256.
    The first group holds the weight matrices (the projection head's among them): the loop reads its
    current rate for the proximal SparseHead step.
    """
    lr = (cfg.lr if cfg.lr is not None else default_lr) * batch_size / 256  # the linear scaling rule
    params = [*model.parameters(), *(extra or [])]
    if cfg.name == "lars":
        return LARS(_param_groups(params, cfg.weight_decay, True), lr=lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, eta=cfg.eta, clip=cfg.lars_clip)
    # fused: one kernel for every parameter's update (CUDA and CPU); None keeps torch's default (foreach).
    return torch.optim.SGD(_param_groups(params, cfg.weight_decay, False), lr=lr, momentum=cfg.momentum,
                           fused=cfg.fused or None)


def warmup_cosine(total_steps: int, warmup_steps: int) -> callable:
    """Multiplier of the base rate at each step: linear from ~0 to 1, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
