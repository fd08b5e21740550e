"""The search space, the lambda = 0 baseline trials, and the study's name.

A baseline lies outside the log-uniform range of ``lambda``, so it is an enqueued trial that suggests
nothing; every trial records what it trained with (``lambda_used``, ``form_used``, ...), which the report
reads. The README ("Tuning lambda") says how the study's name follows what a trial's value depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from pipeline.config import Params, PretrainConfig, SparseHeadConfig
from pipeline.errors import UserError

LAMBDA = "lambda"
FORM = "form"
UPDATE = "update"
METHOD = "method"
BASELINE_ATTR = "baseline"
LAMBDA_ATTR = "lambda_used"
FORM_ATTR = "form_used"
UPDATE_ATTR = "update_used"
METHOD_ATTR = "method_used"


def _distinct(name: str, values: Sequence[str], what: str) -> tuple[str, ...]:
    if not values:
        raise UserError(f"tune.{name} is empty: list at least one {what}")
    if len(set(values)) != len(values):
        raise UserError(f"tune.{name} lists a value twice: {values}")
    return tuple(values)


@dataclass(frozen=True)
class SearchSpace:
    """What a trial draws: lambda log-uniform in ``[lambda_low, lambda_high]``; the form, update rule and
    SSL method categorical when more than one is listed (``tune.forms``, ``tune.updates``, ``tune.methods``)."""

    lambda_low: float
    lambda_high: float
    forms: tuple[str, ...]
    updates: tuple[str, ...] = ("gradient",)
    methods: tuple[str, ...] = ("simclr",)

    @classmethod
    def from_params(cls, params: Params) -> SearchSpace:
        """The ``tune`` section's space (its method list defaults to ``pretrain.ssl.method``).

        Raises:
            UserError: An empty or inverted range, an empty list, a value listed twice, an unknown method.
        """
        cfg = params.tune
        if not cfg.lambda_low < cfg.lambda_high:
            raise UserError(f"tune.lambda_low ({cfg.lambda_low}) must be below tune.lambda_high "
                             f"({cfg.lambda_high})")
        methods = cfg.methods if cfg.methods is not None else [params.pretrain.ssl.method]
        from pipeline.methods import METHODS  # deferred: the methods import torch models

        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise UserError(f"tune.methods: unknown method {unknown[0]!r}; choose among {', '.join(METHODS)}")
        return cls(float(cfg.lambda_low), float(cfg.lambda_high), _distinct("forms", cfg.forms, "SparseHead form"),
                   _distinct("updates", cfg.updates, "update rule"), _distinct("methods", methods, "SSL method"))

    @property
    def searched(self) -> list[str]:
        """The Optuna parameters a non-baseline trial suggests."""
        out = [LAMBDA]
        for name, values in ((FORM, self.forms), (UPDATE, self.updates), (METHOD, self.methods)):
            if len(values) > 1:
                out.append(name)
        return out

    def to_dict(self) -> dict:
        """The space as plain values, for the study's identity."""
        return {"lambda": [self.lambda_low, self.lambda_high], "log": True, "forms": list(self.forms),
                "updates": list(self.updates), "methods": list(self.methods)}


@dataclass(frozen=True)
class TrialChoice:
    """What one trial trains: lambda (0 for a baseline), SparseHead form and update rule, SSL method."""

    lam: float
    form: str
    baseline: bool
    update: str = "gradient"
    method: str = "simclr"


