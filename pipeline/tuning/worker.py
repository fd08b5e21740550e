"""A tuning worker: takes trials from the study's shared budget until it is used up.

Any number of workers (the ``tune`` stage's entry point run several times, on one machine against a
journal file, or on many against PostgreSQL) share one study. Each worker

1. under the study's :class:`~pipeline.tuning.storage.BudgetLock`: opens (or creates) the study, fails
   the trials of workers on this host that died, enqueues the lambda = 0 baseline once, and creates the
   study's MLflow parent run once;
2. then, for as long as the budget allows: asks for a trial under the lock (so the budget is never
   overshot on one machine), runs it outside the lock (pretrain + validation score, in a nested MLflow
   run), and tells the study how it ended (complete, pruned or failed).

The sampler is re-seeded for every trial from ``(tune.seed, trial number)``, so a trial's draw does not
depend on which worker runs it, and a study rerun from the same storage is reproducible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from pipeline.cli import StageError
from pipeline.config import Params
from pipeline.tracking.trials import RUN_ATTR, ensure_parent_run, mark_failed, parent_run
from pipeline.tuning.objective import Objective, TuneData
from pipeline.tuning.space import SearchSpace, enqueue_baseline, study_name
from pipeline.tuning.storage import BudgetLock, open_storage, redact, storage_url
from pipeline.tuning.study import Counts, build_sampler, count_trials, open_study, orphaned_trials, trial_seed

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


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> TrialState:
    """Run one trial and record how it ended; KeyboardInterrupt fails the trial and propagates."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except BaseException as exc:
        study.tell(trial, state=TrialState.FAIL)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop this worker
            raise
        log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
        return TrialState.FAIL
    study.tell(trial, value)
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
    space = SearchSpace.from_config(t)
    data = TuneData.load(params)
    sha = str(data.manifest["dataset_sha256"])
    name = study_name(params, sha)
    lock = BudgetLock(url)
    if not lock.exact:
        log.info("storage %s has no local lock file: workers may overshoot the budget by one trial each",
                 redact(url))
    # Creating the storage's tables, the baseline and the MLflow parent is one worker's job, done once.
    with lock:
        study = open_study(name, open_storage(url), t, pruner)
        _fail_orphans(study)
        if t.enqueue_baseline:
            enqueue_baseline(study)
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
                    counts = count_trials(study)
                    if counts.used >= t.n_trials:
                        break
                    trial = study.ask()
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

