"""The study's trial budget, exact across workers: a lock held from counting the trials to creating the next.

Optuna's ``MaxTrialsCallback`` counts after each trial, so workers that ask at the same moment each create
one. Measured (``python -m bench.tune_storage budget``: 3 workers, ``tune.n_trials`` 4, the budget's states
counted, 5 repeats): with ``MaxTrialsCallback`` the study ended with 4 or 5 trials on SQLite and 4 to 6 on a
journal, and a rerun of the finished study added 3 (one a worker) every time; with :class:`BudgetGate`, 4
and 4 every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from pipeline.tuning.storage import local_file, redact, retry_transient
from pipeline.tuning.study import count_trials

try:
    import fcntl
except ImportError:  # Windows: no flock; the budget is then best effort
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


class BudgetLock:
    """An exclusive lock shared by every worker of one study, on one host or many.

    A local storage: ``flock`` on ``<storage file>.budget.lock``. PostgreSQL: a session advisory lock keyed
    by the study, held on a connection of its own (the server drops a dead worker's lock with its session).
    Any other database (or no ``fcntl``): no lock, and :attr:`exact` is False.

    Args:
        url: The storage URL, with a local file's path as the workers open it.
        key: What the lock is for (the study's name).
        retry_s: How long taking the PostgreSQL lock waits out a database restart.
    """

    def __init__(self, url: str, key: str = "", retry_s: float = 60.0) -> None:
        path = local_file(url)
        # Not "<file>.lock": Optuna's journal takes that name for its own lock.
        self.path = path.with_name(path.name + ".budget.lock") if path is not None and fcntl is not None else None
        self.pg_url = url if _is_postgres(url) else None
        # pg_advisory_lock takes a signed 64-bit key.
        self.pg_key = int.from_bytes(hashlib.sha256(f"sparsehead-budget:{key}".encode()).digest()[:8],
                                     "big", signed=True)
        self.retry_s = retry_s
        self.fd: int | None = None
        self.engine: sqlalchemy.engine.Engine | None = None
        self.conn: sqlalchemy.engine.Connection | None = None

    @property
    def exact(self) -> bool:
        """Whether the lock really excludes other workers."""
        return self.path is not None or self.pg_url is not None

    @property
    def held(self) -> bool:
        return self.fd is not None or self.conn is not None

    def acquire(self) -> None:
        """Block until this worker holds the lock (a no-op when already held or when there is none)."""
        if self.held:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        elif self.pg_url is not None:
            retry_transient(self._pg_lock, "budget lock", self.retry_s)

    def _pg_lock(self) -> None:
        if self.engine is None:
            # No pool: a connection cut by a database restart is never handed out again.
            self.engine = sqlalchemy.create_engine(str(self.pg_url), poolclass=sqlalchemy.pool.NullPool)
        conn = self.engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.pg_key})
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def release(self) -> None:
        """Let the next worker in (a no-op when not held)."""
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.conn is not None:
            try:
                self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.pg_key})
            except sqlalchemy.exc.SQLAlchemyError as err:  # the session is gone, and its lock with it
                log.warning("budget lock: unlock failed (%s); the server released it with the session", err)
            finally:
                self.conn.close()
                self.conn = None

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class BudgetGate:
    """Admits a worker to its next trial while the study's budget has room, one worker at a time.

    :meth:`admit` counts under the :class:`BudgetLock` and, when it admits, keeps the lock held while
    ``study.optimize`` asks for the trial; the objective's first line calls :meth:`entered`, which lets
    the next worker count. Passed to ``study.optimize`` as its callback, the gate admits the next trial or
    stops the study.

    Args:
        lock: The study's lock.
        n_trials: The budget: complete, pruned, running and waiting trials count; failed ones do not.
        poll_s: With a heartbeat (None: without), a worker whose budget is taken stays while other trials
            run, polling every ``poll_s`` seconds, so that it can redo one whose worker died.
        on_poll: Called under the lock before each count (fails the trials of dead workers).
        deadline: ``time.monotonic()`` after which no new trial is admitted (``tune.timeout_s``).
        retry_s: How long a count waits out a database restart.
    """

    def __init__(self, lock: BudgetLock, n_trials: int, *, poll_s: float | None = None,
                 on_poll: Callable[[optuna.Study], Any] | None = None, deadline: float | None = None,
                 retry_s: float = 0.0) -> None:
        self.lock, self.n_trials, self.poll_s = lock, n_trials, poll_s
        self.on_poll, self.deadline, self.retry_s = on_poll, deadline, retry_s

    def admit(self, study: optuna.Study) -> bool:
        """Whether this worker may start a trial; when True, the lock stays held until :meth:`entered`."""
        while self.deadline is None or time.monotonic() < self.deadline:
            self.lock.acquire()
            if self.on_poll is not None:
                self.on_poll(study)
            counts = retry_transient(lambda: count_trials(study), "budget count", self.retry_s)
            # A waiting trial (a baseline, a dead worker's retried trial) is already in the budget.
            if counts.waiting or counts.used < self.n_trials:
                return True
            self.lock.release()
            if self.poll_s is None or counts.running == 0:
                return False
            time.sleep(self.poll_s)
        self.lock.release()
        return False

    def entered(self) -> None:
        """The admitted trial exists: let the next worker count."""
        self.lock.release()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.admit(study):
            study.stop()

    def log_inexact(self, url: str) -> None:
        if not self.lock.exact:
            log.info("storage %s has no budget lock: workers may overshoot the budget by one trial each",
                     redact(url))

