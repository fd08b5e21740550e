"""The Optuna study: its sampler and pruner, creating or continuing it, and counting its trial budget.

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

# Trials in these states use up the budget; a failed one is redone by the next worker that runs.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
WORKER_ATTR = "worker"  # trial user attribute: "<host>:<pid>" of the process running it


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for trial ``number``: fixed by ``(seed, number)``, whichever worker runs it.

    One seed per process would make two workers draw the same lambdas.
    """
    return (seed * 1_000_003 + number) % 2**31


def build_sampler(cfg: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """``tune.sampler`` seeded with ``seed``: TPE after a few random trials, or random search."""
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A few random trials before TPE models the space; the liar keeps parallel workers apart.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, cfg.n_trials // 2)),
                                          constant_liar=True)


def build_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """``tune.pruner``; its steps are epochs, reported every ``tune.eval_every`` epochs."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(cfg.eval_every, cfg.epochs),
                                              max_resource=cfg.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(name: str, storage: optuna.storages.BaseStorage, cfg: TuneConfig,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study, or load it when another worker or an earlier run made it.

    Args:
        name: The study's name (:func:`pipeline.tuning.space.study_name`).
        storage: Where it lives.
        cfg: The ``tune`` section (sampler, pruner, seed).
        pruner: Replaces the one ``tune.pruner`` names.
    """
    return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                               sampler=build_sampler(cfg, trial_seed(cfg.seed, 0)),
                               pruner=pruner or build_pruner(cfg), load_if_exists=True)


@dataclass(frozen=True)
class Counts:
    """A study's trials by state."""

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
    """The study's trials by state, read from the storage now."""
    n = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        n[t.state] += 1
    return Counts(n[TrialState.COMPLETE], n[TrialState.PRUNED], n[TrialState.FAIL], n[TrialState.RUNNING],
                  n[TrialState.WAITING])


def worker_id() -> str:
    """``<host>:<pid>`` of this process, recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"
