"""What a study found: the best trial, its paired comparison with its method's baseline, the choice, and a
table and figures of every trial.

Outputs (paths from ``params.tune``):

- ``best_params.json``: what ``final`` trains. The best trial (``study.best_trial``: the best mean over
  seeds), or its method's baseline when ``tune.select: significant`` keeps it; its ``lambda``, ``form``,
  ``update`` and ``method`` as trained, ``choice`` (``best`` or ``baseline``) and ``reason``, the best
  trial's number and values, and where it is recorded (study, storage, MLflow runs).
- ``metrics/tune.json``: ``seeds``, ``best_mean``, ``best_sd``, ``baseline_mean``, ``baseline_sd``,
  ``gap_mean`` (best - baseline, paired over seeds), ``gap_sd``, ``gap_ci95_low``, ``gap_ci95_high``
  (paired t interval), ``gap_p_value`` (paired t test), ``chose_baseline``, ``best_lambda``, and the
  trial counts. A value that does not exist (no baseline result yet, one seed) is absent. No timings:
  they change with every run and go to MLflow (the parent run's ``seconds``).
- ``plots/tune/trials.csv``: one row per trial (every seed's value, mean, sd, RankMe of z, head sparsity,
  exact zeros); ``lambda.png``: the figure a paper would print: the objective against lambda with error
  bars over seeds and each baseline's band (mean +- sd), and RankMe of z and the head's sparsity against
  lambda; ``history.png``: the objective per trial; ``importances.png``: Optuna's parameter importances,
  once enough trials completed.

The same metrics and files go to the study's MLflow parent run. Statistics: :mod:`.selection`.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import mlflow
import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from pipeline import tracking
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.evaluation.plots import save_png
from pipeline.io import atomic_path, write_json
from pipeline.tracking.trials import RUN_ATTR
from pipeline.tuning.objective import SEED_VALUES_ATTR, SUMMARY_ATTRS, VALUE_SD_ATTR
from pipeline.tuning.selection import PairedGap, Selection, paired_gap, select
from pipeline.tuning.space import (
    FORM_ATTR,
    LAMBDA_ATTR,
    UPDATE_ATTR,
    SearchSpace,
    is_baseline,
    trial_method,
)
from pipeline.tuning.study import WORKER_ATTR
from pipeline.tuning.worker import TuneOutcome

log = logging.getLogger(__name__)

TRIAL_COLUMNS = ("number", "state", "method", "lambda", "form", "update", "baseline", "value", "sd",
                 "seed_values", *SUMMARY_ATTRS, "last_step", "duration_s", "worker", "mlflow_run_id")
MLFLOW_ARTIFACT_DIR = "tune"
# Importances fit a random forest on (params -> value): below this many completed trials it is noise.
MIN_TRIALS_FOR_IMPORTANCE = 4


def trial_value(t: FrozenTrial) -> float | None:
    """The objective (mean over seeds) of a complete trial, or the last reported mean of a pruned one."""
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def seed_values(t: FrozenTrial) -> dict[int, float]:
    return {int(s): float(v) for s, v in (t.user_attrs.get(SEED_VALUES_ATTR) or {}).items()}


def trial_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        duration = t.duration.total_seconds() if t.duration is not None else None
        per_seed = seed_values(t)
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "method": trial_method(t),
            "lambda": t.user_attrs.get(LAMBDA_ATTR),
            "form": t.user_attrs.get(FORM_ATTR),
            "update": t.user_attrs.get(UPDATE_ATTR),
            "baseline": is_baseline(t),
            "value": trial_value(t),
            "sd": t.user_attrs.get(VALUE_SD_ATTR),
            "seed_values": " ".join(f"{s}:{v:.4f}" for s, v in sorted(per_seed.items())) or None,
            **{k: t.user_attrs.get(k) for k in SUMMARY_ATTRS},
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "worker": t.user_attrs.get(WORKER_ATTR),
            "mlflow_run_id": t.user_attrs.get(RUN_ATTR),
        })
    return rows


def baseline_trial(study: optuna.Study, method: str | None) -> FrozenTrial | None:
    """The completed lambda = 0 trial of ``method`` (of any method when the study predates methods)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_baseline(t) and trial_method(t) in (method, None)]
    return done[0] if done else None


