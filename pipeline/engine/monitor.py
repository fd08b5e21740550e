"""Quality curves while pretraining, as solo-learn's online kNN and lightly's kNN callback give them.

After every epoch: RankMe of h and z, and the spread of the normalised z, on a fixed label-free subset of
the training images; every ``pretrain.monitor_every`` epochs (and at the last), the weighted kNN top-1 of h
on the validation split carved from train (never test), with the evaluation's own kNN. The README
("Quality curves") defines the collapse warning and its thresholds.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import EvaluateConfig, PretrainConfig
from pipeline.data.format import Split
from pipeline.data.shards import ImageArray
from pipeline.data.splits import train_val_split
from pipeline.evaluation.features import Features, extract_features
from pipeline.evaluation.knn import knn_accuracy
from pipeline.evaluation.spectrum import rankme, singular_values
from pipeline.io import atomic_path
from pipeline.models.encoder import Encoder

log = logging.getLogger(__name__)

PREFIX = "monitor/"  # apart from the evaluation's own rankme / val_knn keys, which share the MLflow run
RANKME_H, RANKME_Z, Z_STD = f"{PREFIX}rankme_h", f"{PREFIX}rankme_z", f"{PREFIX}z_std"
COLLAPSED = f"{PREFIX}collapsed"  # 1 on an epoch whose curves show a collapse, else 0
SECONDS = "monitor_seconds"  # a timing (the suffix keeps it out of the metrics files)
# The label-free subset: at least the widest h measured here (ResNet-18's 512), since RankMe is capped at
# min(N, d); small enough that one forward pass costs a few percent of an epoch.
RANKME_IMAGES = 512
DEFAULT_POINTS = 5  # kNN points per run when pretrain.monitor_every is null
# Collapse, after the warm-up (README, "Quality curves"): z's normalised spread an order of magnitude below
# an isotropic cloud's, or RankMe of z below 1.5 (one direction: every embedding on a line through 0).
COLLAPSE_Z_STD = 0.1
COLLAPSE_RANKME = 1.5


def knn_key(k: int) -> str:
    """The metric name of the validation kNN curve at ``k``."""
    return f"{PREFIX}val_knn{k}_top1"


def knn_every(monitor_every: int | None, epochs: int) -> int:
    """Epochs between kNN points: ``monitor_every``, or ``ceil(epochs / 5)`` (five points) when it is None."""
    return monitor_every or max(1, math.ceil(epochs / DEFAULT_POINTS))


def normalised_std(z: torch.Tensor) -> float:
    """The mean per-dimension std of the L2-normalised rows of (N, d) ``z``, times sqrt(d).

    An isotropic cloud gives ~1 (each coordinate of a random unit vector has std 1/sqrt(d)); a collapse
    to one point gives 0. SimSiam's paper (Chen & He 2021, fig. 2) tracks the unscaled quantity.
    """
    zn = F.normalize(z.double(), dim=1)
    return float(zn.std(dim=0).mean() * math.sqrt(z.shape[1]))


def collapse_reason(rankme_z: float, z_std: float) -> str | None:
    """Why an epoch's embeddings count as collapsed, or None when they do not.

    Args:
        rankme_z: RankMe of z (1 for embeddings on one line, up to min(N, d)).
        z_std: :func:`normalised_std` of z (1 for an isotropic cloud, 0 for one point).

    Returns:
        What fell below its threshold, in words.
    """
    why = []
    if z_std < COLLAPSE_Z_STD:
        why.append(f"the normalised std of z is {z_std:.3f} (< {COLLAPSE_Z_STD}; 1 for an isotropic cloud)")
    if rankme_z < COLLAPSE_RANKME:
        why.append(f"RankMe of z is {rankme_z:.2f} (< {COLLAPSE_RANKME})")
    return "; ".join(why) or None


@dataclass
class KnnProbe:
    """Labelled data for the kNN curve.

    Attributes:
        memory: the training split minus validation: the kNN's memory bank.
        queries: the validation split.
        k: the neighbours (the smallest of ``evaluate.knn_k``).
        temperature: ``evaluate.knn_temperature``.
        num_classes: the classes of the labels.
    """

    memory: Split
    queries: Split
    k: int
    temperature: float
    num_classes: int


class Monitor:
    """Measures the quality curves of an encoder after each epoch (on the main rank).

    Args:
        images: the fixed label-free subset, uint8 (N, H, W, C), for RankMe and the spread of z.
        batch_size: images per forward pass.
        knn: the kNN curve's data; None: RankMe only (a tuning trial scores validation kNN itself).
        every: epochs between kNN points; the last epoch always has one.
        epochs: the run's epoch budget.
        warmup_epochs: epochs without collapse checks: a freshly initialised head maps every image near one
            direction (measured on digits: normalised std of z 0.003 to 0.07 after the first epoch, for
            all six methods), which training then spreads.

    Attributes:
        warning: the first collapse of the run ("epoch <e>: <why>"), or None.
    """

    def __init__(self, images: np.ndarray, batch_size: int, *, knn: KnnProbe | None = None, every: int = 1,
                 epochs: int = 1, warmup_epochs: int = 0) -> None:
        self.images, self.batch_size, self.knn = images, batch_size, knn
        self.every, self.epochs, self.warmup_epochs = every, epochs, warmup_epochs
        self.warning: str | None = None

    @classmethod
    def for_training(cls, train: Split, cfg: PretrainConfig, ev: EvaluateConfig, split_seed: int, *,
                     with_knn: bool = True) -> Monitor:
        """The monitor of a run of ``cfg`` that trains on ``train``.

        Args:
            train: the training split, labels included.
            cfg: the run's pretraining params (epochs, ``monitor_every``, warm-up).
            ev: the evaluation params: validation share, kNN k and temperature, batch size.
            split_seed: the seed of the validation split (``seed``) and of the label-free subset.
            with_knn: measure the validation kNN curve (on ``train`` carved as the evaluation carves it).
        """
        n = len(train)
        pick = np.sort(np.random.default_rng(split_seed).permutation(n)[:min(RANKME_IMAGES, n)])
        images = np.asarray(train.images[pick])
        knn = None
        if with_knn:
            memory, queries = train_val_split(train, ev.val_fraction, split_seed)
            num_classes = int(train.labels.max()) + 1 if n else 0
            knn = KnnProbe(memory, queries, min(ev.knn_k), ev.knn_temperature, num_classes)
        return cls(images, ev.batch_size, knn=knn, every=knn_every(cfg.monitor_every, cfg.epochs), epochs=cfg.epochs,
                   warmup_epochs=cfg.optim.warmup_epochs)

    def measures_knn(self, epoch: int) -> bool:
        """Whether the 1-based ``epoch`` has a kNN point."""
        return self.knn is not None and (epoch % self.every == 0 or epoch == self.epochs)

    def __call__(self, epoch: int, encoder: Encoder) -> dict[str, float]:
        """The curves' points after the 1-based ``epoch``; logs a warning at the run's first collapse.

        Returns:
            :data:`RANKME_H`, :data:`RANKME_Z`, :data:`Z_STD`, :data:`COLLAPSED`, :data:`SECONDS`, and on
            kNN epochs :func:`knn_key`.
        """
        start = time.perf_counter()
        device = next(encoder.parameters()).device
        f = self._features(encoder, self.images, device)
        out = {RANKME_H: rankme(singular_values(f.h)), RANKME_Z: rankme(singular_values(f.z)),
               Z_STD: normalised_std(f.z)}
        if self.knn is not None and self.measures_knn(epoch):
            p = self.knn
            mem = self._features(encoder, p.memory.images, device).h
            qry = self._features(encoder, p.queries.images, device).h
            out[knn_key(p.k)] = knn_accuracy(mem, torch.from_numpy(p.memory.labels), qry,
                                             torch.from_numpy(p.queries.labels), [p.k], p.temperature,
                                             p.num_classes)[p.k]
        why = collapse_reason(out[RANKME_Z], out[Z_STD]) if epoch > self.warmup_epochs else None
        out[COLLAPSED] = float(why is not None)
        if why and self.warning is None:
            self.warning = f"epoch {epoch}: {why}"
            log.warning("the embeddings are collapsing at %s", self.warning)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[SECONDS] = time.perf_counter() - start
        return out

    def _features(self, encoder: Encoder, images: ImageArray, device: torch.device) -> Features:
        return extract_features(encoder, images, self.batch_size, device)


CURVES_FILE, KNN_FILE = "curves.csv", "knn.csv"
# Per-epoch columns of CURVES_FILE: the training figures, then the monitor's label-free ones.
CURVE_COLUMNS = {"loss_total": "loss_total", "loss_ssl": "loss_ssl", "sparse_reg": "sparse_reg",
                 "head_sparsity": "head_sparsity", "head_exact_zero_frac": "head_exact_zero_frac", "lr": "lr",
                 "rankme_h": RANKME_H, "rankme_z": RANKME_Z, "z_std": Z_STD}


def write_curves(plots_dir: str | Path, history: list[dict[str, float]]) -> list[Path]:
    """The DVC plots of a run's history: ``curves.csv`` (one row per epoch) and ``knn.csv`` (one per kNN point).

    Args:
        plots_dir: the folder to write into.
        history: each epoch's metrics, epoch 1 first.

    Returns:
        The two files' paths. Columns are named without the ``monitor/`` prefix; ``knn.csv``'s accuracy
        column is ``val_knn_top1`` whatever its k (in the metric name).
    """
    plots_dir = Path(plots_dir)
    curves = [["epoch", *CURVE_COLUMNS]]
    curves += [[str(e), *(_cell(m.get(key)) for key in CURVE_COLUMNS.values())] for e, m in enumerate(history, 1)]
    knn = [["epoch", "val_knn_top1"]]
    for e, m in enumerate(history, 1):
        acc = next((v for k, v in m.items() if k.startswith(f"{PREFIX}val_knn")), None)
        if acc is not None:
            knn.append([str(e), _cell(acc)])
    return [_write_csv(plots_dir / CURVES_FILE, curves), _write_csv(plots_dir / KNN_FILE, knn)]


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.8g}"


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path
