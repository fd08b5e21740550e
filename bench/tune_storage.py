"""What Optuna's storages do under several tuning workers: the figures behind the coordination that
``pipeline/tuning`` keeps (each module's docstring cites its line). Figures, never pass/fail.

    python -m bench.tune_storage budget  [--workers 3] [--n-trials 4] [--repeats 10]
        trials a study ends with when N workers share an n-trial budget: Optuna's MaxTrialsCallback
        against pipeline.tuning.budget.BudgetGate, on SQLite and on a journal; then a rerun of the
        finished study by the same workers.
    python -m bench.tune_storage writers [--workers 2] [--trials 100]
        N processes writing one SQLite study at once through study.optimize: errors per storage call.
    python -m bench.tune_storage restart [--restarts 5]
        a loop of storage calls while a throwaway PostgreSQL (tests/servers.py) is stopped for 2 s,
        several times: failed calls with pool_pre_ping alone, and with pipeline's retries.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import random
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from pipeline.tuning.budget import BudgetGate, BudgetLock
from pipeline.tuning.storage import RetryingRDBStorage, open_storage, retry_transient
from pipeline.tuning.study import BUDGET_STATES

STUDY = "bench"


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.CRITICAL)
    warnings.simplefilter("ignore")


def _budget_worker(url: str, n: int, gated: bool, start: Any, seed: float) -> None:
    _quiet()
    rng = random.Random(seed)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    gate = BudgetGate(BudgetLock(url, STUDY), n) if gated else None

    def objective(trial: optuna.Trial) -> float:
        if gate is not None:
            gate.entered()
        time.sleep(rng.uniform(0.1, 0.4))  # a trial's length varies
        return trial.suggest_float("x", 0.0, 1.0)

    start.wait()
    if gate is None:
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(n, states=BUDGET_STATES)])
    elif gate.admit(study):
        try:
            study.optimize(objective, callbacks=[gate])
        finally:
            gate.lock.release()


def _run_workers(target: Callable[..., None], workers: int, *args: Any) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, start, random.random())) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # every worker imported and waiting: they ask together
    start.set()
    for p in procs:
        p.join()


def budget(args: argparse.Namespace) -> None:
    for kind in ("sqlite", "journal"):
        for gated in (False, True):
            ends = []
            for _ in range(args.repeats):
                folder = tempfile.mkdtemp()
                url = f"sqlite:///{folder}/optuna.db" if kind == "sqlite" else f"journal:{folder}/optuna.journal"
                optuna.create_study(study_name=STUDY, storage=open_storage(url))
                _run_workers(_budget_worker, args.workers, url, args.n_trials, gated)
                first = len(optuna.load_study(study_name=STUDY, storage=open_storage(url)).trials)
                _run_workers(_budget_worker, args.workers, url, args.n_trials, gated)
                ends.append((first, len(optuna.load_study(study_name=STUDY, storage=open_storage(url)).trials)))
                shutil.rmtree(folder)
            how = "BudgetGate" if gated else "MaxTrialsCallback(n, states=budget states)"
            print(f"budget {kind:7s} {how}: {args.workers} workers, n_trials {args.n_trials}: trials after the "
                  f"run / after a rerun: {ends}")


def _writer(url: str, trials: int, queue: Any, start: Any, seed: float) -> None:
    _quiet()
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))

    def objective(trial: optuna.Trial) -> float:  # the writes a tuning trial makes, without the training
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("worker", seed)
        for step in range(5):
            trial.report(x, step)
            trial.should_prune()
        return x

    errors: collections.Counter[str] = collections.Counter()
    start.wait()
    for _ in range(trials):
        try:
            study.optimize(objective, n_trials=1)
        except Exception as exc:
            errors[f"{type(exc).__name__}: {str(exc.__cause__ or exc).splitlines()[0][:80]}"] += 1
    queue.put(dict(errors))


def writers(args: argparse.Namespace) -> None:
    folder = tempfile.mkdtemp()
    url = f"sqlite:///{folder}/optuna.db"
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    _run_workers(_writer, args.workers, url, args.trials, queue)
    errors = [queue.get() for _ in range(args.workers)]
    seconds = time.perf_counter() - t0 - 3.0
    states = collections.Counter(t.state.name for t in optuna.load_study(study_name=STUDY,
                                                                         storage=open_storage(url)).trials)
    # A trial writes: create, param, user attr, 5 reports, state (9), and reads the study 7 times.
    print(f"writers sqlite: {args.workers} processes x {args.trials} trials ({args.workers * args.trials * 9} "
          f"write transactions) in {seconds:.0f} s (under load: label it so); errors per process: {errors}; "
          f"trial states: {dict(states)}")
    shutil.rmtree(folder)


def _waiting_connect(url: str) -> Callable[[], Any]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    dialect = u.get_dialect()
    cargs, cparams = dialect().create_connect_args(u)
    dbapi = dialect.import_dbapi()

    def connect() -> Any:
        deadline = time.monotonic() + 60
        while True:
            try:
                return dbapi.connect(*cargs, **cparams)
            except dbapi.OperationalError:  # refused: the server is down
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    return connect


def _calls_through_restarts(pg: Any, mode: str, restarts: int) -> str:
    """Storage calls in a loop (a trial's writes, its heartbeat, the trial cache's read) while ``pg``
    restarts ``restarts`` times; what failed, by call."""
    _quiet()
    url = pg.create_database("bench_" + mode.split()[0].lower())
    cls = RetryingRDBStorage if mode == "pipeline retries" else optuna.storages.RDBStorage
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if mode == "connections wait":  # a new connection waits for the server; calls are not repeated
        engine["creator"] = _waiting_connect(url)
    storage = cls(url, engine_kwargs=engine, heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(STUDY), trial.number)

    def read() -> object:
        return study.get_trials(deepcopy=False)

    calls: dict[str, Callable[[], object]] = {
        "set_user_attr": lambda: trial.set_user_attr("i", time.time()),
        "record_heartbeat": lambda: storage.record_heartbeat(trial_id),
        # The trial cache's read: pipeline retries it where it calls it.
        "get_trials": lambda: retry_transient(read, "read", 60) if mode == "pipeline retries" else read(),
    }
    failed: collections.Counter[str] = collections.Counter()
    made: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for name, call in calls.items():
                made[name] += 1
                try:
                    call()
                except Exception:
                    failed[name] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=loop)
    thread.start()
    for _ in range(restarts):
        time.sleep(3.0)
        pg.restart(down_s=2.0)
    time.sleep(3.0)
    stop.set()
    thread.join()
    return f"failed calls {dict(failed) or 0} of {dict(made)}"


def restart(args: argparse.Namespace) -> None:
    from tests.servers import Postgres

    pg = Postgres(Path(tempfile.mkdtemp(prefix="sparsehead-bench-pg-")))
    pg.init()
    try:
        for mode in ("pool_pre_ping alone", "connections wait", "pipeline retries"):
            print(f"restart {mode}: {args.restarts} restarts (fast shutdown, 2 s down): "
                  f"{_calls_through_restarts(pg, mode, args.restarts)}")
    finally:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("budget")
    b.add_argument("--workers", type=int, default=3)
    b.add_argument("--n-trials", type=int, default=4)
    b.add_argument("--repeats", type=int, default=5)
    w = sub.add_parser("writers")
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--trials", type=int, default=100)
    r = sub.add_parser("restart")
    r.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    {"budget": budget, "writers": writers, "restart": restart}[args.what](args)


if __name__ == "__main__":
    main()
