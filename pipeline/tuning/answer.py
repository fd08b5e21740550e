"""What a study found: the best trial, its method's baseline, their paired gap and the choice, as the
``best_params.json`` that ``final`` trains and the ``metrics/tune.json`` that DVC compares."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.tracking.trials import RUN_ATTR
from pipeline.tuning.objective import SEED_VALUES_ATTR, VALUE_SD_ATTR
from pipeline.tuning.selection import PairedGap, Selection, paired_gap, select
from pipeline.tuning.space import FORM_ATTR, LAMBDA_ATTR, UPDATE_ATTR, is_baseline, trial_method
from pipeline.tuning.study import Counts


def trial_value(t: FrozenTrial) -> float | None:
    """The objective (mean over seeds) of a complete trial, the last reported mean of a pruned one."""
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def seed_values(t: FrozenTrial) -> dict[int, float]:
    """Seed -> objective value of a complete trial (empty for others)."""
    return {int(s): float(v) for s, v in (t.user_attrs.get(SEED_VALUES_ATTR) or {}).items()}


def baseline_trial(study: optuna.Study, method: str | None) -> FrozenTrial | None:
    """The completed lambda = 0 trial of ``method`` (of any method when the study predates methods)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_baseline(t) and trial_method(t) in (method, None)]
    return done[0] if done else None


def trial_config(t: FrozenTrial, params: Params) -> dict:
    """What ``t`` trained, in the terms of ``best_params.json`` (params fill what an old study lacks)."""
    return {
        "lambda": float(t.user_attrs.get(LAMBDA_ATTR, t.params.get("lambda", 0.0))),
        "form": str(t.user_attrs.get(FORM_ATTR, t.params.get("form", params.pretrain.sparsehead.form))),
        "update": str(t.user_attrs.get(UPDATE_ATTR, params.pretrain.sparsehead.update)),
        "method": str(trial_method(t) or params.pretrain.ssl.method),
        "baseline": is_baseline(t),
    }


@dataclass(frozen=True)
class Answer:
    """The best trial, its method's baseline (None if none completed), their gap, and the choice."""

    best: FrozenTrial
    base: FrozenTrial | None
    gap: PairedGap | None
    choice: Selection


def answer(study: optuna.Study, params: Params, resolution: float) -> Answer:
    """The study's answer under ``tune.select``.

    Args:
        study: The study.
        params: Its parameters (``tune.select``).
        resolution: The objective's step, below which a gap is a tie (see :func:`.selection.select`).

    Raises:
        UserError: No trial completed.
    """
    try:
        best = study.best_trial
    except ValueError as exc:
        raise UserError(f"study {study.study_name}: no trial completed, so there is no best lambda "
                         f"(see its trials' MLflow runs)") from exc
    base = baseline_trial(study, trial_method(best))
    gap = None
    if base is not None and not is_baseline(best) and seed_values(best) and seed_values(base):
        gap = paired_gap(seed_values(best), seed_values(base))
    elif base is not None and base.number == best.number:
        gap = paired_gap(seed_values(best), seed_values(best)) if seed_values(best) else None
    return Answer(best, base, gap, select(params.tune.select, is_baseline(best), gap, resolution))


def best_params(ans: Answer, params: Params, study_name: str, storage: str, parent_run_id: str) -> dict:
    """``best_params.json``: the chosen configuration, why, and where the evidence is recorded.

    Args:
        ans: The study's answer.
        params: Its parameters.
        study_name: The study's name.
        storage: The study's storage, as shown to users (no password).
        parent_run_id: The study's MLflow parent run.
    """
    chosen = ans.base if ans.choice.chose_baseline and ans.base is not None else ans.best
    config = trial_config(chosen, params)
    if ans.choice.chose_baseline and ans.base is None:  # significant rule, no baseline finished: lambda 0 anyway
        config.update({"lambda": 0.0, "baseline": True})
    return {
        "study": study_name,
        "storage": storage,
        **config,
        "choice": "baseline" if config["baseline"] else "best",
        "reason": ans.choice.reason,
        "select": params.tune.select,
        "trial": chosen.number,
        "value": chosen.value,
        "seed_values": {str(s): v for s, v in seed_values(chosen).items()},
        "objective": params.tune.objective,
        "seeds": list(params.tune.seeds),
        "best_trial": ans.best.number,
        "best_value": ans.best.value,
        "params": dict(chosen.params),
        "mlflow_run_id": chosen.user_attrs.get(RUN_ATTR),
        "mlflow_parent_run_id": parent_run_id,
    }


def tune_metrics(ans: Answer, params: Params, counts: Counts) -> dict[str, float]:
    """``metrics/tune.json``: the answer's figures (a value that does not exist is absent) and the counts.

    No timings: they change with every run and go to MLflow.
    """
    best, base, gap = ans.best, ans.base, ans.gap
    metrics: dict[str, float] = {
        "seeds": float(len(params.tune.seeds)),
        "best_mean": float(trial_value(best) or 0.0),
        "best_sd": float(best.user_attrs.get(VALUE_SD_ATTR, 0.0)),
        "best_lambda": float(trial_config(best, params)["lambda"]),
        "chose_baseline": float(ans.choice.chose_baseline),
        "trials": float(counts.total),
        "trials_complete": float(counts.complete),
        "trials_pruned": float(counts.pruned),
        "trials_failed": float(counts.failed),
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
