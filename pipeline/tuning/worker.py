"""A tuning worker: takes trials from the study's shared budget until it is used up.

Any number of workers (the ``tune`` stage's entry point run several times, on one machine against a
journal file, or on many against PostgreSQL) share one study. Each worker

1. under the study's :class:`~pipeline.tuning.storage.BudgetLock`: opens (or creates) the study, fails
   the trials of workers on this host that died, enqueues each method's lambda = 0 baseline once, and creates the
   study's MLflow parent run once;
2. then, for as long as the budget allows: asks for a trial under the lock (so the budget is never
   overshot on one machine), runs it outside the lock (pretrain + validation score, in a nested MLflow
   run), and tells the study how it ended (complete, pruned or failed).

On a network database (PostgreSQL) a worker beats the heartbeat of its running trial from a thread of
its own (ask/tell has no ``study.optimize`` to do it), and before each ask fails the trials whose
heartbeat went silent, on any host: :class:`RetryStaleTrial` closes their MLflow run as FAILED and queues
them again with the same params and configuration attributes. Such a worker also stays, polling, while
other workers' trials still run once the budget is taken, so that it can redo one whose worker dies.

The sampler is re-seeded for every trial from ``(tune.seed, trial number)``, so a trial's draw does not
depend on which worker runs it, and a study rerun from the same storage is reproducible.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from types import TracebackType

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from pipeline.config import Params
from pipeline.errors import StageError
from pipeline.tracking.trials import RUN_ATTR, ensure_parent_run, mark_failed, parent_run
from pipeline.tuning.objective import Objective, TuneData
from pipeline.tuning.space import SearchSpace, enqueue_baselines, study_name
from pipeline.tuning.storage import BudgetLock, open_storage, redact, storage_url
from pipeline.tuning.study import (
    WORKER_ATTR,
    Counts,
    build_sampler,
    count_trials,
    open_study,
    orphaned_trials,
    trial_seed,
)

log = logging.getLogger(__name__)


@dataclass
class TuneOutcome:
    study: optuna.Study
    storage_url: str  # redacted: safe to print and log
    parent_run_id: str
    counts: Counts  # the whole study's, when this worker stopped
    ran: int  # trials this worker ran
    seconds: float  # this worker's wall time


def _fail_orphans(study: optuna.Study) -> None:
    for t in orphaned_trials(study):
        log.warning("trial %d of %s: its worker %s is gone; marking it failed so that it is redone",
                    t.number, study.study_name, t.user_attrs.get("worker"))
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        mark_failed(t.user_attrs.get(RUN_ATTR), "worker process died")


class RetryStaleTrial(optuna.storages.RetryFailedTrialCallback):
    """For a trial failed because its worker's heartbeat went silent: close its MLflow run as FAILED, then
    queue a copy with the same params and user attributes (baseline, method, lambda, form), less the
    dead worker's own (its MLflow run id and process)."""

    RUN_LOCAL = (RUN_ATTR, WORKER_ATTR)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("trial %d of %s: its worker %s stopped beating; failing it and queueing it again",
                    trial.number, study.study_name, trial.user_attrs.get(WORKER_ATTR))
        mark_failed(trial.user_attrs.get(RUN_ATTR), "worker stopped beating (killed, or its host is gone)")
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in self.RUN_LOCAL}
        super().__call__(study, trial)


def _retry_callback(max_retries: int | None) -> RetryStaleTrial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryStaleTrial(max_retry=max_retries)


