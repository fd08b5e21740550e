"""What a study found: the best trial, the comparison with the baseline, a table and plots of every trial.

Outputs (paths from ``params.tune``):

- ``best_params.json``: the best trial (``study.best_trial``): its number, value, ``lambda`` and ``form`` as
  trained (lambda 0 when the baseline won), and where it is recorded (study, storage, MLflow runs).
- ``metrics/tune.json``: ``best_value``, ``baseline_value``, ``gap`` (best - baseline), ``best_lambda``,
  ``trials_complete``, ``trials_pruned``, ``trials_failed``, ``trials_running``, ``trials`` and the
  worker's ``seconds``; values absent while they do not exist (no baseline result yet, say).
- ``plots/tune/trials.csv``: one row per trial; ``history.png``: the objective per trial with the best so
  far and the baseline; ``lambda.png``: the objective against lambda (log axis; the baseline as a line);
  ``importances.png``: Optuna's parameter importances, once enough trials completed.

The same metrics and files go to the study's MLflow parent run.
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
from pipeline.evaluation.plots import save_png
from pipeline.io import atomic_path, write_json
from pipeline.tracking.trials import RUN_ATTR
from pipeline.tuning.space import FORM_ATTR, LAMBDA_ATTR, SearchSpace, is_baseline
from pipeline.tuning.study import WORKER_ATTR
from pipeline.tuning.worker import TuneOutcome

log = logging.getLogger(__name__)

TRIAL_COLUMNS = ("number", "state", "value", "lambda", "form", "baseline", "last_step", "duration_s", "worker",
                 "mlflow_run_id")
MLFLOW_ARTIFACT_DIR = "tune"
# Importances fit a random forest on (params -> value): below this many completed trials it is noise.
MIN_TRIALS_FOR_IMPORTANCE = 4


def trial_value(t: FrozenTrial) -> float | None:
    """The objective of a complete trial, or the last reported value of a pruned one."""
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def trial_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": trial_value(t),
            "lambda": t.user_attrs.get(LAMBDA_ATTR),
            "form": t.user_attrs.get(FORM_ATTR),
            "baseline": is_baseline(t),
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "worker": t.user_attrs.get(WORKER_ATTR),
            "mlflow_run_id": t.user_attrs.get(RUN_ATTR),
        })
    return rows


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_baseline(t)]
    return done[0] if done else None


def best_params(outcome: TuneOutcome, objective: str) -> dict:
    """``study.best_trial`` as the ``final`` stage reads it; ValueError when no trial completed."""
    study = outcome.study
    try:
        best = study.best_trial
    except ValueError as exc:
        raise ValueError(f"study {study.study_name}: no trial completed, so there is no best lambda "
                         f"(see the trials' MLflow runs under run {outcome.parent_run_id})") from exc
    return {
        "study": study.study_name,
        "storage": outcome.storage_url,
        "trial": best.number,
        "value": best.value,
        "objective": objective,
        "lambda": float(best.user_attrs.get(LAMBDA_ATTR, best.params.get("lambda", 0.0))),
        "form": str(best.user_attrs.get(FORM_ATTR, best.params.get("form"))),
        "baseline": is_baseline(best),
        "params": dict(best.params),
        "mlflow_run_id": best.user_attrs.get(RUN_ATTR),
        "mlflow_parent_run_id": outcome.parent_run_id,
    }


def tune_metrics(outcome: TuneOutcome, best: dict) -> dict[str, float]:
    c = outcome.counts
    base = baseline_trial(outcome.study)
    metrics: dict[str, float] = {
        "best_value": float(best["value"]),
        "best_lambda": float(best["lambda"]),
        "trials": float(c.total),
        "trials_complete": float(c.complete),
        "trials_pruned": float(c.pruned),
        "trials_failed": float(c.failed),
        "trials_running": float(c.running),
        "seconds": round(outcome.seconds, 3),
    }
    if base is not None and base.value is not None:
        metrics["baseline_value"] = float(base.value)
        metrics["gap"] = float(best["value"]) - float(base.value)
    return metrics


# ----------------------------------------------------------------------------------------------- files

def write_trials_csv(path: str | Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in TRIAL_COLUMNS} for r in rows)
    return Path(path)


def _finite(rows: list[dict], **where: object) -> list[dict]:
    return [r for r in rows if r["value"] is not None and math.isfinite(r["value"])
            and all(r[k] == v for k, v in where.items())]


def _baseline_line(ax, rows: list[dict]) -> None:
    base = _finite(rows, state="COMPLETE", baseline=True)
    if base:
        ax.axhline(base[0]["value"], color="black", linestyle="--", linewidth=1, label="baseline (lambda = 0)")


def plot_history(path: str | Path, rows: list[dict], objective: str) -> Path:
    fig = Figure(figsize=(5.5, 3.5), dpi=120)
    ax = fig.add_subplot()
    done = _finite(rows, state="COMPLETE")
    pruned = _finite(rows, state="PRUNED")
    if done:
        ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", label="complete")
        xs = [r["number"] for r in done]
        ax.step(xs, np.maximum.accumulate([r["value"] for r in done]), where="post", label="best so far")
    if pruned:
        ax.plot([r["number"] for r in pruned], [r["value"] for r in pruned], "x", color="grey",
                label="pruned (last report)")
    _baseline_line(ax, rows)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {objective} top-1")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def plot_lambda(path: str | Path, rows: list[dict], objective: str) -> Path:
    fig = Figure(figsize=(5.5, 3.5), dpi=120)
    ax = fig.add_subplot()
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        for form in sorted({str(r["form"]) for r in rows}):
            pts = [r for r in _finite(rows, state=state, baseline=False) if str(r["form"]) == form]
            if pts:
                ax.plot([r["lambda"] for r in pts], [r["value"] for r in pts], marker, linestyle="none",
                        label=f"{form}, {state.lower()}")
    _baseline_line(ax, rows)
    ax.set_xscale("log")
    ax.set_xlabel("SparseHead lambda")
    ax.set_ylabel(f"validation {objective} top-1")
    ax.set_title("accuracy against lambda")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
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
    best = best_params(outcome, t.objective)
    metrics = tune_metrics(outcome, best)
    plots_dir = Path(t.plots_dir)
    files = [write_trials_csv(plots_dir / "trials.csv", rows),
             plot_history(plots_dir / "history.png", rows, t.objective),
             plot_lambda(plots_dir / "lambda.png", rows, t.objective)]
    importances = param_importances(outcome.study, SearchSpace.from_config(t))
    if importances is not None:
        files.append(plot_importances(plots_dir / "importances.png", importances))
        metrics.update({f"importance_{k}": float(v) for k, v in importances.items()})
    else:
        (plots_dir / "importances.png").unlink(missing_ok=True)  # a stale one would describe another study
    write_json(t.best_params, best)
    write_json(t.out_metrics, metrics)
    with tracking.start_run(params.tracking, run_id=outcome.parent_run_id):
        tracking.log_metrics({k: v for k, v in metrics.items() if k != "seconds"})
        mlflow.set_tags({"best.trial": str(best["trial"]), "best.lambda": str(best["lambda"]),
                         "best.form": best["form"], "best.baseline": str(best["baseline"]).lower()})
        for path in [*files, Path(t.best_params), Path(t.out_metrics)]:
            mlflow.log_artifact(str(path), artifact_path=MLFLOW_ARTIFACT_DIR)
    return best, metrics


def summary(best: dict, m: dict[str, float]) -> str:
    who = "the baseline (lambda = 0)" if best["baseline"] else f"lambda {best['lambda']:.3g} ({best['form']})"
    base = m.get("baseline_value")
    vs = f", baseline {base:.4f}, gap {m['gap']:+.4f}" if base is not None else ", baseline not finished"
    return (f"tune: study {best['study']}: best is trial {best['trial']}, {who}: validation {best['objective']} "
            f"{best['value']:.4f}{vs}; {m['trials_complete']:.0f} complete, {m['trials_pruned']:.0f} pruned, "
            f"{m['trials_failed']:.0f} failed")