def _config(t: FrozenTrial, params: Params) -> dict:
    return {
        "lambda": float(t.user_attrs.get(LAMBDA_ATTR, t.params.get("lambda", 0.0))),
        "form": str(t.user_attrs.get(FORM_ATTR, t.params.get("form", params.pretrain.sparsehead.form))),
        "update": str(t.user_attrs.get(UPDATE_ATTR, params.pretrain.sparsehead.update)),
        "method": str(trial_method(t) or params.pretrain.ssl.method),
        "baseline": is_baseline(t),
    }


def answer(outcome: TuneOutcome, params: Params) -> tuple[FrozenTrial, FrozenTrial | None, PairedGap | None,
                                                          Selection]:
    """The best trial, its method's baseline, their paired gap, and the selection rule's verdict."""
    study = outcome.study
    try:
        best = study.best_trial
    except ValueError as exc:
        raise UserError(f"study {study.study_name}: no trial completed, so there is no best lambda "
                         f"(see the trials' MLflow runs under run {outcome.parent_run_id})") from exc
    base = baseline_trial(study, trial_method(best))
    gap = None
    if base is not None and not is_baseline(best) and seed_values(best) and seed_values(base):
        gap = paired_gap(seed_values(best), seed_values(base))
    elif base is not None and base.number == best.number:
        gap = paired_gap(seed_values(best), seed_values(best)) if seed_values(best) else None
    return best, base, gap, select(params.tune.select, is_baseline(best), gap)


def best_params(outcome: TuneOutcome, params: Params, best: FrozenTrial, base: FrozenTrial | None,
                choice: Selection) -> dict:
    """What the ``final`` stage trains: the chosen configuration and where the evidence is recorded."""
    chosen = base if choice.chose_baseline and base is not None else best
    config = _config(chosen, params)
    if choice.chose_baseline and base is None:  # significant rule, no baseline finished: lambda 0 anyway
        config.update({"lambda": 0.0, "baseline": True})
    return {
        "study": outcome.study.study_name,
        "storage": outcome.storage_url,
        **config,
        "choice": "baseline" if config["baseline"] else "best",
        "reason": choice.reason,
        "select": params.tune.select,
        "trial": chosen.number,
        "value": chosen.value,
        "seed_values": {str(s): v for s, v in seed_values(chosen).items()},
        "objective": params.tune.objective,
        "seeds": list(params.tune.seeds),
        "best_trial": best.number,
        "best_value": best.value,
        "params": dict(chosen.params),
        "mlflow_run_id": chosen.user_attrs.get(RUN_ATTR),
        "mlflow_parent_run_id": outcome.parent_run_id,
    }


def tune_metrics(outcome: TuneOutcome, params: Params, best: FrozenTrial, base: FrozenTrial | None,
                 gap: PairedGap | None, choice: Selection) -> dict[str, float]:
    c = outcome.counts
    metrics: dict[str, float] = {
        "seeds": float(len(params.tune.seeds)),
        "best_mean": float(best.value),
        "best_sd": float(best.user_attrs.get(VALUE_SD_ATTR, 0.0)),
        "best_lambda": float(_config(best, params)["lambda"]),
        "chose_baseline": float(choice.chose_baseline),
        "trials": float(c.total),
        "trials_complete": float(c.complete),
        "trials_pruned": float(c.pruned),
        "trials_failed": float(c.failed),
    }
    if base is not None and base.value is not None:
        metrics["baseline_mean"] = float(base.value)
        metrics["baseline_sd"] = float(base.user_attrs.get(VALUE_SD_ATTR, 0.0))
    if gap is not None:
        metrics["gap_mean"], metrics["gap_sd"] = gap.mean, gap.sd
        for key, value in (("gap_ci95_low", gap.ci_low), ("gap_ci95_high", gap.ci_high),
                           ("gap_p_value", gap.p_value)):
            if value is not None and math.isfinite(value):
                metrics[key] = float(value)
    return metrics


