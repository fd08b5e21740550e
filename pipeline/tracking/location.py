"""Where an experiment's artifacts go: a location that follows the server or the project, never the
absolute path of the machine that happened to create the experiment.

- A tracking server (``http(s)://``) chooses: with ``mlflow server --artifacts-destination`` that is
  ``mlflow-artifacts:/...``, proxied by the server, so clients need no access to the store behind it.
- A local store (``sqlite:///mlflow.db``, itself relative to the project) with a relative
  ``tracking.artifact_root`` keeps that relative path: runs write under ``<project>/mlartifacts`` of
  whichever copy of the project runs them (stages, DVC and the service run from the project's root).
  MLflow makes every location absolute when it creates an experiment, so the relative one is written
  into the store after; an experiment that an older version of this code (or a copy of the project in
  another folder) created with ``file:///<elsewhere>/mlartifacts`` is re-pointed the same way. Runs
  logged before keep their own artifact URIs.
- An absolute ``tracking.artifact_root`` is taken as given.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from mlflow.entities import Experiment

from pipeline.config import TrackingConfig

log = logging.getLogger(__name__)


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def relative_root(cfg: TrackingConfig) -> str | None:
    """``tracking.artifact_root`` when it is a relative path (the portable case), else None."""
    root = cfg.artifact_root
    if "://" in root or Path(root).is_absolute():
        return None
    return PurePosixPath(Path(root).as_posix()).as_posix()


def creation_location(cfg: TrackingConfig, uri: str) -> str | None:
    """What to pass to ``create_experiment``: None lets a server decide; a local store gets the artifact
    root (MLflow makes it absolute; :func:`make_portable` then stores a relative root as given)."""
    return Path(cfg.artifact_root).resolve().as_uri() if is_local(uri) else None


def _same_layout(location: str, rel: str) -> bool:
    """Whether ``location`` is a local path ending in ``rel``: the same project layout in another folder."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    path = PurePosixPath(parsed.path if parsed.scheme == "file" else location)
    return path.is_absolute() and path.parts[-len(PurePosixPath(rel).parts):] == PurePosixPath(rel).parts


def make_portable(uri: str, exp: Experiment, cfg: TrackingConfig) -> None:
    """Give a local store's experiment the project-relative location (see the module docstring)."""
    rel = relative_root(cfg)
    if rel is None or not is_local(uri) or exp.artifact_location == rel:
        return
    if not _same_layout(exp.artifact_location, rel):
        return  # a location someone chose on purpose (s3://, another folder layout): leave it
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(uri)
    if not isinstance(store, SqlAlchemyStore):
        return  # a file store keeps MLflow's own absolute location
    with store.ManagedSessionMaker(read_only=False) as session:
        session.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(exp.experiment_id)).update(
            {SqlExperiment.artifact_location: rel})
    log.info("experiment %s: artifact location %s -> %s (relative to the project)", exp.name,
             exp.artifact_location, rel)