def is_baseline(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is a lambda = 0 baseline."""
    return bool(trial.user_attrs.get(BASELINE_ATTR, False))


def _categorical(trial: optuna.Trial, name: str, values: tuple[str, ...]) -> str:
    return str(trial.suggest_categorical(name, list(values))) if len(values) > 1 else values[0]


def suggest(trial: optuna.Trial, space: SearchSpace) -> TrialChoice:
    """Draw this trial's lambda, form, update and method (a baseline draws nothing) and record them."""
    if is_baseline(trial):
        # Form and update are irrelevant at lambda 0; the first listed keeps the record definite.
        method = str(trial.user_attrs.get(METHOD_ATTR, space.methods[0]))
        choice = TrialChoice(0.0, space.forms[0], True, space.updates[0], method)
    else:
        lam = trial.suggest_float(LAMBDA, space.lambda_low, space.lambda_high, log=True)
        choice = TrialChoice(float(lam), _categorical(trial, FORM, space.forms), False,
                             _categorical(trial, UPDATE, space.updates), _categorical(trial, METHOD, space.methods))
    for attr, value in ((LAMBDA_ATTR, choice.lam), (FORM_ATTR, choice.form), (UPDATE_ATTR, choice.update),
                        (METHOD_ATTR, choice.method)):
        trial.set_user_attr(attr, value)
    return choice


def trial_method(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> str | None:
    """The SSL method ``trial`` trained (None for a trial of a study older than method search)."""
    return trial.user_attrs.get(METHOD_ATTR)


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue a lambda = 0 trial for every method without one that is not failed.

    Call it under the study's :class:`~pipeline.tuning.budget.BudgetLock`, so that two workers starting
    together enqueue each once. A failed baseline is enqueued again, so a rerun repairs it.

    Returns:
        The methods whose baseline was enqueued.
    """
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
             optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    have = {trial_method(t) for t in study.get_trials(deepcopy=False, states=alive) if is_baseline(t)}
    added = [m for m in space.methods if m not in have]
    for method in added:
        study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True, METHOD_ATTR: method})
    return added


def trial_pretrain_config(base: PretrainConfig, choice: TrialChoice, epochs: int) -> PretrainConfig:
    """``base`` with this trial's SparseHead, method and the tuning budget, validated like params.yaml."""
    d = base.model_dump(by_alias=True)
    sparsehead = SparseHeadConfig.model_validate({"form": choice.form, "lambda": choice.lam, "update": choice.update})
    d["sparsehead"] = {**d["sparsehead"], **sparsehead.model_dump(by_alias=True, exclude={"include_predictor"})}
    d["ssl"] = {**d["ssl"], "method": choice.method}
    d["epochs"] = epochs
    return PretrainConfig.model_validate(d)


def study_identity(params: Params, dataset_sha256: str) -> dict:
    """What a trial's value depends on besides what it draws."""
    t, ev = params.tune, params.evaluate
    # The searched fields, the full-run budget, where/how it runs and how often it is watched (the monitor
    # reads the model, never its RNG) do not change a trial's value.
    pretrain = params.pretrain.model_dump(
        by_alias=True, exclude={"epochs", "out_dir", "device", "num_threads", "channels_last", "monitor_every"})
    # Searched or fixed by the trial: only include_predictor of the SparseHead section changes a value.
    pretrain["sparsehead"] = {"include_predictor": params.pretrain.sparsehead.include_predictor}
    if t.methods is not None:
        pretrain["ssl"] = {k: v for k, v in pretrain["ssl"].items() if k != "method"}
    evaluate: dict[str, Any] = {"val_fraction": ev.val_fraction, "knn_k": min(ev.knn_k), "knn_temperature": ev.knn_temperature}
    if t.objective == "linear":
        evaluate["probe"] = ev.probe.model_dump()
    return {
        "space": SearchSpace.from_params(params).to_dict(),
        "epochs": t.epochs,
        "seeds": list(t.seeds),
        "objective": t.objective,
        "pretrain": pretrain,
        "evaluate": evaluate,
        "split_seed": params.seed,
        "data": dataset_sha256,
    }


def identity_hash(identity: dict) -> str:
    """Eight hex digits of the identity's SHA-256."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def study_name(params: Params, dataset_sha256: str) -> str:
    """``tune.study_name`` and the hash of :func:`study_identity`: a rerun continues its study; a changed
    space, budget, objective, pretraining config, validation or data starts a new one."""
    return f"{params.tune.study_name}-{identity_hash(study_identity(params, dataset_sha256))}"

