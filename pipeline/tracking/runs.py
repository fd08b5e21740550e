"""MLflow set-up and the hand-off of runs between stages.

The embedded default is ``sqlite:///mlflow.db`` with artifacts under ``mlartifacts/``, both in the
project's root wherever DVC runs the stage; ``MLFLOW_TRACKING_URI`` points every stage at a tracking
server instead. A stage that starts a run writes its id to a small file; later stages read it and log
into the same run, so one MLflow run holds the whole story of a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.errors import UserError
from pipeline.io import write_text
from pipeline.stores import project_location
from pipeline.tracking.lineage import lineage_tags
from pipeline.tracking.location import artifact_location, repoint
from pipeline.tracking.sqlite import opening

log = logging.getLogger(__name__)

RUN_ID_FILE = "run_id"  # beside a model: the id of the MLflow run that trained it
# The process that holds a run open, so that the next run of its stage can tell a run whose process was
# killed (closed as KILLED) from one still running (left alone).
HOST_TAG, PID_TAG = "host", "pid"


def tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking (and registry) URI: ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri``, a relative
    local store anchored at the project's root (:func:`anchored_uri`)."""
    return anchored_uri(os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri)


def anchored_uri(uri: str, root: str | Path | None = None) -> str:
    """A tracking URI with a relative local store made absolute under the project's root.

    Args:
        uri: a tracking URI as params.yaml or ``MLFLOW_TRACKING_URI`` gives it.
        root: the project's root (default: :func:`pipeline.stores.project_root`).

    Returns:
        The URI, anchored (a server or ``databricks`` URI unchanged).
    """
    return uri if uri.startswith("databricks") else project_location(uri, root)


def setup(cfg: TrackingConfig, experiment: str | None = None) -> str:
    """Point MLflow at the configured store and return the experiment's id, creating it if needed.

    Args:
        cfg: The tracking section of the params.
        experiment: The experiment's name (default: ``tracking.experiment``).

    Returns:
        The experiment's id.

    Raises:
        mlflow.exceptions.MlflowException: The store cannot be used or the experiment cannot be created.
    """
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = experiment or cfg.experiment
    bound_http_retries(cfg.http_retries, cfg.http_timeout_s)
    with opening(uri):  # another process may be creating the same new store: see .sqlite
        client = MlflowClient()  # opens the store: MLflow creates or migrates its tables here
        exp = client.get_experiment_by_name(name)
        if exp is None:
            # A server decides its own artifact store; a local store's is the project's (see .location).
            # MlflowException: another worker created it between our lookup and our create.
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.create_experiment(name, artifact_location=artifact_location(cfg, uri))
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise mlflow.exceptions.MlflowException(f"experiment {name!r}: could not create it in {uri}")
        repoint(uri, exp, cfg)
    return exp.experiment_id


def bound_http_retries(retries: int, timeout_s: float, env: MutableMapping[str, str] = os.environ) -> None:
    """Bound MLflow's HTTP retries for this process (its defaults retry a dead server 7 times with
    exponential back-off, minutes in all): a call to a server that is down fails after ``retries``
    retries (1, 2, 4, ... s apart) or ``timeout_s``. MLflow reads these at each request; the operator's
    own environment variables, when set, win. The stages pass ``tracking.http_retries`` and
    ``http_timeout_s`` (their epoch logger keeps what failed and sends it later); the service its own."""
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def write_run_id(path: str | Path, run_id: str) -> None:
    write_text(path, run_id + "\n")


def read_run_id(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run id file not found (run the stage that trains this model first)")
    run_id = path.read_text().strip()
    if not run_id:
        raise UserError(f"{path}: run id file is empty")
    return run_id


@contextmanager
def start_run(cfg: TrackingConfig, *, run_id: str | None = None, run_name: str | None = None,
              nested: bool = False, tags: dict[str, str] | None = None,
              experiment: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with ``run_id``, resume) a run in the configured experiment.

    ``tracking.system_metrics`` samples CPU, memory, disk, network and GPU into the run's system/*
    metrics while it is open; off, MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING still decides.
    """
    exp_id = setup(cfg, experiment)
    kwargs = {"run_id": run_id} if run_id else {"experiment_id": exp_id, "run_name": run_name}
    # A new run says which DVC experiment it belongs to; a resumed one keeps what it was created with.
    # The process holding the run open: see close_orphaned_runs.
    tags = {**({} if run_id else lineage_tags()), **(tags or {}), HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid())}
    with mlflow.start_run(nested=nested, tags=tags, log_system_metrics=cfg.system_metrics or None,
                          **kwargs) as run:
        yield run


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has this id (signal 0 tests it without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def close_orphaned_runs(cfg: TrackingConfig, stage: str, keep: str | None = None) -> list[str]:
    """Close as KILLED the runs of ``stage`` left RUNNING by a process of this host that is gone.

    A stage killed mid-run (SIGKILL, out of memory, a power cut) cannot end its run; the next run of the
    stage does. Runs of other hosts, runs without the process tags, runs whose process lives, and ``keep``
    (the run about to be resumed) are left alone. Returns the ids closed.
    """
    exp_id = setup(cfg)
    client = MlflowClient()
    host, me = socket.gethostname(), os.getpid()
    closed = []
    query = f"tags.stage = '{stage}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([exp_id], filter_string=query):
        pid = run.data.tags.get(PID_TAG, "")
        if (run.info.run_id == keep or run.data.tags.get(HOST_TAG) != host or not pid.isdigit()
                or int(pid) == me or pid_alive(int(pid))):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("MLflow run %s (%s) was left RUNNING by process %s, which is gone: closed as KILLED",
                    run.info.run_id, stage, pid)
        closed.append(run.info.run_id)
    return closed


def finite_metrics(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """The finite numeric entries of ``metrics``, keys prefixed; MLflow rejects NaN in some stores."""
    clean = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or v in (float("inf"), float("-inf")):
            log.warning("metric %s is not finite (%s); not logged", k, v)
            continue
        clean[f"{prefix}{k}"] = float(v)
    return clean


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log the finite numeric entries of ``metrics`` into the active run."""
    clean = finite_metrics(metrics, prefix)
    if clean:
        mlflow.log_metrics(clean, step=step)
