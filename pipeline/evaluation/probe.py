"""Linear probe on cached features: multinomial logistic regression, weight decay chosen on validation.

All candidate weight decays are trained at once, as one stacked parameter tensor (one classifier per
decay): the classifiers share nothing but the mini-batches, so this is the same as training them one
after another, at the cost of one. Features are standardised with the training mean and std; the
optimiser is SGD with Nesterov momentum and a cosine schedule (the solo-learn / lightly linear-eval
recipe) on a zero-initialised classifier, so the only randomness is the seeded batch order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ProbeConfig

TOP5 = 5


@dataclass
class ProbeResult:
    """The linear probe's outcome: the weight decay chosen on validation and its accuracies (shares)."""

    weight_decay: float  # the one chosen on validation
    val_top1: float
    val_top5: float
    test_top1: float | None
    test_top5: float | None
    test_pred: np.ndarray | None  # (N_test,) int64 predictions of the chosen classifier
    val_top1_by_wd: dict[float, float]
    seconds: float


def _check_labels(name: str, labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} labels must lie in [0, {num_classes}), "
                         f"got range [{int(labels.min())}, {int(labels.max())}]")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The share of rows of (N, C) ``logits`` whose label is among the k largest (k clipped to C); NaN for N = 0."""
    if labels.numel() == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return float((top == labels[:, None]).any(dim=-1).float().mean())


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` scaled by the training mean and std (a constant feature gets std 1)."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 test_x: torch.Tensor | None, test_y: torch.Tensor | None, num_classes: int,
                 cfg: ProbeConfig, seed: int = 0) -> ProbeResult:
    """Train one classifier per ``cfg.weight_decays`` on train, pick the best on val, report val and test.

    Args:
        train_x, train_y: (N, d) features and (N,) labels to train on.
        val_x, val_y: the validation features and labels, which choose the weight decay.
        test_x, test_y: the test features and labels, or None.
        num_classes: the label range.
        cfg: ``evaluate.probe``.
        seed: the batch order's seed.

    Returns:
        The chosen decay, val (and test) top-1/top-5, the test predictions, val top-1 per decay.

    Raises:
        ValueError: no weight decay, empty train or val, or labels out of range.
    """
    start = time.perf_counter()
    if not cfg.weight_decays:
        raise ValueError("evaluate.probe.weight_decays must list at least one value")
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"linear probe needs non-empty train and val features, got {len(train_x)} and {len(val_x)}")
    device = train_x.device
    train_y, val_y = train_y.to(device), val_y.to(device)
    _check_labels("train", train_y, num_classes)
    _check_labels("val", val_y, num_classes)
    test = (test_x, test_y) if test_x is not None and test_y is not None else None
    xs = standardize(train_x.float(), val_x.float().to(device),
                     *([test[0].float().to(device)] if test is not None else []))
    xtr, xval = xs[0], xs[1]

    n, d = xtr.shape
    wds = torch.tensor(cfg.weight_decays, dtype=torch.float32, device=device)
    n_wd = len(cfg.weight_decays)
    weight = torch.zeros(n_wd, d, num_classes, device=device, requires_grad=True)
    bias = torch.zeros(n_wd, num_classes, device=device, requires_grad=True)
    opt = torch.optim.SGD([weight, bias], lr=cfg.lr, momentum=0.9, nesterov=True)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            logits = torch.einsum("nd,wdc->wnc", xtr[idx], weight) + bias[:, None, :]
            # Sum of the per-classifier mean losses: each classifier's gradient is its own.
            ce = F.cross_entropy(logits.reshape(-1, num_classes), train_y[idx].repeat(n_wd)) * n_wd
            l2 = 0.5 * (wds * weight.pow(2).sum(dim=(1, 2))).sum()
            opt.zero_grad(set_to_none=True)
            (ce + l2).backward()
            opt.step()
            sched.step()

    with torch.no_grad():
        def logits_of(x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("nd,wdc->wnc", x, weight) + bias[:, None, :]

        val_logits = logits_of(xval)
        val_top1 = [topk_accuracy(val_logits[w], val_y, 1) for w in range(n_wd)]
        best = int(np.argmax(val_top1))  # ties go to the first listed decay
        result = ProbeResult(
            weight_decay=float(cfg.weight_decays[best]),
            val_top1=val_top1[best],
            val_top5=topk_accuracy(val_logits[best], val_y, TOP5),
            test_top1=None, test_top5=None, test_pred=None,
            val_top1_by_wd={float(w): a for w, a in zip(cfg.weight_decays, val_top1, strict=True)},
            seconds=0.0,
        )
        if test is not None:
            ty = test[1].to(device)
            _check_labels("test", ty, num_classes)
            test_logits = logits_of(xs[2])[best]
            result.test_top1 = topk_accuracy(test_logits, ty, 1)
            result.test_top5 = topk_accuracy(test_logits, ty, TOP5)
            result.test_pred = test_logits.argmax(dim=-1).cpu().numpy().astype(np.int64)
    result.seconds = time.perf_counter() - start
    return result