def _heartbeat_s(study: optuna.Study) -> int | None:
    """The storage's heartbeat period; None when it has none (SQLite, journal: the pid check serves)."""
    get = getattr(study._storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # Optuna expects study.optimize with a heartbeat: _Heartbeat stands in
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class _Heartbeat:
    """Beats a running trial's heartbeat every ``interval`` seconds from a thread, as ``study.optimize``
    does. A beat that fails (the database restarting) is logged and the next one tried: a heartbeat
    thread that died would let the other workers take a live trial for a dead one."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: int | None) -> None:
        self._storage, self._trial_id, self._interval = study._storage, trial._trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # keep beating: the next one may reach the database
                log.warning("heartbeat of trial id %d failed: %s", self._trial_id, exc)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self._interval is not None:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> TrialState:
    """Run one trial and record how it ended; KeyboardInterrupt fails the trial and propagates.

    ``skip_if_finished``: a trial that other workers failed as stale meanwhile (a worker stalled past the
    grace period) keeps that state; its queued copy redoes it.
    """
    with _Heartbeat(study, trial, _heartbeat_s(study)):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return TrialState.PRUNED
        except BaseException as exc:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop this worker
                raise
            log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            return TrialState.FAIL
        study.tell(trial, value, skip_if_finished=True)
    return TrialState.COMPLETE


def _best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no complete trial yet
        return None


def run_tuning(params: Params, *, progress: bool = True,
               pruner: optuna.pruners.BasePruner | None = None) -> TuneOutcome:
    """Work on the study that ``params`` defines until its ``tune.n_trials`` budget is used up.

    ``pruner`` overrides the one ``tune.pruner`` names (library callers and tests; the stage uses params).
    Raises StageError when ``tune.max_failed_trials`` trials fail in a row (a bug, not a bad lambda).
    """
    t = params.tune
    url = storage_url(t)
    space = SearchSpace.from_params(params)
    data = TuneData.load(params)
    sha = str(data.manifest["dataset_sha256"])
    name = study_name(params, sha)
    lock = BudgetLock(url, key=name, retry_s=t.storage_retry_s)
    if not lock.exact:
        log.info("storage %s has no budget lock: workers may overshoot the budget by one trial each",
                 redact(url))
    # Creating the storage's tables, the baseline and the MLflow parent is one worker's job, done once.
    with lock:
        storage = open_storage(url, t, on_stale=_retry_callback(t.max_retries))
        study = open_study(name, storage, t, pruner)
        heartbeat = _heartbeat_s(study)
        if heartbeat is None:
            _fail_orphans(study)  # no heartbeat: a dead worker of this host is seen by its process id
        else:
            _fail_stale(study)  # any host's; queued again with the same params
        if t.enqueue_baseline:
            enqueue_baselines(study, space)
        parent_id = ensure_parent_run(study, params, redact(url), sha)

    objective = Objective(params, data, space, name)
    start = time.perf_counter()
    ran = failed_in_a_row = 0
    counts = count_trials(study)
    bar = tqdm(total=t.n_trials, initial=min(counts.finished, t.n_trials), desc=f"tune {name}", unit="trial",
               disable=not progress)
    try:
        with parent_run(params, parent_id):
            while t.timeout_s is None or time.perf_counter() - start < t.timeout_s:
                with lock:
                    if heartbeat is not None:
                        _fail_stale(study)
                    counts = count_trials(study)
                    # A queued trial (the baseline, a dead worker's retried trial) is already in the budget.
                    trial = _ask(study) if counts.waiting or counts.used < t.n_trials else None
                if trial is None:
                    # Budget taken. Trials still running elsewhere may belong to a worker that died: wait
                    # to redo them (their queued copies) where the heartbeat can tell; else we are done.
                    if heartbeat is None or counts.running == 0:
                        break
                    time.sleep(heartbeat)
                    continue
                # The draw depends on the trial's number only, not on the worker or what it ran before.
                study.sampler = build_sampler(t, trial_seed(t.seed, trial.number))
                state = _run_trial(study, trial, objective)
                ran += 1
                failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
                bar.update(1 if state != TrialState.FAIL else 0)
                best = _best_value(study)
                bar.set_postfix(last=state.name.lower(), best="n/a" if best is None else f"{best:.4f}")
                if failed_in_a_row >= t.max_failed_trials:
                    raise StageError(f"study {name}: {failed_in_a_row} trials failed in a row (see the "
                                     f"'error' tag of their MLflow runs); stopping this worker")
    finally:
        bar.close()
    counts = count_trials(study)
    return TuneOutcome(study, redact(url), parent_id, counts, ran, time.perf_counter() - start)

