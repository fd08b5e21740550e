"""One trial: pretrain at the tuning budget with the trial's lambda and form, then score on validation.

SSL trains on the prepared training split minus a validation split carved with
``train_val_split(train, evaluate.val_fraction, seed)``, so it never sees the validation images, and
selection never looks at the test split. Every ``tune.eval_every`` epochs (and at the last one) the
kNN validation accuracy is reported to Optuna, which may prune the trial there; the trial's value is
:func:`pipeline.evaluation.validation_score` with ``tune.objective``. Every trial trains from the same
seed, so trials differ only by their lambda and form.

The baseline trial is never pruned: the study's summary compares the best trial with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
import optuna
import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.arrays import Split, load_manifest, load_split
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.engine.trainer import train
from pipeline.evaluation import knn_score, validation_score
from pipeline.models import Encoder
from pipeline.tracking.trials import trial_run
from pipeline.tuning.space import SearchSpace, TrialChoice, suggest, trial_pretrain_config
from pipeline.tuning.study import WORKER_ATTR, worker_id

VAL_KNN = "val_knn"


@dataclass
class TuneData:
    fit: Split  # what SSL and the kNN/probe memory see
    val: Split  # what the trials are scored on
    num_classes: int
    manifest: dict
    device: torch.device

    @classmethod
    def load(cls, params: Params) -> TuneData:
        data_dir = params.prepare.out_dir
        manifest = load_manifest(data_dir)
        fit, val = train_val_split(load_split(data_dir, "train"), params.evaluate.val_fraction, params.seed)
        if len(val) == 0:
            raise ValueError(f"evaluate.val_fraction {params.evaluate.val_fraction} leaves no validation "
                             f"images in {data_dir}")
        num_classes = int(manifest.get("num_classes") or len(manifest["classes"]))
        return cls(fit, val, num_classes, manifest, resolve_device(params.pretrain.device))


class _Reporter:
    """Epoch callback: log the training metrics; every ``eval_every`` epochs report kNN and maybe prune."""

    def __init__(self, trial: optuna.Trial, params: Params, data: TuneData, prunable: bool) -> None:
        self.trial, self.params, self.data, self.prunable = trial, params, data, prunable
        self.last_score: float | None = None

    def __call__(self, epoch: int, metrics: dict[str, float], encoder: Encoder) -> None:
        tracking.log_metrics(metrics, step=epoch)
        t = self.params.tune
        last = epoch == t.epochs
        if epoch % t.eval_every and not last:
            return
        score = knn_score(encoder, self.data.fit, self.data.val, self.params.evaluate, self.data.device,
                          self.data.num_classes)
        self.last_score = score
        tracking.log_metrics({VAL_KNN: score}, step=epoch)
        self.trial.report(score, epoch)
        # Pruning after the last epoch would save nothing.
        if self.prunable and not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"{VAL_KNN} {score:.4f} at epoch {epoch}")


class Objective:
    """The callable handed to Optuna: one trial in, its validation score out (or TrialPruned)."""

    def __init__(self, params: Params, data: TuneData, space: SearchSpace, study_name: str) -> None:
        self.params, self.data, self.space, self.study_name = params, data, space, study_name

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        choice = suggest(trial, self.space)
        t = self.params.tune
        cfg = trial_pretrain_config(self.params.pretrain, choice, t.epochs)
        with trial_run(self.study_name, trial, tags={"baseline": str(choice.baseline).lower()}):
            mlflow.log_params(_run_params(trial, choice, self.params))
            reporter = _Reporter(trial, self.params, self.data, prunable=not choice.baseline)
            result = train(cfg, self.data.fit.images, seed=self.params.seed, out_dir=None, callbacks=[reporter],
                           epochs=t.epochs, progress=False)
            if t.objective == "knn" and reporter.last_score is not None:
                # The reporter scored the last epoch already: the same kNN, no second feature extraction.
                value = reporter.last_score
            else:
                value = validation_score(result.encoder, self.data.fit, self.data.val, self.data.num_classes,
                                         self.params.evaluate, self.data.device, self.params.seed, t.objective)
            if not math.isfinite(value):
                raise ValueError(f"trial {trial.number}: the {t.objective} validation score is {value}")
            tracking.log_metrics({"objective_value": value}, step=t.epochs)
            return value


def _run_params(trial: optuna.Trial, choice: TrialChoice, params: Params) -> dict[str, object]:
    return {"lambda": choice.lam, "form": choice.form, "baseline": choice.baseline, "trial_number": trial.number,
            "epochs": params.tune.epochs, "objective": params.tune.objective, "seed": params.seed}
