"""A local MLflow store keeps its artifacts in the project's folder, by absolute path: runs of a DVC temporary
copy land in the project, a registered model loads from any folder, and a copied or moved project writes into
its own folder, never into the one that created the experiment."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import TrackingConfig


def cfg(project: Path, **kw: str) -> TrackingConfig:
    # The store by absolute path: MLflow caches a store per URI in the process, so a relative
    # sqlite:///mlflow.db would keep the first test's file. The artifact root is what is under test.
    return TrackingConfig(**{"experiment": "portable", "tracking_uri": f"sqlite:///{project}/mlflow.db",
                             "artifact_root": "mlartifacts", **kw})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "a"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def _log_note(text: str, config: TrackingConfig | None = None) -> str:
    """A run with one artifact in the project of the working folder; returns the run id."""
    Path("note.txt").write_text(text)
    with tracking.start_run(config or cfg(Path.cwd()), run_name="note") as run:
        mlflow.log_artifact("note.txt", artifact_path="notes")
    return run.info.run_id


def _artifact_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "mlartifacts").rglob("note.txt")}


def test_artifacts_go_to_the_projects_folder_by_absolute_path_and_read_from_anywhere(project, tmp_path,
                                                                                     monkeypatch):
    exp_id = tracking.setup(cfg(project))
    assert MlflowClient().get_experiment(exp_id).artifact_location == (project / "mlartifacts").as_uri()
    run_id = _log_note("a")
    assert _artifact_files(project) == {f"mlartifacts/{run_id}/artifacts/notes/note.txt"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow resolves a relative artifact URI against the working folder
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes/note.txt",
                                              dst_path=str(tmp_path / "dl"))
    assert Path(got).read_text() == "a"


def test_a_stage_in_a_dvc_temporary_copy_logs_into_the_projects_store(project, monkeypatch):
    copy = project / ".dvc/tmp/exps/tmp1234"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "lam-a")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    # The embedded defaults, relative, exactly as params.yaml has them.
    run_id = _log_note("queued", TrackingConfig(experiment="portable"))
    assert (project / "mlflow.db").exists() and not (copy / "mlflow.db").exists()
    assert not (copy / "mlartifacts").exists() and len(_artifact_files(project)) == 1
    run = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db").get_run(run_id)
    assert run.data.tags["dvc.exp_name"] == "lam-a" and run.data.tags["dvc.baseline_rev"] == "f" * 40


def test_a_copied_project_writes_into_its_own_folder(project, tmp_path, monkeypatch):
    first = _log_note("a")
    copy = tmp_path / "b"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    exp_id = tracking.setup(cfg(copy))
    assert MlflowClient().get_experiment(exp_id).artifact_location == (copy / "mlartifacts").as_uri()
    second = _log_note("b")
    assert _artifact_files(copy) == {f"mlartifacts/{first}/artifacts/notes/note.txt",
                                     f"mlartifacts/{second}/artifacts/notes/note.txt"}
    assert _artifact_files(project) == {f"mlartifacts/{first}/artifacts/notes/note.txt"}


def test_a_relative_location_of_earlier_versions_is_made_absolute(project):
    mlflow.set_tracking_uri(cfg(project).tracking_uri)
    exp_id = MlflowClient().create_experiment("portable")
    with sqlite3.connect(project / "mlflow.db") as db:  # what earlier versions stored, bypassing MLflow
        db.execute("UPDATE experiments SET artifact_location = 'mlartifacts' WHERE experiment_id = ?", (exp_id,))
    assert MlflowClient().get_experiment(exp_id).artifact_location == "mlartifacts"
    assert tracking.setup(cfg(project)) == exp_id
    assert MlflowClient().get_experiment(exp_id).artifact_location == (project / "mlartifacts").as_uri()


def test_a_chosen_location_and_an_absolute_root_are_kept(project, tmp_path):
    mlflow.set_tracking_uri(cfg(project).tracking_uri)
    MlflowClient().create_experiment("chosen", artifact_location="s3://bucket/somewhere")
    tracking.setup(cfg(project), experiment="chosen")
    assert MlflowClient().get_experiment_by_name("chosen").artifact_location == "s3://bucket/somewhere"

    absolute = cfg(project, artifact_root=str(tmp_path / "store"), experiment="abs")
    exp_id = tracking.setup(absolute)
    assert MlflowClient().get_experiment(exp_id).artifact_location == (tmp_path / "store").resolve().as_uri()
