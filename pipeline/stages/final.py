"""The ``final`` stage's body: retrain with the study's best lambda and form at the full budget, evaluate.

It is :func:`pipeline.pretraining.pretrain_and_log` and :func:`pipeline.evaluation.stage.run_evaluation`,
the very code of the ``pretrain`` and ``evaluate`` stages, with the SparseHead settings of
``best_params.json`` and the ``final`` section's paths; nothing is trained or measured differently.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.config import Params, PretrainConfig
from pipeline.evaluation.report import summary
from pipeline.io import read_json
from pipeline.sparsehead import FORMS
from pipeline.stages.evaluate import run_evaluation
from pipeline.stages.pretrain import PretrainOutcome, pretrain_and_log
from pipeline.tuning.space import TrialChoice, trial_pretrain_config


def read_best_params(path: str | Path) -> dict:
    """``best_params.json`` as the ``tune`` stage wrote it, checked for what ``final`` needs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: best params not found (run the tune stage first)")
    try:
        best = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(best, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(best).__name__}")
    lam, form = best.get("lambda"), best.get("form")
    if not isinstance(lam, int | float) or isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"{path}: 'lambda' must be a number >= 0, got {lam!r}")
    if form not in FORMS:
        raise ValueError(f"{path}: 'form' must be one of {', '.join(FORMS)}, got {form!r}")
    return best


def final_config(params: Params, best: dict) -> PretrainConfig:
    epochs = params.final.epochs or params.pretrain.epochs
    choice = TrialChoice(float(best["lambda"]), str(best["form"]), bool(best.get("baseline", False)))
    return trial_pretrain_config(params.pretrain, choice, epochs)


def train_final(params: Params, progress: bool = True) -> tuple[PretrainOutcome, dict[str, float], dict]:
    """Train and evaluate the final encoder; returns the training outcome, its evaluation and best params."""
    best = read_best_params(params.tune.best_params)
    cfg = final_config(params, best)
    f = params.final
    tags = {"tune.study": str(best.get("study")), "tune.trial": str(best.get("trial")),
            "tune.value": str(best.get("value")), "tune.baseline": str(bool(best.get("baseline"))).lower()}
    outcome = pretrain_and_log(params, cfg, f.out_dir, run_name="final", metrics_path=f.train_metrics,
                               extra_tags=tags, progress=progress)
    if not outcome.run_id:  # a torchrun rank other than 0: it trained its share; rank 0 evaluates
        return outcome, {}, best
    metrics = run_evaluation(params, f.out_dir, f.out_metrics, f.plots_dir, progress=progress)
    return outcome, metrics, best


def run(params: Params, args: object = None) -> None:
    outcome, metrics, best = train_final(params)
    if not metrics:  # a torchrun rank other than 0
        return
    who = "baseline, lambda 0" if best.get("baseline") else f"lambda {best['lambda']:.3g}, {best['form']}"
    print(f"final: run {outcome.run_id} ({who}) -> {outcome.encoder_path}")
    print(summary(metrics, min(params.evaluate.knn_k)))
