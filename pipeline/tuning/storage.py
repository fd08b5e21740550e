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
trial each.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from pipeline.config import TuneConfig

try:
    import fcntl
except ImportError:  # Windows: no flock; the budget falls back to best effort
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_VAR = "OPTUNA_STORAGE"
JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"


def storage_url(cfg: TuneConfig) -> str:
    """The configured storage; ``OPTUNA_STORAGE`` overrides ``tune.storage``."""
    url = (os.environ.get(ENV_VAR) or cfg.storage).strip()
    if not url:
        raise ValueError(f"tune.storage (or {ENV_VAR}) is empty")
    return url


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage, or None for a network database."""
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise ValueError(f"storage {url!r}: a journal storage needs a file path (journal:optuna.journal)")
        return Path(path)
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        return None if path in ("", ":memory:") else Path(path)
    return None


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring for the forms it takes)."""
    path = local_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage {url!r}: expected sqlite:///<file>, journal:<file> or a database URL "
                         "such as postgresql://user:password@host/db")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except (ImportError, ModuleNotFoundError) as exc:
        raise ValueError(f"storage {redact(url)}: its database driver is not installed ({exc})") from exc
    except optuna.exceptions.StorageInternalError as exc:
        raise ValueError(f"storage {redact(url)}: cannot open it ({exc})") from exc


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


class BudgetLock:
    """An exclusive ``flock`` on ``<storage file>.budget.lock``, held while a worker checks the budget and
    creates its next trial (or creates the study's baseline and MLflow parent run).

    For a network database (no local file) or where ``fcntl`` is missing, it is a no-op.
    """

    def __init__(self, url: str) -> None:
        path = local_file(url)
        # Not "<file>.lock": Optuna's journal takes that name for its own symlink lock.
        self.path = path.with_name(path.name + ".budget.lock") if path is not None and fcntl is not None else None
        self._fd: int | None = None

    @property
    def exact(self) -> bool:
        return self.path is not None

    def __enter__(self) -> BudgetLock:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
