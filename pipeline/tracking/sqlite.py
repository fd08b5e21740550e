"""Several processes opening one embedded MLflow store (``sqlite:///mlflow.db``) at once.

Two queued experiments (``dvc queue start -j 2``) log into the project's ``mlflow.db`` together. What
``bench/mlflow_sqlite_writers.py`` measured (README, "Experiments"): MLflow creates and migrates a new
store's tables in whichever process opens it first, and processes that open a new (or older-schema) store
together collide ("table runs already exists", alembic's "expected to match one row"); once the tables
exist, concurrent runs, metrics, artifacts and registrations all succeed (MLflow's 20 s busy timeout).
So the first opening of a SQLite store in a process holds an ``flock`` on ``<db>.lock`` beside it.
Making every transaction ``BEGIN IMMEDIATE`` instead was measured too: MLflow holds two connections at
once while it initialises a store, and one process then waits on itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; several processes on a new store are then left to MLflow
    fcntl = None  # type: ignore[assignment]


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(os.path.abspath(path))


@contextlib.contextmanager
def opening(uri: str) -> Iterator[None]:
    """Hold the store's lock file while the caller opens it (MLflow creates or migrates its tables then).

    Args:
        uri: The tracking URI; anything but a ``sqlite:///`` file is not locked.

    Yields:
        Nothing; the lock is held inside the ``with`` block.
    """
    path = sqlite_file(uri)
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
