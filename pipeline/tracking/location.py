"""Where an experiment's artifacts go: a server's own store, or the project's ``mlartifacts/`` by absolute path.

- A tracking server (``http(s)://``) chooses: with ``mlflow server --artifacts-destination`` that is
  ``mlflow-artifacts:/...``, proxied by the server, so clients need no access to the store behind it.
- A local store with a relative ``tracking.artifact_root`` keeps its artifacts in the project's root
  (:func:`pipeline.stores.project_location`), wherever DVC runs the stage, as an absolute ``file://``
  location: a run's artifact URIs then resolve from any folder, so ``models:/name@alias`` loads anywhere
  given the tracking URI. An experiment whose location is that layout in another folder (the project was
  copied or moved) or relative (what earlier versions stored) is re-pointed at this project's folder.
- An absolute ``tracking.artifact_root`` (or a URI) is taken as given.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import sqlalchemy
from mlflow.entities import Experiment

from pipeline.config import TrackingConfig
from pipeline.stores import project_location

log = logging.getLogger(__name__)


def is_local(uri: str) -> bool:
    """Whether the tracking URI names a store on this machine (SQLite or a folder), not a server."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _relative_root(cfg: TrackingConfig) -> PurePosixPath | None:
    """``tracking.artifact_root`` when it is a relative path (inside the project), else None."""
    root = cfg.artifact_root
    if "://" in root or root.startswith("file:") or Path(root).is_absolute():
        return None
    return PurePosixPath(Path(root).as_posix())


def artifact_location(cfg: TrackingConfig, uri: str) -> str | None:
    """What to pass to ``create_experiment``: None lets a server decide; a local store gets the artifact
    root, anchored at the project's root when relative, as a ``file://`` URI.

    Args:
        cfg: The tracking section of the params.
        uri: The tracking URI in use.

    Returns:
        The artifact location, or None for a server.
    """
    if not is_local(uri):
        return None
    root = project_location(cfg.artifact_root)
    return root if "://" in root else Path(root).resolve().as_uri()


def _local_path(location: str) -> PurePosixPath | None:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return PurePosixPath(unquote(parsed.path))
    return PurePosixPath(location) if parsed.scheme == "" else None


def repoint(uri: str, exp: Experiment, cfg: TrackingConfig) -> str:
    """Give a local SQLite store's experiment this project's artifact folder (see the module docstring).

    Args:
        uri: The tracking URI (only ``sqlite:`` stores are changed).
        exp: The experiment as the store holds it.
        cfg: The tracking section of the params.

    Returns:
        The experiment's artifact location after the call.
    """
    rel, want = _relative_root(cfg), artifact_location(cfg, uri)
    current = exp.artifact_location
    path = _local_path(current)
    if rel is None or want is None or current == want or path is None or not uri.startswith("sqlite:"):
        return current
    moved = path.is_absolute() and path.parts[-len(rel.parts):] == rel.parts
    if not (moved or path == rel):
        return current  # a location someone chose on purpose (s3://, another folder layout): leave it
    # MLflow has no call that changes an experiment's location: one UPDATE of its documented table.
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE experiments SET artifact_location = :loc WHERE experiment_id = :id"),
                         {"loc": want, "id": int(exp.experiment_id)})
    finally:
        engine.dispose()
    log.info("experiment %s: artifact location %s -> %s (this project's folder)", exp.name, current, want)
    return want
