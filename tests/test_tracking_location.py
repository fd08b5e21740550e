"""A local MLflow store keeps its artifacts inside the project: a copied or moved project writes into its
own folder, never into the one that created the experiment."""

from __future__ import annotations

import shutil
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
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "a"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def _log_note(text: str) -> str:
    """A run with one artifact in the project of the working folder; returns the run id."""
    Path("note.txt").write_text(text)
    with tracking.start_run(cfg(Path.cwd()), run_name="note") as run:
        mlflow.log_artifact("note.txt", artifact_path="notes")
    return run.info.run_id


def _artifact_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "mlartifacts").rglob("note.txt")}


def test_a_copied_project_writes_and_reads_artifacts_in_its_own_folder(project, tmp_path, monkeypatch):
    exp_id = tracking.setup(cfg(project))
    assert MlflowClient().get_experiment(exp_id).artifact_location == "mlartifacts"  # no absolute path
    first = _log_note("a")
    assert _artifact_files(project) == {f"mlartifacts/{first}/artifacts/notes/note.txt"}

    copy = tmp_path / "b"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    second = _log_note("b")
    assert _artifact_files(copy) == {f"mlartifacts/{first}/artifacts/notes/note.txt",
                                     f"mlartifacts/{second}/artifacts/notes/note.txt"}
    assert _artifact_files(project) == {f"mlartifacts/{first}/artifacts/notes/note.txt"}  # original untouched
    # Read back through MLflow, from the copy: the run's relative URI resolves inside it.
    got = mlflow.artifacts.download_artifacts(run_id=second, artifact_path="notes/note.txt",
                                              dst_path=str(tmp_path / "dl"))
    assert Path(got).read_text() == "b"


def test_an_experiment_with_another_folders_absolute_location_is_repointed(project, tmp_path, monkeypatch):
    # What earlier versions stored: file:///<the creating folder>/mlartifacts.
    mlflow.set_tracking_uri(cfg(project).tracking_uri)
    old = (project / "mlartifacts").resolve().as_uri()
    exp_id = MlflowClient().create_experiment("portable", artifact_location=old)
    copy = tmp_path / "copied"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    assert tracking.setup(cfg(copy)) == exp_id
    assert MlflowClient().get_experiment(exp_id).artifact_location == "mlartifacts"
    run_id = _log_note("moved")
    assert _artifact_files(copy) == {f"mlartifacts/{run_id}/artifacts/notes/note.txt"}
    assert not (project / "mlartifacts").exists()


def test_a_chosen_location_and_an_absolute_root_are_kept(project, tmp_path):
    mlflow.set_tracking_uri(cfg(project).tracking_uri)
    MlflowClient().create_experiment("chosen", artifact_location="s3://bucket/somewhere")
    tracking.setup(cfg(project), experiment="chosen")
    assert MlflowClient().get_experiment_by_name("chosen").artifact_location == "s3://bucket/somewhere"

    absolute = cfg(project, artifact_root=str(tmp_path / "store"), experiment="abs")
    exp_id = tracking.setup(absolute)
    assert MlflowClient().get_experiment(exp_id).artifact_location == (tmp_path / "store").resolve().as_uri()