# ----------------------------------------------------------------------------------------------- files

def write_trials_csv(path: str | Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in TRIAL_COLUMNS} for r in rows)
    return Path(path)


def _finite(rows: list[dict], key: str = "value", **where: object) -> list[dict]:
    return [r for r in rows if r[key] is not None and math.isfinite(r[key])
            and all(r[k] == v for k, v in where.items())]


def plot_history(path: str | Path, rows: list[dict], objective: str) -> Path:
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
    band, RankMe of z, and the head's sparsity (near-zero and exact zeros); baselines drawn as lines."""
    fig = Figure(figsize=(12, 3.6), dpi=120)
    axes = fig.subplots(1, 3)
    groups = sorted({(str(r["method"]), str(r["form"]), str(r["update"])) for r in rows if not r["baseline"]})
    colors = {m: f"C{i}" for i, m in enumerate(sorted({str(r["method"]) for r in rows}))}
    markers = {}
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
    fig = Figure(figsize=(4.5, 2.5), dpi=120)
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title("parameter importances")
    return save_png(fig, path)


def write_report(outcome: TuneOutcome, params: Params) -> tuple[dict, dict[str, float]]:
    """Write every output in the module docstring and log it to the parent run; returns (best, metrics)."""
    t = params.tune
    rows = trial_rows(outcome.study)
    best_trial, base, gap, choice = answer(outcome, params)
    best = best_params(outcome, params, best_trial, base, choice)
    metrics = tune_metrics(outcome, params, best_trial, base, gap, choice)
    plots_dir = Path(t.plots_dir)
    files = [write_trials_csv(plots_dir / "trials.csv", rows),
             plot_history(plots_dir / "history.png", rows, t.objective),
             plot_lambda(plots_dir / "lambda.png", rows, t.objective)]
    importances = param_importances(outcome.study, SearchSpace.from_params(params))
    if importances is not None:
        files.append(plot_importances(plots_dir / "importances.png", importances))
        metrics.update({f"importance_{k}": float(v) for k, v in importances.items()})
    else:
        (plots_dir / "importances.png").unlink(missing_ok=True)  # a stale one would describe another study
    write_json(t.best_params, best)
    write_json(t.out_metrics, metrics)
    with tracking.start_run(params.tracking, run_id=outcome.parent_run_id):
        tracking.log_metrics({**metrics, "seconds": outcome.seconds})
        mlflow.set_tags({"best.trial": str(best_trial.number), "choice": best["choice"],
                         "choice.reason": best["reason"][:5000], "chosen.trial": str(best["trial"]),
                         "chosen.lambda": str(best["lambda"]), "chosen.method": best["method"]})
        for path in [*files, Path(t.best_params), Path(t.out_metrics)]:
            mlflow.log_artifact(str(path), artifact_path=MLFLOW_ARTIFACT_DIR)
    return best, metrics


def summary(best: dict, m: dict[str, float]) -> str:
    who = (f"the {best['method']} baseline (lambda = 0)" if best["baseline"]
           else f"{best['method']} lambda {best['lambda']:.3g} ({best['form']}, {best['update']})")
    gap = ""
    if "gap_mean" in m:
        ci = (f" [{m['gap_ci95_low']:+.4f}, {m['gap_ci95_high']:+.4f}]" if "gap_ci95_low" in m else "")
        p = f", p {m['gap_p_value']:.3g}" if "gap_p_value" in m else ""
        gap = f"; best - baseline {m['gap_mean']:+.4f}{ci}{p}"
    base = f", baseline {m['baseline_mean']:.4f} +- {m['baseline_sd']:.4f}" if "baseline_mean" in m else ""
    return (f"tune: study {best['study']}: chose {who}: {best['reason']}. Best mean {best['objective']} "
            f"{m['best_mean']:.4f} +- {m['best_sd']:.4f} over {m['seeds']:.0f} seeds{base}{gap}; "
            f"{m['trials_complete']:.0f} complete, {m['trials_pruned']:.0f} pruned, {m['trials_failed']:.0f} failed")
