"""Optimisers and the learning-rate schedule: SGD with momentum or LARS, linear warm-up then cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pipeline.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as SimCLR uses it: SGD with momentum whose step for each weight matrix is
    scaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``.

    Groups with ``lars=False`` (biases and norm parameters) take plain SGD steps without weight decay.
    Each step keeps every scaled parameter's trust ratio in ``state[p]["trust"]``, so that what follows the
    step (SparseHead's proximal update, :func:`applied_rate`) knows the rate the step applied.

    Args:
        params: parameters or parameter groups, as for any torch optimiser.
        lr: the base rate.
        momentum: the momentum of the (trust-scaled) update.
        weight_decay: L2 weight decay, added to the gradient before the trust ratio.
        eta: the trust coefficient.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
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
                    self.state[p]["trust"] = trust
                    d = d.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def applied_rate(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float | torch.Tensor:
    """The rate the optimiser's last step applied to ``param``'s gradient.

    Args:
        optimizer: the optimiser that stepped ``param``.
        param: one of its parameters.

    Returns:
        The lr of the parameter's group (a float); under :class:`LARS`, that lr times the parameter's trust
        ratio of the last step (a 0-d tensor on the parameter's device, so that no step waits for it).

    Raises:
        ValueError: when the optimiser does not step ``param``.
    """
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            trust = optimizer.state[param].get("trust") if group.get("lars") else None
            return group["lr"] if trust is None else group["lr"] * trust
    raise ValueError("applied_rate: the optimiser does not step this parameter")


def _param_groups(params: list[nn.Parameter], weight_decay: float, lars: bool) -> list[dict[str, Any]]:
    # Biases and norm parameters carry no weight decay (and no trust ratio): decaying them hurts SSL.
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}]
    if lars:
        groups[1]["lars"] = False
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int,
                    extra: list[nn.Parameter] | None = None, default_lr: float = 0.3) -> torch.optim.Optimizer:
    """SGD or LARS over ``model``'s parameters and ``extra`` ones (a method's predictor, say).

    Args:
        model: the module whose parameters are stepped (the encoder).
        cfg: ``pretrain.optim``.
        batch_size: the global batch, for the linear scaling rule.
        extra: parameters beyond ``model``'s.
        default_lr: the SSL method's base rate, used when ``cfg.lr`` is None.

    Returns:
        The optimiser: weight matrices in its first group (with weight decay and, under LARS, the trust
        ratio), biases and norm parameters in the second. The base rate is for a batch of 256 and scales
        linearly with ``batch_size``.
    """
    lr = (cfg.lr if cfg.lr is not None else default_lr) * batch_size / 256  # the linear scaling rule
    params = [*model.parameters(), *(extra or [])]
    if cfg.name == "lars":
        return LARS(_param_groups(params, cfg.weight_decay, True), lr=lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, eta=cfg.eta)
    # fused: one kernel for every parameter's update (CUDA and CPU); None keeps torch's default (foreach).
    return torch.optim.SGD(_param_groups(params, cfg.weight_decay, False), lr=lr, momentum=cfg.momentum,
                           fused=cfg.fused or None)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The multiplier of the base rate at each step: linear from ~0 to 1, then cosine to 0.

    Args:
        total_steps: the steps of the whole run.
        warmup_steps: the steps of the linear warm-up.

    Returns:
        ``factor(step)`` for :class:`torch.optim.lr_scheduler.LambdaLR`.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
