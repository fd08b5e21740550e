"""Where a study lives, and the lock that lets several processes share its trial budget.

``tune.storage`` (or the ``OPTUNA_STORAGE`` environment variable, which wins) is one of

- ``sqlite:///optuna.db``: the default; one process at a time (SQLite serialises writers and may
  answer "database is locked" under several).
- ``journal:<path>``: Optuna's append-only file journal
  (``JournalStorage(JournalFileBackend(path))``): several processes on one machine (or on a shared
  file system that honours ``flock``).
- any other SQLAlchemy URL, e.g. ``postgresql://user:pw@host/optuna``: many machines.

Optuna has no "create a trial only if fewer than n exist", so two workers checking the budget at the
same moment could both start one. :class:`BudgetLock` closes that window with an ``flock`` on a file
beside a local storage (SQLite file or journal), which makes the study's trial count exact for any
number of processes on one machine. A network database has no such file: there the count is checked
right before each trial, and workers that ask in the same instant can overshoot by at most one
trial each; PostgreSQL has one: a session advisory lock, keyed by the study, makes the count exact for
workers on any number of hosts (the server drops the lock of a worker that dies).

A network database is opened with Optuna's heartbeat (``tune.heartbeat_s``, ``tune.grace_s``): a running
trial whose worker stopped beating (killed, out of memory, its host gone) is failed by the next worker
that looks, and its failed-trial callback queues it again with the same params. Its connections are
checked before use (``pool_pre_ping``), and a storage call that finds the database gone (a restart, a
fail-over) is retried for up to ``tune.storage_retry_s`` seconds before it gives up.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import exc as sa_exc

from pipeline.config import TuneConfig
from pipeline.errors import UserError
from pipeline.stores import project_location

try:
    import fcntl
except ImportError:  # Windows: no flock; the budget falls back to best effort
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_VAR = "OPTUNA_STORAGE"
JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"


def storage_url(cfg: TuneConfig) -> str:
    """The configured storage; ``OPTUNA_STORAGE`` overrides ``tune.storage``. A relative SQLite or journal
    file is the project's, wherever DVC runs the stage (:func:`pipeline.stores.project_location`)."""
    url = (os.environ.get(ENV_VAR) or cfg.storage).strip()
    if not url:
        raise UserError(f"tune.storage (or {ENV_VAR}) is empty")
    return project_location(url)


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage, or None for a network database."""
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise UserError(f"storage {url!r}: a journal storage needs a file path (journal:optuna.journal)")
        return Path(path)
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        return None if path in ("", ":memory:") else Path(path)
    return None


StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(url: str, cfg: TuneConfig | None = None, on_stale: StaleCallback | None = None) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring for the forms it takes).

    With ``cfg``, a network database gets its heartbeat, ``on_stale`` (called for each trial failed for
    a silent heartbeat; Optuna's RetryFailedTrialCallback re-queues it) and its retries; without, a
    plain storage (enough to read a study).
    """
    path = local_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise UserError(f"storage {url!r}: expected sqlite:///<file>, journal:<file> or a database URL "
                         "such as postgresql://user:password@host/db")
    sqlite = url.startswith("sqlite:")
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}} if sqlite else {}}
    cls: type[RDBStorage] = RDBStorage
    if not sqlite:
        # A pooled connection that a database restart closed is replaced instead of failing the next call.
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if cfg is not None:
            cls = ResilientRDBStorage
            kwargs.update(heartbeat_interval=cfg.heartbeat_s, grace_period=cfg.grace_s,
                          heartbeat_stale_trial_callback=on_stale)
    try:
        with warnings.catch_warnings():  # the heartbeat arguments are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = cls(url, **kwargs)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"storage {redact(url)}: its database driver is not installed ({exc})") from exc
    except (optuna.exceptions.StorageInternalError, sa_exc.OperationalError) as exc:
        raise UserError(f"storage {redact(url)}: cannot open it ({exc})") from exc
    if isinstance(storage, ResilientRDBStorage) and cfg is not None:
        storage.retry_s = cfg.storage_retry_s
    return storage


# What a lost connection looks like through Optuna (it wraps SQLAlchemy's errors) or straight from SQLAlchemy.
TRANSIENT = (optuna.exceptions.StorageInternalError, sa_exc.OperationalError, sa_exc.InterfaceError)


def retry_transient(call: Callable[[], Any], what: str, retry_s: float) -> Any:
    """``call()``, retried with a growing pause (0.5 s to 5 s) while it fails with a TRANSIENT error, for up
    to ``retry_s`` seconds; the last error propagates."""
    deadline = time.monotonic() + retry_s
    pause = 0.5
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database did not answer (%s); retrying in %.1f s", what,
                        type(exc.__cause__ or exc).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class ResilientRDBStorage(RDBStorage):
    """RDBStorage whose data calls outlive a database restart (see :func:`retry_transient`).

    A call whose commit reached the server just before the connection dropped is retried too: an
    already-finished trial then answers UpdateFinishedTrialError, which callers already handle.
    """

    retry_s: float = 60.0


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(lambda: method(self, *args, **kwargs), f"optuna storage {name}", self.retry_s)

    return call


# Every data call (not the configuration getters, which touch no database, nor schema upgrades).
_NO_RETRY = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback",
             "remove_session", "upgrade", "get_current_version", "get_head_version", "get_all_versions"}
for _name, _value in list(vars(RDBStorage).items()):
    # _get_trials: what the trial cache behind study.get_trials calls, the one private read outside callers.
    if callable(_value) and (not _name.startswith("_") or _name in ("_get_stale_trial_ids", "_get_trials")) \
            and _name not in _NO_RETRY:
        setattr(ResilientRDBStorage, _name, _retrying(_name))


def redact(url: str) -> str:
    """The URL without its password, for logs and MLflow params."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: drop everything between scheme and host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


class BudgetLock:
    """An exclusive lock held while a worker checks the budget and creates its next trial (or creates the
    study's baseline and MLflow parent run).

    A local storage: ``flock`` on ``<storage file>.budget.lock``. PostgreSQL: a session advisory lock keyed
    by ``key`` (the study's name), held on a connection of its own. Any other database (or no ``fcntl``):
    a no-op.
    """

    def __init__(self, url: str, key: str = "", retry_s: float = 60.0) -> None:
        path = local_file(url)
        # Not "<file>.lock": Optuna's journal takes that name for its own symlink lock.
        self.path = path.with_name(path.name + ".budget.lock") if path is not None and fcntl is not None else None
        self._fd: int | None = None
        self._pg_url = url if _is_postgres(url) else None
        # pg_advisory_lock takes a signed 64-bit key.
        self._pg_key = int.from_bytes(hashlib.sha256(f"sparsehead-budget:{key}".encode()).digest()[:8],
                                      "big", signed=True)
        self._retry_s = retry_s
        self._engine: Any = None
        self._conn: Any = None

    @property
    def exact(self) -> bool:
        return self.path is not None or self._pg_url is not None

    def __enter__(self) -> BudgetLock:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        elif self._pg_url is not None:
            retry_transient(self._pg_lock, "budget lock", self._retry_s)
        return self

    def _pg_lock(self) -> None:
        import sqlalchemy

        if self._engine is None:
            # No pool: a connection cut by a database restart is never handed out again.
            self._engine = sqlalchemy.create_engine(self._pg_url, poolclass=sqlalchemy.pool.NullPool)
        conn = self._engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._pg_key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._pg_key})
            except sa_exc.SQLAlchemyError as err:  # the session is gone, and its lock with it
                log.warning("budget lock: unlock failed (%s); the server released it with the session", err)
            finally:
                self._conn.close()
                self._conn = None
