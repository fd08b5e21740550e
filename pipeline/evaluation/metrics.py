"""Evaluate a frozen encoder: linear probe, kNN, collapse metrics and head sparsity, on h and on z.

Tuning must select on validation only: :func:`knn_score` and :func:`validation_report` never look at test.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from pipeline.config import EvaluateConfig
from pipeline.data.format import Split
from pipeline.evaluation.features import Features, extract_features
from pipeline.evaluation.knn import knn_accuracy
from pipeline.evaluation.probe import linear_probe
from pipeline.evaluation.spectrum import spectrum_stats
from pipeline.models import Encoder, EncoderSpec
from pipeline.sparsehead import head_stats

LEVELS: dict[str, str] = {"backbone": "", "projection": "_z"}  # level -> metric-key suffix
RANDOM_PREFIX = "random_"
Objective = Literal["knn", "linear"]


@dataclass
class EvalResult:
    """What :func:`evaluate_encoder` measured: the metrics, the spectra and the h probe's test predictions."""

    metrics: dict[str, float]
    spectra: dict[str, np.ndarray]  # "backbone", "projection" [, "random_backbone", "random_projection"]
    test_labels: np.ndarray | None = None  # for the confusion matrix of the h probe
    test_pred: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Accumulates wall time per phase; synchronises CUDA so that async kernels are charged correctly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[phase] += time.perf_counter() - start


