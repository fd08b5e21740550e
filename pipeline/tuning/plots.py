"""The study's figures: the objective per trial (``history.png``), the objective, RankMe of z and the head's
sparsity against lambda with each baseline's band (``lambda.png``), and Optuna's parameter importances
(``importances.png``), all drawn from :func:`.table.trial_rows`."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState

from pipeline.evaluation.plots import save_png
from pipeline.tuning.space import SearchSpace

log = logging.getLogger(__name__)

# Importances fit a random forest on (params -> value): below this many completed trials it is noise.
MIN_TRIALS_FOR_IMPORTANCE = 4


def _finite(rows: list[dict], key: str = "value", **where: object) -> list[dict]:
    """The rows with a finite ``key`` that match ``where``."""
    return [r for r in rows if r[key] is not None and math.isfinite(r[key])
            and all(r[k] == v for k, v in where.items())]


def plot_history(path: str | Path, rows: list[dict], objective: str) -> Path:
    """The objective of each trial (mean +- sd over seeds), the best so far, pruned trials' last means and
    each baseline as a line; returns ``path``."""
    fig = Figure(figsize=(5.5, 3.5), dpi=120)
    ax = fig.add_subplot()
    done = _finite(rows, state="COMPLETE")
    pruned = _finite(rows, state="PRUNED")
    if done:
        xs = [r["number"] for r in done]
        ax.errorbar(xs, [r["value"] for r in done], yerr=[r["sd"] or 0.0 for r in done], fmt="o", capsize=2,
                    label="complete (mean +- sd over seeds)")
        ax.step(xs, np.maximum.accumulate([r["value"] for r in done]), where="post", label="best so far")
    if pruned:
        ax.plot([r["number"] for r in pruned], [r["value"] for r in pruned], "x", color="grey",
                label="pruned (last mean)")
    for r in _finite(rows, state="COMPLETE", baseline=True):
        ax.axhline(r["value"], color="black", linestyle="--", linewidth=1, label=f"baseline {r['method']}")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {objective} top-1")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def plot_lambda(path: str | Path, rows: list[dict], objective: str) -> Path:
    """Three panels against lambda (log axis): the objective with sd error bars and each method's baseline
    band, RankMe of z, and the head's sparsity (near-zero and exact zeros); returns ``path``."""
    fig = Figure(figsize=(12, 3.6), dpi=120)
    axes = fig.subplots(1, 3)
    groups = sorted({(str(r["method"]), str(r["form"]), str(r["update"])) for r in rows if not r["baseline"]})
    colors = {m: f"C{i}" for i, m in enumerate(sorted({str(r["method"]) for r in rows}))}
    markers: dict[tuple[str, str], str] = {}
    for method, form, update in groups:
        pts = sorted((r for r in _finite(rows, state="COMPLETE", baseline=False)
                      if (str(r["method"]), str(r["form"]), str(r["update"])) == (method, form, update)),
                     key=lambda r: r["lambda"])
        if not pts:
            continue
        marker = markers.setdefault((form, update), "osD^v<>"[len(markers) % 7])
        label = f"{method} {form} {update}"
        lam = [r["lambda"] for r in pts]
        axes[0].errorbar(lam, [r["value"] for r in pts], yerr=[r["sd"] or 0.0 for r in pts], fmt=marker,
                         color=colors[method], capsize=2, label=label)
        axes[1].plot(lam, [r["rankme_z"] for r in pts], marker, color=colors[method], label=label)
        axes[2].plot(lam, [r["head_sparsity"] for r in pts], marker, color=colors[method],
                     label=f"{label}: |w| < 1% max")
        axes[2].plot(lam, [r["head_exact_zero_frac"] for r in pts], marker, color=colors[method],
                     fillstyle="none", label=f"{label}: exactly 0")
    for r in _finite(rows, state="COMPLETE", baseline=True):
        c = colors[str(r["method"])]
        sd = r["sd"] or 0.0
        axes[0].axhspan(r["value"] - sd, r["value"] + sd, color=c, alpha=0.15)
        axes[0].axhline(r["value"], color=c, linestyle="--", linewidth=1,
                        label=f"{r['method']} baseline (lambda = 0) +- sd")
        if r["rankme_z"] is not None:
            axes[1].axhline(r["rankme_z"], color=c, linestyle="--", linewidth=1, label=f"{r['method']} baseline")
        if r["head_sparsity"] is not None:
            axes[2].axhline(r["head_sparsity"], color=c, linestyle="--", linewidth=1,
                            label=f"{r['method']} baseline")
    titles = (f"validation {objective} top-1 (mean +- sd over seeds)", "RankMe of z", "head sparsity")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("SparseHead lambda")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return save_png(fig, path)


def param_importances(study: optuna.Study, space: SearchSpace) -> dict[str, float] | None:
    """Optuna's importances of the searched parameters; None below :data:`MIN_TRIALS_FOR_IMPORTANCE`
    completed trials, or when they cannot be computed (every value equal, say)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if set(space.searched) <= set(t.params)]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    try:
        return optuna.importance.get_param_importances(study, params=space.searched)
    except (ValueError, RuntimeError) as exc:  # e.g. every completed trial has the same value
        log.info("no parameter importances: %s", exc)
        return None


def plot_importances(path: str | Path, importances: dict[str, float]) -> Path:
    """A bar per parameter; returns ``path``."""
    fig = Figure(figsize=(4.5, 2.5), dpi=120)
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title("parameter importances")
    return save_png(fig, path)
