"""Evaluation plots: spectra and the confusion matrix, as CSV for ``dvc plots`` and as PNG for MLflow.

Files written into the plots folder:

- ``spectrum_backbone.csv``, ``spectrum_projection.csv``: columns ``index,log_singular_value`` (natural
  log of the covariance spectrum, index from 1), for DVC's ``linear`` template; with the random baseline
  also ``random_spectrum_backbone.csv`` and ``random_spectrum_projection.csv``.
- ``spectrum_backbone.png``, ``spectrum_projection.png``: trained (and random) spectra on one chart.
- ``confusion.csv``: one row per test image, columns ``actual,predicted`` (class names), for DVC's
  ``confusion`` template; ``confusion.png``: the count matrix.

PNGs are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so no global pyplot state is touched.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.evaluation.metrics import LEVELS, RANDOM_PREFIX, EvalResult
from pipeline.evaluation.spectrum import log_spectrum
from pipeline.io import atomic_path

SPECTRUM_COLUMNS = ("index", "log_singular_value")
CONFUSION_COLUMNS = ("actual", "predicted")
# Per-cell counts are printed on the confusion image only while they stay legible.
_ANNOTATE_MAX_CLASSES = 20


def save_png(fig: Figure, path: str | Path) -> Path:
    """Lay out ``fig`` and write it as a PNG, atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def write_spectrum_csv(path: str | Path, singular_values: np.ndarray) -> Path:
    logs = log_spectrum(singular_values)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SPECTRUM_COLUMNS)
        w.writerows((i + 1, f"{v:.8g}") for i, v in enumerate(logs))
    return Path(path)


def plot_spectra_png(path: str | Path, curves: dict[str, np.ndarray], title: str) -> Path:
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.add_subplot()
    for label, s in curves.items():
        ax.plot(np.arange(1, len(s) + 1), log_spectrum(s), label=label)
    ax.set_xlabel("singular value rank")
    ax.set_ylabel("log singular value")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def write_confusion_csv(path: str | Path, y_true: np.ndarray, y_pred: np.ndarray,
                        class_names: Sequence[str]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CONFUSION_COLUMNS)
        w.writerows((class_names[int(a)], class_names[int(p)]) for a, p in zip(y_true, y_pred, strict=True))
    return Path(path)


def plot_confusion_png(path: str | Path, y_true: np.ndarray, y_pred: np.ndarray,
                       class_names: Sequence[str], title: str = "test confusion (backbone linear probe)") -> Path:
    n = len(class_names)
    m = confusion_counts(y_true, y_pred, n)
    side = min(max(4.0, 0.45 * n + 2), 14.0)
    fig = Figure(figsize=(side, side), dpi=120)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= _ANNOTATE_MAX_CLASSES:
        ticks = np.arange(n)
        ax.set_xticks(ticks, labels=list(class_names), rotation=90)
        ax.set_yticks(ticks, labels=list(class_names))
        threshold = m.max() / 2 if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return save_png(fig, path)


def write_plots(result: EvalResult, plots_dir: str | Path, class_names: Sequence[str]) -> list[Path]:
    """Every file named in this module's docstring that ``result`` has the data for; returns their paths."""
    plots_dir = Path(plots_dir)
    written: list[Path] = []
    for level in LEVELS:
        curves = {"trained": result.spectra[level]}
        written.append(write_spectrum_csv(plots_dir / f"spectrum_{level}.csv", result.spectra[level]))
        random_key = f"{RANDOM_PREFIX}{level}"
        if random_key in result.spectra:
            curves["random init"] = result.spectra[random_key]
            written.append(write_spectrum_csv(plots_dir / f"{RANDOM_PREFIX}spectrum_{level}.csv",
                                              result.spectra[random_key]))
        written.append(plot_spectra_png(plots_dir / f"spectrum_{level}.png", curves,
                                        f"{level} covariance spectrum"))
    if result.test_labels is not None and result.test_pred is not None:
        written.append(write_confusion_csv(plots_dir / "confusion.csv", result.test_labels, result.test_pred,
                                           class_names))
        written.append(plot_confusion_png(plots_dir / "confusion.png", result.test_labels, result.test_pred,
                                          class_names))
    return written