def random_encoder(spec: EncoderSpec, seed: int) -> Encoder:
    """An encoder of ``spec`` with weights drawn from ``seed``, in eval mode; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = Encoder(spec)
    return enc.eval()


def _labels(split: Split, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(split.labels).to(device)


def _evaluate_features(feats: dict[str, Features], labels: dict[str, torch.Tensor], num_classes: int,
                       cfg: EvaluateConfig, seed: int, timer: _Timer
                       ) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray | None]:
    metrics: dict[str, float] = {}
    spectra: dict[str, np.ndarray] = {}
    test_pred = None
    has_test = "test" in feats
    for level, suffix in LEVELS.items():
        x = {name: f.level(level) for name, f in feats.items()}
        with timer("linear"):
            probe = linear_probe(x["train"], labels["train"], x["val"], labels["val"],
                                 x.get("test"), labels.get("test"), num_classes, cfg.probe, seed)
        metrics[f"val_linear_top1{suffix}"] = probe.val_top1
        metrics[f"val_linear_top5{suffix}"] = probe.val_top5
        metrics[f"linear_weight_decay{suffix}"] = probe.weight_decay
        if has_test:
            metrics[f"test_linear_top1{suffix}"] = float(probe.test_top1)  # type: ignore[arg-type]
            metrics[f"test_linear_top5{suffix}"] = float(probe.test_top5)  # type: ignore[arg-type]
            if level == "backbone":
                test_pred = probe.test_pred
        with timer("knn"):
            for name in ("val", "test") if has_test else ("val",):
                acc = knn_accuracy(x["train"], labels["train"], x[name], labels[name], cfg.knn_k,
                                   cfg.knn_temperature, num_classes)
                for k, a in acc.items():
                    metrics[f"{name}_knn{k}_top1{suffix}"] = a
        with timer("spectrum"):
            stats = spectrum_stats(x["train"])
        metrics[f"rankme{suffix}"] = stats.rankme
        metrics[f"rankme_l2{suffix}"] = stats.rankme_l2
        metrics[f"dims99{suffix}"] = float(stats.dims99)
        spectra[level] = stats.singular_values
    return metrics, spectra, test_pred


def _evaluate_one(encoder: Encoder, splits: dict[str, Split], num_classes: int, cfg: EvaluateConfig,
                  device: torch.device, seed: int, timer: _Timer, progress: bool, tag: str
                  ) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray | None]:
    with timer("extract"):
        feats = {name: extract_features(encoder, s.images, cfg.batch_size, device, progress=progress,
                                        desc=f"{tag} {name}")
                 for name, s in splits.items()}
    labels = {name: _labels(s, device) for name, s in splits.items()}
    metrics, spectra, pred = _evaluate_features(feats, labels, num_classes, cfg, seed, timer)
    metrics.update(head_stats(encoder.head))
    return metrics, spectra, pred


def evaluate_encoder(encoder: Encoder, train: Split, val: Split, test: Split | None, num_classes: int,
                     cfg: EvaluateConfig, device: torch.device | str = "cpu", seed: int = 0,
                     progress: bool = False) -> EvalResult:
    """Every evaluation metric of ``encoder`` and (with ``cfg.random_baseline``) of its random twin.

    Args:
        encoder: the frozen encoder.
        train, val, test: the probe's and kNN's memory, the split that chooses the probe's decay, and the
            held-out split (None: no ``test_*`` keys; the SSL gain is then measured on val).
        num_classes: the label range.
        cfg: the evaluation params.
        device: where to run.
        seed: the probe's batch order and the random encoder's weights.
        progress: show progress bars.

    Returns:
        Flat float metrics; the backbone's h has no suffix and the projection's z has ``_z``:

        - ``val_linear_top1``, ``val_linear_top5``, ``test_linear_top1``, ``test_linear_top5`` (top-5 is 1.0
          with fewer than 5 classes), ``linear_weight_decay`` (the decay chosen on val);
        - ``val_knn{k}_top1``, ``test_knn{k}_top1`` for each k of ``cfg.knn_k``;
        - ``rankme`` (Garrido et al.), ``rankme_l2`` (on L2-normalised rows), ``dims99`` of the training
          features;
        - the head report of :func:`pipeline.sparsehead.head_stats`;
        - with the random baseline, every key above prefixed ``random_``, and ``ssl_gain_linear``
          (linear top-1 minus the random encoder's) and ``ssl_gain_knn`` (the same at the smallest k);
        - ``num_train``, ``num_val``, ``num_test``; timings ``eval_seconds``, ``eval_extract_seconds``,
          ``eval_linear_seconds``, ``eval_knn_seconds``, ``eval_spectrum_seconds``.

        And the spectra and test predictions for the plots.
    """
    device = torch.device(device)
    start = time.perf_counter()
    timer = _Timer(device)
    splits = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    metrics, spectra, pred = _evaluate_one(encoder, splits, num_classes, cfg, device, seed, timer,
                                           progress, "trained")
    if cfg.random_baseline:
        rand = random_encoder(encoder.spec, seed)
        r_metrics, r_spectra, _ = _evaluate_one(rand, splits, num_classes, cfg, device, seed, timer,
                                                progress, "random")
        metrics.update({f"{RANDOM_PREFIX}{k}": v for k, v in r_metrics.items()})
        spectra.update({f"{RANDOM_PREFIX}{k}": v for k, v in r_spectra.items()})
        where = "test" if test is not None else "val"
        k_min = min(cfg.knn_k)
        for name, key in (("linear", f"{where}_linear_top1"), ("knn", f"{where}_knn{k_min}_top1")):
            metrics[f"ssl_gain_{name}"] = metrics[key] - metrics[f"{RANDOM_PREFIX}{key}"]
    metrics.update({"num_train": float(len(train)), "num_val": float(len(val)),
                    "num_test": float(len(test)) if test is not None else 0.0})
    timings = {f"eval_{phase}_seconds": s for phase, s in timer.seconds.items()}
    timings["eval_seconds"] = time.perf_counter() - start
    metrics.update(timings)
    return EvalResult(metrics, spectra, test.labels.copy() if test is not None else None, pred, timings)


def _num_classes(*splits: Split) -> int:
    return int(max(int(s.labels.max()) for s in splits if len(s)) + 1)


def knn_score(encoder: Encoder, train: Split, val: Split, cfg: EvaluateConfig,
              device: torch.device | str = "cpu", num_classes: int | None = None) -> float:
    """The fast tuning signal: validation kNN top-1 of h at the smallest ``cfg.knn_k`` (a share).

    Args:
        encoder: the encoder.
        train: the kNN's memory (labelled).
        val: the queries.
        cfg: the evaluation params.
        device: where to run.
        num_classes: the label range (default: from the labels).
    """
    device = torch.device(device)
    tr = extract_features(encoder, train.images, cfg.batch_size, device)
    va = extract_features(encoder, val.images, cfg.batch_size, device)
    k = min(cfg.knn_k)
    acc = knn_accuracy(tr.h, _labels(train, device), va.h, _labels(val, device), [k], cfg.knn_temperature,
                       num_classes or _num_classes(train, val))
    return acc[k]


def validation_report(encoder: Encoder, train: Split, val: Split, num_classes: int, cfg: EvaluateConfig,
                      device: torch.device | str = "cpu", seed: int = 0, objective: Objective = "knn"
                      ) -> dict[str, float]:
    """What tuning reads of one trained encoder, from one feature extraction, on validation only.

    Args:
        encoder: the encoder.
        train: the kNN's memory and the probe's training data.
        val: the split scored.
        num_classes: the label range.
        cfg: the evaluation params.
        device: where to run.
        seed: the probe's batch order.
        objective: ``linear`` also trains the probe.

    Returns:
        ``knn`` (top-1 at the smallest k, on h), ``linear`` (probe top-1 on h, for the ``linear`` objective),
        ``rankme`` and ``rankme_z`` of the training features, and the head's statistics.

    Raises:
        ValueError: an unknown objective.
    """
    if objective not in ("knn", "linear"):
        raise ValueError(f"objective must be 'knn' or 'linear', got {objective!r}")
    device = torch.device(device)
    tr = extract_features(encoder, train.images, cfg.batch_size, device)
    va = extract_features(encoder, val.images, cfg.batch_size, device)
    ytr, yva = _labels(train, device), _labels(val, device)
    k = min(cfg.knn_k)
    out = {"knn": knn_accuracy(tr.h, ytr, va.h, yva, [k], cfg.knn_temperature, num_classes)[k],
           "rankme": spectrum_stats(tr.h).rankme, "rankme_z": spectrum_stats(tr.z).rankme,
           **head_stats(encoder.head)}
    if objective == "linear":
        out["linear"] = linear_probe(tr.h, ytr, va.h, yva, None, None, num_classes, cfg.probe, seed).val_top1
    return out
