"""A dead worker's trial is failed and queued again with the same params, on every kind of storage.

On a database server Optuna's heartbeat finds it: ``study.optimize`` beats every ``tune.heartbeat_s``
and fails a trial silent for ``tune.grace_s``, then calls :class:`RetryStaleTrial`. A local file (SQLite,
or Optuna's journal, which has no heartbeat in Optuna 5) serves the workers of one host: there a running
trial whose process is gone is found by its process id (:func:`fail_orphans`), at once, and also when it
never beat (a study an earlier version of this code left).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.tracking.runs import pid_alive
from pipeline.tracking.trials import RUN_ATTR, RUN_STATUS, mark_failed
from pipeline.tuning.study import WORKER_ATTR

log = logging.getLogger(__name__)


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, which also closes the trial's MLflow run as FAILED.

    The queued copy keeps the params and user attributes (baseline, method, lambda, form) but not the dead
    worker's own (its MLflow run id and process).

    Args:
        max_retry: How many times one trial is queued again (None: no limit).
    """

    RUN_LOCAL = (RUN_ATTR, WORKER_ATTR)

    def __init__(self, max_retry: int | None) -> None:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning("trial %d of %s: its worker %s is gone; failing it and queueing it again",
                    trial.number, study.study_name, trial.user_attrs.get(WORKER_ATTR))
        mark_failed(trial.user_attrs.get(RUN_ATTR), "its worker died (killed, or its host is gone)")
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in self.RUN_LOCAL}
        super().__call__(study, trial)


def lost_trial(study: optuna.Study, number: int | None, worker: str) -> FrozenTrial | None:
    """``worker``'s trial ``number`` if the storage holds it as FAIL (another worker failed it), else None.

    A live worker whose heartbeat stalled past ``tune.grace_s`` (a starved machine) loses its trial to the
    others, who queue it again; Optuna's tell of it then raises in that worker.
    """
    if number is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number == number and t.user_attrs.get(WORKER_ATTR) == worker:
            return t
    return None


def close_lost_run(trial: FrozenTrial) -> None:
    """Mark FAILED the MLflow run of a :func:`lost_trial` that its worker had ended FINISHED."""
    mark_failed(trial.user_attrs.get(RUN_ATTR), f"its heartbeat was silent for longer than the grace period, so "
                f"another worker failed trial {trial.number} and queued it again", only_if=RUN_STATUS["COMPLETE"])


def fail_stale(study: optuna.Study) -> None:
    """Optuna's check for silent heartbeats (a no-op on a storage without a heartbeat)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def orphaned_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Running trials whose worker process on this host is gone (killed, out of memory, power cut).

    Trials of other hosts are left alone: their processes cannot be seen from here.
    """
    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get(WORKER_ATTR, ""))
        w_host, _, pid = who.rpartition(":")
        if w_host == host and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            out.append(t)
    return out


def fail_orphans(study: optuna.Study, retry: RetryStaleTrial) -> None:
    """Fail the :func:`orphaned_trials` and queue each again through ``retry``, as a heartbeat would.

    Call it under the study's :class:`~pipeline.tuning.budget.BudgetLock`, so that one worker does it.
    """
    for t in orphaned_trials(study):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        retry(study, t)
