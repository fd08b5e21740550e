"""A tuning worker: ``study.optimize`` on the shared study until its trial budget is used up.

Any number of workers (the ``tune`` stage run several times, on one host or many) share one study. Optuna
runs each trial (heartbeat, tell, failed-trial retry); the worker adds what Optuna lacks, each measured in
its module: the exact budget (:mod:`.budget`), retries across a database restart (:mod:`.storage`), and
dead workers' trials on a journal (:mod:`.recovery`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from pipeline.config import Params, TuneConfig
from pipeline.errors import StageError, UserError
from pipeline.tracking.trials import ensure_parent_run, parent_run
from pipeline.tuning.budget import BudgetGate, BudgetLock
from pipeline.tuning.objective import Objective, TuneData
from pipeline.tuning.recovery import RetryStaleTrial, close_lost_run, fail_orphans, fail_stale, lost_trial
from pipeline.tuning.selection import objective_resolution
from pipeline.tuning.space import SearchSpace, enqueue_baselines, study_name
from pipeline.tuning.storage import TRANSIENT, configured_url, open_storage, redact, storage_url
from pipeline.tuning.study import Counts, build_sampler, count_trials, open_study, trial_seed, worker_id

log = logging.getLogger(__name__)


@dataclass
class TuneOutcome:
    """What one worker leaves: the study (every worker's trials) and this worker's share.

    Attributes:
        study: The study, read from its storage.
        storage_url: As configured (a relative path stays relative), without its password.
        parent_run_id: The study's MLflow parent run.
        counts: The whole study's trials by state when this worker stopped.
        ran: Trials this worker finished (complete, pruned or failed).
        seconds: This worker's wall time.
        resolution: The smallest non-zero difference of two objective values
            (:func:`~pipeline.tuning.selection.objective_resolution`).
    """

    study: optuna.Study
    storage_url: str
    parent_run_id: str
    counts: Counts
    ran: int
    seconds: float
    resolution: float


class _Admitted:
    """The objective as ``study.optimize`` calls it: its trial now exists, so the gate lets the next worker
    count; the sampler is re-seeded from the trial's number, so a draw does not depend on the worker."""

    def __init__(self, objective: Objective, gate: BudgetGate, cfg: TuneConfig) -> None:
        self.objective, self.gate, self.cfg = objective, gate, cfg
        self.current: int | None = None  # the number of the trial this worker runs or last ran

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        self.gate.entered()
        trial.study.sampler = build_sampler(self.cfg, trial_seed(self.cfg.seed, trial.number))
        return self.objective(trial)


class _AfterTrial:
    """``study.optimize``'s callback: progress, the failed-in-a-row stop, then the gate for the next trial."""

    def __init__(self, gate: BudgetGate, bar: tqdm, max_failed: int) -> None:
        self.gate, self.bar, self.max_failed = gate, bar, max_failed
        self.ran = self.failed_in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.ran += 1
        self.failed_in_a_row = self.failed_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if trial.state != TrialState.FAIL:
            self.bar.update(1)
        self.bar.set_postfix(last=trial.state.name.lower())
        if self.failed_in_a_row >= self.max_failed:
            raise StageError(f"study {study.study_name}: {self.failed_in_a_row} trials failed in a row (see "
                             f"the 'error' tag of their MLflow runs); stopping this worker")
        self.gate(study, trial)


def _dead_worker_check(storage: optuna.storages.BaseStorage, retry: RetryStaleTrial
                       ) -> tuple[Callable[[optuna.Study], None], int | None]:
    """How this storage finds dead workers' trials, and its heartbeat period (None: it has none)."""
    heartbeat = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
    if heartbeat is not None:
        return fail_stale, heartbeat
    return lambda study: fail_orphans(study, retry), None


def run_tuning(params: Params, *, progress: bool = True,
               pruner: optuna.pruners.BasePruner | None = None) -> TuneOutcome:
    """Work on the study that ``params`` defines until its ``tune.n_trials`` budget is used up.

    Args:
        params: The pipeline's parameters (``tune``, and what the trials train).
        progress: Show a progress bar.
        pruner: Replaces the one ``tune.pruner`` names (library callers and tests).

    Returns:
        The study and this worker's share of it.

    Raises:
        StageError: ``tune.max_failed_trials`` trials failed in a row (a bug, not a bad lambda).
        UserError: A bad search space, data set or storage.
    """
    t = params.tune
    url = storage_url(t)
    shown = redact(configured_url(t))
    space = SearchSpace.from_params(params)
    data = TuneData.load(params)
    sha = str(data.manifest["dataset_sha256"])
    name = study_name(params, sha)
    retry = RetryStaleTrial(t.max_retries)
    lock = BudgetLock(url, key=name, retry_s=t.storage_retry_s)
    # Creating the storage's tables, the baselines and the MLflow parent is one worker's job, done once.
    with lock:
        storage = open_storage(url, t, on_stale=retry)
        study = open_study(name, storage, t, pruner)
        parent_id = ensure_parent_run(study, params, shown, sha)  # first: it points MLflow at its store
        check_dead, heartbeat = _dead_worker_check(storage, retry)
        check_dead(study)
        if t.enqueue_baseline:
            enqueue_baselines(study, space)

    start = time.perf_counter()
    deadline = None if t.timeout_s is None else time.monotonic() + t.timeout_s
    gate = BudgetGate(lock, t.n_trials, poll_s=heartbeat, on_poll=check_dead, deadline=deadline,
                      retry_s=t.storage_retry_s)
    gate.log_inexact(url)
    objective = _Admitted(Objective(params, data, space, name), gate, t)
    counts = count_trials(study)
    bar = tqdm(total=t.n_trials, initial=min(counts.finished, t.n_trials), desc=f"tune {name}", unit="trial",
               disable=not progress)
    after = _AfterTrial(gate, bar, t.max_failed_trials)
    try:
        with parent_run(params, parent_id):
            _optimize(study, objective, after, gate, t.storage_retry_s)
    finally:
        bar.close()
    return TuneOutcome(study, shown, parent_id, count_trials(study), after.ran, time.perf_counter() - start,
                       objective_resolution(len(t.seeds), len(data.val)))


def _optimize(study: optuna.Study, objective: _Admitted, after: _AfterTrial, gate: BudgetGate,
              retry_s: float) -> None:
    """``study.optimize`` while the gate admits, again after a storage call outside a trial met the
    database away (fail-stale check, ask, tell: Optuna's trial cache reads them outside the retried
    interface), for up to ``retry_s`` seconds in a row."""
    down_since: float | None = None
    ran_then = -1
    while True:
        try:
            if gate.admit(study):
                study.optimize(objective, callbacks=[after], catch=(Exception,))
            return
        except TRANSIENT as exc:
            now = time.monotonic()
            if down_since is None or after.ran != ran_then:  # a trial finished since the last failure
                down_since, ran_then = now, after.ran
            if now - down_since > retry_s:
                raise
            log.warning("optuna storage: the database did not answer (%s); retrying in 1 s",
                        type(exc.__cause__ or exc).__name__)
            time.sleep(1.0)
        except (ValueError, AssertionError) as exc:
            # Another worker failed this worker's trial as stale (its heartbeat stalled past tune.grace_s on a
            # starved machine) and queued a copy that redoes it. Optuna's tell of it then raises ValueError
            # ("Cannot tell a FAIL trial"), or AssertionError ("Should not reach.") when the objective had
            # returned a value.
            lost = None if isinstance(exc, UserError) else lost_trial(study, objective.current, worker_id())
            if lost is None:
                raise  # a StageError (failed trials in a row) is a ValueError too
            log.warning("trial %d: another worker failed this trial as stale (%r); its queued copy redoes it",
                        lost.number, exc)
            close_lost_run(lost)
        finally:
            gate.lock.release()
