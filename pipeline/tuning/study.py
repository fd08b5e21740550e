"""The Optuna study: sampler, pruner, creating or continuing it, and counting its trial budget.

The budget ``tune.n_trials`` counts the trials that are complete, pruned, running or waiting; failed
trials do not count, so a rerun redoes a trial that crashed or was interrupted.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from pipeline.config import TuneConfig
from pipeline.tracking.runs import pid_alive

# Trials in these states use up the budget; a failed one is retried by the next worker that runs.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
WORKER_ATTR = "worker"  # "<host>:<pid>" of the process running the trial


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for the trial of this number: fixed by (seed, number), whichever worker runs it.

    One seed per process would make two workers draw the same random lambdas.
    """
    return (seed * 1_000_003 + number) % 2**31


def build_sampler(cfg: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A few random trials before TPE models the space; the liar keeps parallel workers apart.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, cfg.n_trials // 2)),
                                          constant_liar=True)


def build_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """Steps are epochs; reports arrive every ``tune.eval_every`` epochs."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(cfg.eval_every, cfg.epochs),
                                              max_resource=cfg.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(name: str, storage: optuna.storages.BaseStorage, cfg: TuneConfig,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study, or load it when it exists (another worker or an earlier run made it)."""
    return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                               sampler=build_sampler(cfg, trial_seed(cfg.seed, 0)),
                               pruner=pruner or build_pruner(cfg), load_if_exists=True)


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def total(self) -> int:
        return self.complete + self.pruned + self.failed + self.running + self.waiting

    @property
    def used(self) -> int:
        """What counts against ``tune.n_trials``."""
        return self.complete + self.pruned + self.running + self.waiting

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    n = {s: 0 for s in TrialState}
    for t in trials:
        n[t.state] += 1
    return Counts(n[TrialState.COMPLETE], n[TrialState.PRUNED], n[TrialState.FAIL], n[TrialState.RUNNING],
                  n[TrialState.WAITING])


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def orphaned_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Running trials whose worker process on this host is gone (killed, out of memory, power cut).

    Without this they would hold their budget slot for ever; the caller fails them so a rerun redoes
    them. Trials of other hosts are left alone: their liveness cannot be seen from here.
    """
    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get(WORKER_ATTR, ""))
        w_host, _, pid = who.rpartition(":")
        if w_host == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            out.append(t)
    return out
