"""The ``final`` stage: retrain the study's choice (method, lambda, form, update) at the full budget, once
per seed of ``final.seeds``, and evaluate each.

It is :func:`pipeline.stages.pretrain.pretrain_and_log` and :func:`pipeline.stages.evaluate.run_evaluation`,
the very code of the ``pretrain`` and ``evaluate`` stages, with the settings of ``best_params.json`` and
the ``final`` section's paths; nothing is trained or measured differently. The first seed's model is the
one registered (``models/final/``); the others live in ``models/final/seeds/seed<s>/`` with their own MLflow
runs, and ``metrics/final.json`` adds the mean and sd over seeds of the headline numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params, PretrainConfig
from pipeline.errors import UserError
from pipeline.evaluation.report import summary
from pipeline.io import read_json, write_json, write_metrics
from pipeline.methods import METHODS
from pipeline.sparsehead import FORMS, UPDATES
from pipeline.stages.evaluate import run_evaluation
from pipeline.stages.pretrain import PretrainOutcome, pretrain_and_log
from pipeline.stats import mean_sd
from pipeline.tuning.space import TrialChoice, trial_pretrain_config

SEEDS_DIR = "seeds"  # beside the registered (first) seed's model: the other seeds' models and summary


def read_best_params(path: str | Path) -> dict:
    """``best_params.json`` as the ``tune`` stage wrote it, checked for what ``final`` needs.

    Raises:
        FileNotFoundError: there is none.
        ValueError: it is not a JSON object with a valid lambda, form, update and method.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: best params not found (run the tune stage first)")
    try:
        best = read_json(path)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(best, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(best).__name__}")
    lam, form = best.get("lambda"), best.get("form")
    if not isinstance(lam, int | float) or isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
        raise UserError(f"{path}: 'lambda' must be a number >= 0, got {lam!r}")
    if form not in FORMS:
        raise UserError(f"{path}: 'form' must be one of {', '.join(FORMS)}, got {form!r}")
    update, method = best.get("update", "gradient"), best.get("method")
    if update not in UPDATES:
        raise UserError(f"{path}: 'update' must be one of {', '.join(UPDATES)}, got {update!r}")
    if method is not None and method not in METHODS:
        raise UserError(f"{path}: 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    return best


def final_config(params: Params, best: dict) -> PretrainConfig:
    """The pretraining params of the final runs: ``pretrain`` with the study's choice and ``final.epochs``."""
    epochs = params.final.epochs or params.pretrain.epochs
    choice = TrialChoice(float(best["lambda"]), str(best["form"]), bool(best.get("baseline", False)),
                         str(best.get("update", params.pretrain.sparsehead.update)),
                         str(best.get("method", params.pretrain.ssl.method)))
    return trial_pretrain_config(params.pretrain, choice, epochs)


def spread_metrics(per_seed: list[dict[str, float]], knn_k: int) -> dict[str, float]:
    """Mean and sd over the final seeds of the headline numbers (sd 0 for one seed).

    Args:
        per_seed: each seed's evaluation metrics.
        knn_k: the k of the kNN figure.

    Returns:
        ``final_seeds`` and ``<key>_mean``, ``<key>_sd`` for test linear and kNN top-1 and val linear top-1.
    """
    out: dict[str, float] = {"final_seeds": float(len(per_seed))}
    for key in ("test_linear_top1", f"test_knn{knn_k}_top1", "val_linear_top1"):
        values = [m[key] for m in per_seed if key in m]
        if values:
            out[f"{key}_mean"], out[f"{key}_sd"] = mean_sd(values)
    return out


def train_final(params: Params, progress: bool = True) -> tuple[PretrainOutcome, dict[str, float], dict]:
    """Train and evaluate the final encoder once per ``final.seeds`` (the first is the one registered);
    returns the first seed's training outcome, its evaluation with the spread over seeds, and best params."""
    best = read_best_params(params.tune.best_params)
    cfg = final_config(params, best)
    f = params.final
    tags = {"tune.study": str(best.get("study")), "tune.trial": str(best.get("trial")),
            "tune.value": str(best.get("value")), "tune.baseline": str(bool(best.get("baseline"))).lower(),
            "tune.choice": str(best.get("choice", "best")), "tune.reason": str(best.get("reason", ""))[:5000]}
    first, *others = f.seeds
    outcome = pretrain_and_log(params, cfg, f.out_dir, run_name="final", metrics_path=f.train_metrics,
                               extra_tags={**tags, "final.seed": str(first)}, progress=progress, seed=first)
    if not outcome.run_id:  # a torchrun rank other than 0: it trained its share; rank 0 evaluates
        return outcome, {}, best
    metrics = run_evaluation(params, f.out_dir, f.out_metrics, f.plots_dir, progress=progress)

    # The other seeds: the same config, their own MLflow runs and folders; no plots and no random-init
    # reference (the first seed's evaluation has both).
    seeds_dir = Path(f.out_dir) / SEEDS_DIR
    quiet = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"random_baseline": False})})
    per_seed = [metrics]
    for s in others:
        out = seeds_dir / f"seed{s}"
        pretrain_and_log(params, cfg, out, run_name=f"final seed {s}", progress=progress, seed=s,
                         extra_tags={**tags, "final.seed": str(s), "final.first_run": outcome.run_id})
        per_seed.append(run_evaluation(quiet, out, out / "eval.json", None, progress=progress))
    spread = spread_metrics(per_seed, min(params.evaluate.knn_k))
    metrics = {**metrics, **spread}
    write_metrics(f.out_metrics, metrics)
    write_json(seeds_dir / "summary.json", {"seeds": list(f.seeds), **spread})
    with tracking.start_run(params.tracking, run_id=outcome.run_id):
        tracking.log_metrics(spread)
    return outcome, metrics, best


def run(params: Params, args: object = None) -> None:
    outcome, metrics, best = train_final(params)
    if not metrics:  # a torchrun rank other than 0
        return
    method = best.get("method", params.pretrain.ssl.method)
    who = (f"{method} baseline, lambda 0" if best.get("baseline")
           else f"{method} lambda {best['lambda']:.3g}, {best['form']}, {best.get('update', 'gradient')}")
    print(f"final: run {outcome.run_id} ({who}; {best.get('reason', '')}) -> {outcome.encoder_path}")
    print(summary(metrics, min(params.evaluate.knn_k)))
    k = min(params.evaluate.knn_k)
    if metrics.get("final_seeds", 1) > 1:
        print(f"over {metrics['final_seeds']:.0f} seeds: test linear {metrics['test_linear_top1_mean']:.4f} +- "
              f"{metrics['test_linear_top1_sd']:.4f}, kNN@{k} {metrics[f'test_knn{k}_top1_mean']:.4f} +- "
              f"{metrics[f'test_knn{k}_top1_sd']:.4f}")
