"""One trial: pretrain its configuration once per seed of ``tune.seeds`` (one :class:`Trainer` a seed, in
lockstep), score each on the validation split (never test), report the mean to the pruner every
``tune.eval_every`` epochs, and return the mean over seeds. Each seed's value is kept on the trial, so the
report can pair it with its baseline.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import mlflow
import optuna
import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.format import Split, load_manifest, load_split
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.engine.monitor import Monitor
from pipeline.engine.trainer import Trainer
from pipeline.errors import UserError
from pipeline.evaluation import knn_score, validation_report
from pipeline.tracking.datasets import log_dataset_input
from pipeline.tracking.trials import trial_run
from pipeline.tuning.space import SearchSpace, TrialChoice, suggest, trial_pretrain_config
from pipeline.tuning.storage import retry_transient
from pipeline.tuning.study import WORKER_ATTR, worker_id

VAL_KNN = "val_knn"
SEED_VALUES_ATTR = "seed_values"  # {seed: objective value}, as a JSON object (keys are strings)
VALUE_SD_ATTR = "value_sd"
# Per-trial means over seeds of what shows the head at work, for the report's figure.
SUMMARY_ATTRS = ("rankme_z", "rankme", "head_sparsity", "head_exact_zero_frac")


@dataclass
class TuneData:
    """What every trial trains and is scored on, loaded once per worker.

    Attributes:
        fit: What SSL and the kNN/probe memory see: the training split minus validation.
        val: What the trials are scored on.
        num_classes: Classes of the data set.
        manifest: The prepared data's manifest.
        device: Where the trials train.
    """

    fit: Split
    val: Split
    num_classes: int
    manifest: dict
    device: torch.device

    @classmethod
    def load(cls, params: Params) -> TuneData:
        """The prepared data split as ``evaluate.val_fraction`` and ``seed`` say.

        Raises:
            UserError: The split leaves no validation image.
        """
        data_dir = params.prepare.out_dir
        manifest = load_manifest(data_dir)
        fit, val = train_val_split(load_split(data_dir, "train", manifest), params.evaluate.val_fraction, params.seed)
        if len(val) == 0:
            raise UserError(f"evaluate.val_fraction {params.evaluate.val_fraction} leaves no validation "
                             f"images in {data_dir}")
        num_classes = int(manifest.get("num_classes") or len(manifest["classes"]))
        return cls(fit, val, num_classes, manifest, resolve_device(params.pretrain.device))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class Objective:
    """The callable handed to Optuna: one trial in, its mean validation score over seeds out.

    Baselines are never pruned: the study's answer compares the best trial with them.

    Args:
        params: The pipeline's parameters.
        data: The split every trial trains and is scored on.
        space: What a trial draws.
        study_name: For the trial's MLflow run.
    """

    def __init__(self, params: Params, data: TuneData, space: SearchSpace, study_name: str) -> None:
        self.params, self.data, self.space, self.study_name = params, data, space, study_name

    def __call__(self, trial: optuna.Trial) -> float:
        """Train and score ``trial``; raises ``optuna.TrialPruned`` when the pruner stops it."""
        trial.set_user_attr(WORKER_ATTR, worker_id())
        # The sampler reads the study through Optuna's trial cache, outside the storage's retried calls.
        choice = retry_transient(lambda: suggest(trial, self.space), "suggest", self.params.tune.storage_retry_s)
        with trial_run(self.study_name, trial, tags={"baseline": str(choice.baseline).lower(),
                                                     "method": choice.method},
                       system_metrics=self.params.tracking.system_metrics):
            mlflow.log_params(_run_params(trial, choice, self.params))
            log_dataset_input(self.data.manifest, self.params.prepare, context="train")
            return self._run(trial, choice)

    def _run(self, trial: optuna.Trial, choice: TrialChoice) -> float:
        t, ev, data = self.params.tune, self.params.evaluate, self.data
        cfg = trial_pretrain_config(self.params.pretrain, choice, t.epochs)
        # RankMe curves only: the trial measures validation kNN itself (below).
        runs = {s: Trainer(cfg, data.fit.images, seed=s, epochs=t.epochs, progress=False,
                           monitor=Monitor.for_training(data.fit, cfg, ev, self.params.seed, with_knn=False))
                for s in t.seeds}
        reports: dict[int, dict[str, float]] = {}
        for epoch in range(1, t.epochs + 1):
            for s, run in runs.items():
                tracking.log_metrics(run.train_epoch(), step=epoch, prefix=f"seed{s}.")
            if epoch % t.eval_every and epoch != t.epochs:
                continue
            if epoch == t.epochs:  # the full report once, from the same features as the last kNN
                reports = {s: validation_report(run.encoder, data.fit, data.val, data.num_classes, ev,
                                                data.device, s, t.objective) for s, run in runs.items()}
                scores = {s: rep["knn"] for s, rep in reports.items()}
            else:
                scores = {s: knn_score(run.encoder, data.fit, data.val, ev, data.device, data.num_classes)
                          for s, run in runs.items()}
            score = statistics.fmean(scores.values())
            tracking.log_metrics({VAL_KNN: score, **{f"{VAL_KNN}.seed{s}": v for s, v in scores.items()}},
                                 step=epoch)
            trial.report(score, epoch)
            # Pruning after the last epoch would save nothing; baselines are the reference, never pruned.
            if not choice.baseline and epoch != t.epochs and retry_transient(
                    trial.should_prune, "should_prune", t.storage_retry_s):
                raise optuna.TrialPruned(f"mean {VAL_KNN} {score:.4f} at epoch {epoch}")
        values = {s: rep[t.objective] for s, rep in reports.items()}
        bad = [s for s, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"trial {trial.number}: the {t.objective} validation score of seed {bad[0]} is "
                             f"{values[bad[0]]}")
        value, sd = mean_sd(list(values.values()))
        trial.set_user_attr(SEED_VALUES_ATTR, {str(s): v for s, v in values.items()})
        trial.set_user_attr(VALUE_SD_ATTR, sd)
        summary = {}
        for key in SUMMARY_ATTRS:
            per_seed = [rep[key] for rep in reports.values()]
            summary[key] = statistics.fmean(per_seed)
            trial.set_user_attr(key, summary[key])
        tracking.log_metrics({"objective_value": value, "objective_sd": sd,
                              **{f"objective_value.seed{s}": v for s, v in values.items()},
                              **summary}, step=t.epochs)
        return value


def _run_params(trial: optuna.Trial, choice: TrialChoice, params: Params) -> dict[str, object]:
    return {"lambda": choice.lam, "form": choice.form, "update": choice.update, "method": choice.method,
            "baseline": choice.baseline, "trial_number": trial.number, "epochs": params.tune.epochs,
            "objective": params.tune.objective, "seeds": ",".join(map(str, params.tune.seeds)),
            "split_seed": params.seed, "torch_num_threads": torch.get_num_threads()}
