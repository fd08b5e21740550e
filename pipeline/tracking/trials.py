"""MLflow records of a study: one parent run for the study, one nested run per trial.

The parent's id lives in the study's user attributes, so every worker process (and every rerun)
nests its trial runs under the same parent. Each worker resumes the parent and opens its trial
runs with ``mlflow.start_run(nested=True)``, which sets ``mlflow.parentRunId``. A trial run ends as
FINISHED (complete), KILLED (pruned) or FAILED, and its tag ``optuna.state`` says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params, flat_params

PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute
RUN_ATTR = "mlflow_run_id"  # trial user attribute
STATE_TAG = "optuna.state"
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def ensure_parent_run(study: optuna.Study, params: Params, storage: str, dataset_sha256: str) -> str:
    """The study's parent run id, creating the run (and recording it in the study) on first use.

    Call under the study's budget lock, so that workers starting together create one parent.
    A recorded id that the tracking store does not know (a fresh ``mlflow.db``) is replaced.
    """
    exp_id = tracking.setup(params.tracking)
    client = MlflowClient()
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id and _exists(client, run_id):
        return str(run_id)
    run = client.create_run(exp_id, run_name=f"tune {study.study_name}", tags={
        "stage": "tune", STUDY_TAG: study.study_name, "optuna.storage": storage,
        "git_commit": tracking.git_commit(), "dataset_sha256": dataset_sha256, **tracking.lineage_tags(),
    })
    pid = run.info.run_id
    logged = {**flat_params(params.tune, "tune."), **flat_params(params.pretrain, "pretrain."),
              "seed": params.seed, "study": study.study_name}
    logged["tune.storage"] = storage
    logged.pop("pretrain.sparsehead.lambda", None)  # searched, not fixed
    items = [Param(k, str(v)[:6000]) for k, v in logged.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(pid, params=items[i:i + 100])
    client.set_terminated(pid, "FINISHED")
    study.set_user_attr(PARENT_ATTR, pid)
    return pid


@contextmanager
def parent_run(params: Params, run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Resume the parent for this worker's trials; it ends FINISHED (or FAILED if the worker crashes)."""
    with tracking.start_run(params.tracking, run_id=run_id) as run:
        yield run


@contextmanager
def trial_run(study_name: str, trial: optuna.Trial, tags: dict[str, str] | None = None,
              system_metrics: bool = False) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one trial, ended with the status that matches how the trial ended."""
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("trial_run needs the study's parent run to be active (parent_run)")
    # The parent's experiment, explicitly: a nested run otherwise goes to the *default* experiment.
    run = mlflow.start_run(run_name=f"trial {trial.number:03d}", nested=True,
                           experiment_id=parent.info.experiment_id,
                           tags={STUDY_TAG: study_name, TRIAL_TAG: str(trial.number), STATE_TAG: "RUNNING",
                                 **tracking.lineage_tags(), **(tags or {})},
                           log_system_metrics=system_metrics or None)
    trial.set_user_attr(RUN_ATTR, run.info.run_id)
    try:
        yield run
    except optuna.TrialPruned:
        _end(run, "PRUNED")
        raise
    except BaseException as exc:
        mlflow.set_tag("error", repr(exc)[:1000])
        _end(run, "FAIL")
        raise
    else:
        _end(run, "COMPLETE")


def _end(run: mlflow.ActiveRun, state: str) -> None:
    mlflow.set_tag(STATE_TAG, state)
    mlflow.end_run(RUN_STATUS[state])


def mark_failed(run_id: str | None, reason: str, *, only_if: str | None = None) -> None:
    """Close the MLflow run of a trial that was failed from outside (its worker died).

    Args:
        run_id: The trial's run (None or empty: nothing to do).
        reason: The run's ``error`` tag.
        only_if: Change the run only when its status is this one (None: whatever it is).
    """
    if not run_id:
        return
    client = MlflowClient()
    if _exists(client, run_id) and (only_if is None or client.get_run(run_id).info.status == only_if):
        client.set_tag(run_id, STATE_TAG, "FAIL")
        client.set_tag(run_id, "error", reason)
        client.set_terminated(run_id, RUN_STATUS["FAIL"])


def log_study_report(params: Params, run_id: str, metrics: dict[str, float], tags: dict[str, str],
                     files: list[Path], artifact_dir: str = "tune") -> None:
    """Log a study's report into its parent run: metrics, tags, and each file under ``artifact_dir``.

    Args:
        params: The pipeline's parameters (where MLflow is).
        run_id: The study's parent run.
        metrics: ``metrics/tune.json`` and the worker's timing.
        tags: The choice and its reason (a value is cut to MLflow's 5000 characters).
        files: The report's files.
        artifact_dir: Their folder in the run.
    """
    with tracking.start_run(params.tracking, run_id=run_id):
        tracking.log_metrics(metrics)
        mlflow.set_tags({k: v[:5000] for k, v in tags.items()})
        for path in files:
            mlflow.log_artifact(str(path), artifact_path=artifact_dir)
