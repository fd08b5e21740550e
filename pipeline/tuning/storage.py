"""Where a study lives: the storage URL, opened with Optuna's heartbeat, and retries across a database restart.

``OPTUNA_STORAGE`` (else ``tune.storage``) is ``sqlite:///<file>`` (the default), ``journal:<file>``
(Optuna's file journal) or any SQLAlchemy URL such as ``postgresql+psycopg2://user:pw@host/db``. The README
("Tuning lambda", "Past one machine") says which to use when.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from pipeline.config import TuneConfig
from pipeline.errors import UserError
from pipeline.stores import project_location

log = logging.getLogger(__name__)

ENV_VAR = "OPTUNA_STORAGE"
JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"
# SQLite's busy timeout: a writer waits this long for another's lock. Two workers writing at once never
# met it (the measurement is in the README, "Tuning lambda").
SQLITE_TIMEOUT_S = 60

StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
T = TypeVar("T")


def configured_url(cfg: TuneConfig) -> str:
    """The storage as configured: ``OPTUNA_STORAGE`` if set, else ``tune.storage`` (relative paths kept).

    Raises:
        UserError: Both are empty.
    """
    url = (os.environ.get(ENV_VAR) or cfg.storage).strip()
    if not url:
        raise UserError(f"tune.storage (or {ENV_VAR}) is empty")
    return url


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage as written in ``url``; None for a database server.

    Raises:
        UserError: A ``journal:`` URL without a path.
    """
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise UserError(f"storage {url!r}: a journal storage needs a file path (journal:optuna.journal)")
        return Path(path)
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        return None if path in ("", ":memory:") else Path(path)
    return None


def storage_url(cfg: TuneConfig) -> str:
    """The configured storage; a relative SQLite or journal file is the project's, wherever DVC runs the
    stage (:func:`pipeline.stores.project_location`: queued and ``--temp`` experiments run in a copy)."""
    return project_location(configured_url(cfg))


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def open_storage(url: str, cfg: TuneConfig | None = None, on_stale: StaleCallback | None = None) -> BaseStorage:
    """An Optuna storage for ``url``.

    Args:
        url: ``sqlite:///<file>``, ``journal:<file>`` or a database URL.
        cfg: For a worker: a database server gets Optuna's heartbeat (``tune.heartbeat_s``, ``tune.grace_s``)
            and retries for ``tune.storage_retry_s``. None: a plain storage, enough to read.
        on_stale: Called by Optuna for each trial it fails because its heartbeat went silent.

    Returns:
        The storage (``RDBStorage``, :class:`RetryingRDBStorage` or ``JournalStorage``).

    Raises:
        UserError: An unknown form, a missing database driver, or a database that cannot be opened.
    """
    path = local_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise UserError(f"storage {url!r}: expected sqlite:///<file>, journal:<file> or a database URL "
                         "such as postgresql+psycopg2://user:password@host/db")
    cls: type[RDBStorage] = RDBStorage
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        # One host: a dead worker's trial is found by its process id (pipeline.tuning.recovery), which also
        # sees trials that never beat; no heartbeat.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        # A pooled connection that a database restart closed is replaced instead of failing its next call.
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if cfg is not None:
            cls = RetryingRDBStorage
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
    if isinstance(storage, RetryingRDBStorage) and cfg is not None:
        storage.retry_s = cfg.storage_retry_s
    return storage


# What a lost connection (or a locked SQLite file) looks like through Optuna, which wraps SQLAlchemy's
# errors, or straight from SQLAlchemy.
TRANSIENT = (optuna.exceptions.StorageInternalError, sa_exc.OperationalError, sa_exc.InterfaceError)


def retry_transient(call: Callable[[], T], what: str, retry_s: float) -> T:
    """``call()``, retried while it fails with a :data:`TRANSIENT` error, for up to ``retry_s`` seconds.

    Args:
        call: The storage call; it must be safe to repeat.
        what: Names the call in the log line of each retry.
        retry_s: The time allowed; pauses grow from 0.5 s to 5 s.

    Returns:
        What ``call`` returns.

    Raises:
        The last error, once ``retry_s`` has passed.
    """
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


class RetryingRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls wait out a database restart (:func:`retry_transient`, ``retry_s``).

    Measured (``python -m bench.tune_storage restart --restarts 10``: a loop of a trial's write, its heartbeat
    and a read while PostgreSQL stops for 2 s ten times): with ``pool_pre_ping`` alone 2304 of 3351 calls
    failed (every call made while the server was away); with connections that wait for the server, 8 of 489
    (calls cut in flight); with these retries, 0 of 402. Optuna retries nothing, so every method of its
    storage interface, and the heartbeat, is retried here. Its trial cache reads through methods outside
    that interface: those reads are retried where pipeline calls them (:func:`retry_transient`).

    A write whose commit reached the server just before the connection dropped is repeated too: a finished
    trial then answers ``UpdateFinishedTrialError``, which the worker handles.
    """

    retry_s: float = 120.0


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(lambda: method(self, *args, **kwargs), f"optuna storage {name}", self.retry_s)

    return call


# Optuna's documented storage interface (BaseStorage's abstract methods) and the heartbeat's one write.
for _name in sorted(BaseStorage.__abstractmethods__ | {"record_heartbeat"}):
    setattr(RetryingRDBStorage, _name, _retrying(_name))


def redact(url: str) -> str:
    """``url`` without its password, for logs, MLflow params and output files."""
    if "://" not in url or "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: drop everything between scheme and host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
