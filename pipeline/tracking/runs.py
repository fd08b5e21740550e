"""MLflow set-up and the hand-off of runs between stages.

The embedded default is ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/``;
``MLFLOW_TRACKING_URI`` points every stage at a tracking server instead. A stage that starts a run
writes its id to a small file; later stages read it and log into the same run, so one MLflow run holds
the whole story of a model.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.io import write_text

log = logging.getLogger(__name__)

RUN_ID_FILE = "run_id"  # beside a model: the id of the MLflow run that trained it


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def setup(cfg: TrackingConfig, experiment: str | None = None) -> str:
    """Point MLflow at the configured store and return the experiment's id, creating it if needed."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = experiment or cfg.experiment
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # A server decides its own artifact store; locally, keep artifacts in one predictable folder.
    location = Path(cfg.artifact_root).resolve().as_uri() if _is_local(uri) else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another worker created it between our lookup and our create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_run_id(path: str | Path, run_id: str) -> None:
    write_text(path, run_id + "\n")


def read_run_id(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run id file not found (run the stage that trains this model first)")
    run_id = path.read_text().strip()
    if not run_id:
        raise ValueError(f"{path}: run id file is empty")
    return run_id


@contextmanager
def start_run(cfg: TrackingConfig, *, run_id: str | None = None, run_name: str | None = None,
              nested: bool = False, tags: dict[str, str] | None = None,
              experiment: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, resume) a run in the configured experiment."""
    exp_id = setup(cfg, experiment)
    kwargs = {"run_id": run_id} if run_id else {"experiment_id": exp_id, "run_name": run_name}
    with mlflow.start_run(nested=nested, tags=tags, **kwargs) as run:
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log the finite numeric entries of ``metrics``; MLflow rejects NaN in some stores."""
    clean = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or v in (float("inf"), float("-inf")):
            log.warning("metric %s is not finite (%s); not logged", k, v)
            continue
        clean[f"{prefix}{k}"] = float(v)
    if clean:
        mlflow.log_metrics(clean, step=step)
