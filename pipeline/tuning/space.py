"""The search space, the baseline trial, and the study's name.

Lambda is searched log-uniformly in ``[tune.lambda_low, tune.lambda_high]``; the SparseHead form is a
categorical over ``tune.forms`` when more than one is given.

The baseline, lambda = 0 (plain SimCLR), lies outside any log-uniform range, so it is not a value of
the ``lambda`` parameter: it is a trial enqueued with the user attribute ``baseline=True`` that
suggests no parameter at all. The samplers never see a 0 they would have to take the log of (they
model ``lambda`` only from the trials that have it), and every trial, baseline or not, records the
coefficient it really trained with as the user attributes ``lambda_used`` and ``form_used``. Tables
and plots read those, so the baseline shows at lambda 0.

A study's name is ``tune.study_name`` plus a short hash of everything that decides what a trial's
value means: the search space, the per-trial budget and objective, the rest of the pretraining
config, the validation settings, the seed and the data set. Rerunning the stage (with more trials,
say) continues the same study; changing any of those starts a study of a new name, so values that
are not comparable never end up in one study.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import optuna

from pipeline.config import Params, PretrainConfig, SparseHeadConfig, TuneConfig

LAMBDA = "lambda"
FORM = "form"
BASELINE_ATTR = "baseline"
LAMBDA_ATTR = "lambda_used"
FORM_ATTR = "form_used"


@dataclass(frozen=True)
class SearchSpace:
    lambda_low: float
    lambda_high: float
    forms: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: TuneConfig) -> SearchSpace:
        if not cfg.lambda_low < cfg.lambda_high:
            raise ValueError(f"tune.lambda_low ({cfg.lambda_low}) must be below tune.lambda_high "
                             f"({cfg.lambda_high})")
        if not cfg.forms:
            raise ValueError("tune.forms is empty: list at least one SparseHead form")
        if len(set(cfg.forms)) != len(cfg.forms):
            raise ValueError(f"tune.forms lists a form twice: {cfg.forms}")
        return cls(float(cfg.lambda_low), float(cfg.lambda_high), tuple(cfg.forms))

    @property
    def searched(self) -> list[str]:
        """The Optuna parameters a non-baseline trial suggests."""
        return [LAMBDA, FORM] if len(self.forms) > 1 else [LAMBDA]

    def to_dict(self) -> dict:
        return {"lambda": [self.lambda_low, self.lambda_high], "log": True, "forms": list(self.forms)}


@dataclass(frozen=True)
class TrialChoice:
    lam: float
    form: str
    baseline: bool


def is_baseline(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(BASELINE_ATTR, False))


def suggest(trial: optuna.Trial, space: SearchSpace) -> TrialChoice:
    """Draw this trial's lambda and form (the baseline draws nothing) and record what it trains with."""
    if is_baseline(trial):
        # The form is irrelevant at lambda 0; the first listed keeps the record definite.
        choice = TrialChoice(0.0, space.forms[0], True)
    else:
        lam = trial.suggest_float(LAMBDA, space.lambda_low, space.lambda_high, log=True)
        form = trial.suggest_categorical(FORM, list(space.forms)) if len(space.forms) > 1 else space.forms[0]
        choice = TrialChoice(float(lam), str(form), False)
    trial.set_user_attr(LAMBDA_ATTR, choice.lam)
    trial.set_user_attr(FORM_ATTR, choice.form)
    return choice


def enqueue_baseline(study: optuna.Study) -> bool:
    """Enqueue the lambda = 0 trial unless the study already has one that is not failed.

    Call under the study's :class:`~pipeline.tuning.storage.BudgetLock`, so that two workers starting
    together enqueue it once. A failed baseline is enqueued again, so a rerun repairs it.
    """
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
             optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if any(is_baseline(t) for t in study.get_trials(deepcopy=False, states=alive)):
        return False
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    return True


def trial_pretrain_config(base: PretrainConfig, choice: TrialChoice, epochs: int) -> PretrainConfig:
    """``base`` with this trial's SparseHead and the tuning budget, validated like params.yaml."""
    d = base.model_dump(by_alias=True)
    d["sparsehead"] = SparseHeadConfig(form=choice.form, lam=choice.lam).model_dump(by_alias=True)
    d["epochs"] = epochs
    return PretrainConfig.model_validate(d)


def study_identity(params: Params, dataset_sha256: str) -> dict:
    """What a trial's value depends on besides its own lambda and form (see the module docstring)."""
    t, ev = params.tune, params.evaluate
    # The searched fields, the full-run budget and where/how it runs do not change a trial's value.
    pretrain = params.pretrain.model_dump(
        by_alias=True, exclude={"sparsehead", "epochs", "out_dir", "device", "num_threads", "channels_last"})
    evaluate = {"val_fraction": ev.val_fraction, "knn_k": min(ev.knn_k), "knn_temperature": ev.knn_temperature}
    if t.objective == "linear":
        evaluate["probe"] = ev.probe.model_dump()
    return {
        "space": SearchSpace.from_config(t).to_dict(),
        "epochs": t.epochs,
        "objective": t.objective,
        "pretrain": pretrain,
        "evaluate": evaluate,
        "seed": params.seed,
        "data": dataset_sha256,
    }


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def study_name(params: Params, dataset_sha256: str) -> str:
    return f"{params.tune.study_name}-{identity_hash(study_identity(params, dataset_sha256))}"


def choice_dict(choice: TrialChoice) -> dict:
    return asdict(choice)
