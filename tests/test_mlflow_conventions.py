"""MLflow's own conventions: the prepared data set as a dataset input, system metrics, descriptions on the
registered model and its versions, and a git commit tag that DVC's own outputs do not make dirty."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params, PrepareConfig, TrackingConfig
from pipeline.data.format import load_manifest
from pipeline.stages.pretrain import pretrain_and_log
from pipeline.stages.register import register_model_dir, study_gap, version_description
from pipeline.tracking.datasets import DIGEST_CHARS, dataset_source

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **tracking_cfg: object) -> Params:
    return Params.model_validate({
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "conventions",
                     "artifact_root": str(tmp_path / "mlartifacts"), **tracking_cfg},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": 1, "device": "cpu", "num_threads": 1},
        "register": {"model_name": "conventions-encoder"},
    })


def test_training_run_logs_the_prepared_data_and_the_version_is_described(prepared_dir):
    params = _params(prepared_dir)
    manifest = load_manifest("data/prepared")
    outcome = pretrain_and_log(params, params.pretrain, "models/final", run_name="final", progress=False)

    client = MlflowClient()
    [ds_input] = client.get_run(outcome.run_id).inputs.dataset_inputs
    ds = ds_input.dataset
    assert ds.name == "synthetic" and ds.digest == manifest["dataset_sha256"][:DIGEST_CHARS]
    assert ds.source_type == "code" and json.loads(ds.source)["tags"]["prepare.source"] == "digits"
    schema = json.loads(ds.schema)["mlflow_colspec"]
    assert [c["tensor-spec"] for c in schema] == [{"dtype": "uint8", "shape": [-1, 8, 8, 1]},
                                                 {"dtype": "int64", "shape": [-1]}]
    assert {t.key: t.value for t in ds_input.tags}["mlflow.data.context"] == "train"

    Path("metrics").mkdir()
    Path("metrics/final.json").write_text(json.dumps({"val_linear_top1": 0.8125, "test_linear_top1": 0.75}))
    Path("metrics/tune.json").write_text(json.dumps({"gap_mean": 0.01, "gap_ci95_low": -0.002,
                                                     "gap_ci95_high": 0.022}))
    Path("best_params.json").write_text(json.dumps({"lambda": 0.001, "form": "l1", "study": "lam-1a2b",
                                                    "trial": 3}))
    result, _ = register_model_dir(params, "models/final", "metrics/final.json", "best_params.json")

    version = client.get_model_version("conventions-encoder", result.version).description
    assert version.startswith("Trained on synthetic (dataset sha256 "
                              f"{manifest['dataset_sha256'][:12]}): simclr, SparseHead l1, lambda 0.001, 1 epochs.")
    assert ("Chosen by study lam-1a2b (trial 3): gap to the baseline +0.0100 (95% CI -0.0020 to +0.0220)."
            in version)
    assert "val_linear_top1 0.8125." in version and f"Run {outcome.run_id}" in version
    model = client.get_registered_model("conventions-encoder").description
    assert "trained on synthetic" in model and "@champion is the version with the highest val_linear_top1" in model


def test_descriptions_read_the_study_defensively():
    assert study_gap({}) is None
    assert study_gap({"gap": 0.0}) == "gap to the baseline +0.0000"  # one seed: no interval
    assert study_gap({"gap_mean": "n/a", "gap": None}) is None
    assert study_gap({"gap_mean": 0.02, "gap_ci95_low": None}) == "gap to the baseline +0.0200"
    tags = {"dataset": "digits", "dataset_sha256": "ab" * 32, "lambda": "0.0", "form": "l1", "epochs": "100",
            "method": "byol", "tune.study": "s", "tune.trial": "0", "run_id": "r", "git_commit": "c"}
    text = version_description(tags, {}, "val_linear_top1", {"seconds": 1.0})
    assert text == ("Trained on digits (dataset sha256 abababababab): byol, no SparseHead (lambda 0), 100 epochs. "
                    "Chosen by study s (trial 0). Run r, git c.")
    proximal = {**tags, "lambda": "0.01", "update": "proximal", "form": "group"}
    assert "byol, SparseHead group (proximal update), lambda 0.01, 100 epochs." in version_description(
        proximal, {"val_linear_top1": 0.5}, "val_linear_top1", {})


def test_dataset_source_names_the_path_as_params_gives_it():
    src = dataset_source(PrepareConfig(source="cifar10", path="data/raw/cifar-10-python.tar.gz"))
    assert src._get_source_type() == "local" and src.to_dict() == {"uri": "data/raw/cifar-10-python.tar.gz"}


def _metric_keys(run_id: str) -> set[str]:
    return set(MlflowClient().get_run(run_id).data.metrics)


def test_system_metrics_follow_the_param(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    mlflow.set_system_metrics_sampling_interval(0.1)
    mlflow.set_system_metrics_samples_before_logging(1)
    try:
        on = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", system_metrics=True)
        with tracking.start_run(on, run_name="on") as run:
            for _ in range(200):  # until the sampler thread has logged once (at most 10 s)
                if any(k.startswith("system/") for k in _metric_keys(run.info.run_id)):
                    break
                time.sleep(0.05)
        keys = _metric_keys(run.info.run_id)
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys

        off = on.model_copy(update={"system_metrics": False})
        with tracking.start_run(off, run_name="off") as run:
            mlflow.log_metric("x", 1.0)
            time.sleep(0.3)
        assert _metric_keys(run.info.run_id) == {"x"}
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
        mlflow.set_system_metrics_samples_before_logging(None)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def clean_clone(tmp_path: Path) -> Path:
    """A committed project with the real dvc.yaml, a code file and DVC's git-tracked outputs."""
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "plots/eval").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    for name, text in {"dvc.lock": "schema: '2.0'\n", "code.py": "x = 1\n", "best_params.json": "{}\n",
                       "metrics/eval.json": "{}\n", "metrics/tune.json": "{}\n",
                       "plots/eval/confusion.csv": "a,b\n"}.items():
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    return repo


def test_git_commit_ignores_what_dvc_repro_itself_changes(clean_clone):
    sha = _git(clean_clone, "rev-parse", "HEAD")
    assert tracking.git_commit(clean_clone) == sha
    # What DVC does to a stage's git-tracked outputs before and after running it.
    (clean_clone / "metrics/eval.json").unlink()
    (clean_clone / "plots/eval/confusion.csv").unlink()
    (clean_clone / "best_params.json").write_text('{"lambda": 0.1}\n')
    (clean_clone / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (clean_clone / "untracked.txt").write_text("scratch\n")
    assert tracking.git_commit(clean_clone) == sha
    (clean_clone / "metrics/tune.json").write_text('{"gap": 1}\n')  # still DVC's: the tune stage's metric
    assert tracking.git_commit(clean_clone) == sha
    (clean_clone / "code.py").write_text("x = 2\n")
    assert tracking.git_commit(clean_clone) == f"{sha}-dirty"


def test_dvc_outputs_come_from_the_projects_dvc_yaml():
    outs = set(tracking.lineage.dvc_outputs(REPO))
    assert {"dvc.lock", "data/prepared", "models/pretrain/encoder.pt", "metrics/eval.json", "best_params.json",
            "plots/eval/confusion.csv", "metrics/register.json"} <= outs
    assert not {"params.yaml", "dvc.yaml", "pipeline/engine"} & outs
    assert tracking.lineage.dvc_outputs(REPO / "no-such-folder") == []
