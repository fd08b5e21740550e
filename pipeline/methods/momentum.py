"""Momentum (EMA) target networks, shared by BYOL and MoCo v2.

The target is a copy of the online encoder (backbone + projection head) that takes no gradient and
follows the online weights as ``target = m * target + (1 - m) * online`` after every optimiser step.
Only parameters follow: the target's batch-norm statistics come from its own forward passes (it runs in
training mode, as in both papers' code). Under DDP the online weights are identical on every rank, so
the targets are too.
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def momentum_copy(module: ModuleT) -> ModuleT:
    """A frozen deep copy of ``module`` (no parameter requires grad), to serve as its momentum target."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``, parameter by parameter, in place.

    Raises:
        ValueError: the two modules do not have the same number of parameters.
    """
    t = [p.data for p in target.parameters()]
    o = [p.data for p in online.parameters()]
    if len(t) != len(o):
        raise ValueError(f"target has {len(t)} parameters, online {len(o)}")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, o, alpha=1.0 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule (Grill et al. 2020, section 3.2): ``1 - (1 - base) (cos(pi k / K) + 1) / 2``.

    Args:
        base: the momentum of the first update.
        step: the update's number, from 1; k = step - 1.
        total_steps: K, the run's number of updates.

    Returns:
        The momentum, rising from ``base`` towards 1 at the end of training.
    """
    k = min(max(step - 1, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / max(1, total_steps)) + 1.0) / 2.0
