"""Relative store locations mean the project's root, wherever DVC runs the stage (pipeline.stores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stores import project_location, project_root


def test_the_root_is_dvc_root_then_above_a_dvc_temporary_copy_then_the_working_folder(tmp_path):
    project = tmp_path / "proj"
    queued = project / ".dvc/tmp/exps/tmpab12cd"
    temp = project / ".dvc/tmp/exps/standalone/tmpxy98zw/sub"
    for folder in (queued, temp):
        folder.mkdir(parents=True)
    # What DVC sets for every stage (measured: dvc repro, dvc exp run, --temp and queued runs alike).
    assert project_root({"DVC_ROOT": str(project)}, cwd=queued) == project.resolve()
    assert project_root({}, cwd=queued) == project.resolve()  # a stage started by hand in a copy
    assert project_root({}, cwd=temp) == project.resolve()
    assert project_root({}, cwd=tmp_path) == tmp_path.resolve()
    assert project_root({"DVC_ROOT": str(tmp_path / "gone")}, cwd=tmp_path) == tmp_path.resolve()


@pytest.mark.parametrize(("given", "want"), [
    ("sqlite:///mlflow.db", "sqlite:////p/mlflow.db"),
    ("sqlite:///stores/optuna.db", "sqlite:////p/stores/optuna.db"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite://", "sqlite://"),
    ("mlartifacts", "/p/mlartifacts"),
    ("./mlartifacts", "/p/mlartifacts"),
    ("/srv/mlartifacts", "/srv/mlartifacts"),
    ("file:mlruns", "file:/p/mlruns"),
    ("file:///srv/mlruns", "file:///srv/mlruns"),
    ("journal:optuna.journal", "journal:/p/optuna.journal"),
    ("journal:/srv/optuna.journal", "journal:/srv/optuna.journal"),
    ("http://mlflow:5000", "http://mlflow:5000"),
    ("postgresql+psycopg2://u:pw@db/optuna", "postgresql+psycopg2://u:pw@db/optuna"),
    ("s3://bucket/mlartifacts", "s3://bucket/mlartifacts"),
    ("mlflow-artifacts:/x", "mlflow-artifacts:/x"),
])
def test_relative_locations_are_anchored_at_the_root_and_the_rest_left_alone(given, want):
    assert project_location(given, Path("/p")) == want


def test_the_default_root_follows_dvc_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(Path(__file__).parent)
    assert project_location("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
