"""A tuning worker reduced to the budget: pipeline's gate around ``study.optimize``, trials that only sleep.

A module of its own so that a spawned process imports Optuna and the gate, not torch and MLflow.
"""

from __future__ import annotations

import time
from typing import Any

import optuna

from pipeline.tuning.budget import BudgetGate, BudgetLock
from pipeline.tuning.storage import open_storage


def gated_worker(url: str, study_name: str, n_trials: int, barrier: Any, rounds: int) -> None:
    """``rounds`` times: wait at ``barrier`` for every worker (so that they ask together), run the study's
    trials while the gate admits them, and wait at ``barrier`` again while the test counts them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    gate = BudgetGate(BudgetLock(url, study_name), n_trials)

    def objective(trial: optuna.Trial) -> float:
        gate.entered()
        time.sleep(0.05)
        return trial.suggest_float("x", 0.0, 1.0)

    for _ in range(rounds):
        barrier.wait()
        try:
            if gate.admit(study):
                study.optimize(objective, callbacks=[gate])
        finally:
            gate.lock.release()
        barrier.wait()
