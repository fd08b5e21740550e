"""The final and register stages, and the whole DVC pipeline: `dvc repro` end to end, then nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.data.format import load_split
from pipeline.evaluation import extract_features
from pipeline.models import load_encoder
from pipeline.stages.final import read_best_params
from pipeline.stages.final import run as final_body
from pipeline.stages.register import run as register_body
from pipeline.tracking.registry import OUTCOME_TAG, load_registered
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
NAME = "test-encoder"


def tiny_params(tmp_path: Path) -> dict:
    return {
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "stages-test",
                     "artifact_root": str(tmp_path / "mlartifacts")},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": 2, "device": "cpu", "num_threads": 1,
                     "optim": {"warmup_epochs": 0}},
        "evaluate": {"val_fraction": 0.25, "batch_size": 64, "knn_k": [3], "random_baseline": False,
                     "probe": {"epochs": 3, "batch_size": 32, "weight_decays": [0.0]}},
        "tune": {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": 2, "epochs": 2, "eval_every": 1},
        "register": {"model_name": NAME},
    }


@pytest.fixture
def workdir(prepared_dir: Path) -> Path:
    (prepared_dir / "params.yaml").write_text(yaml.safe_dump(tiny_params(prepared_dir)))
    return prepared_dir


def _best(path: Path, lam: float, **extra: object) -> None:
    path.write_text(json.dumps({"lambda": lam, "form": "l1", "baseline": lam == 0, "study": "s", "trial": 1,
                                "value": 0.5, **extra}))


def test_final_trains_the_best_lambda_and_register_promotes_only_a_better_model(workdir, capsys):
    _best(workdir / "best_params.json", 0.003)
    assert stage_main("final", final_body, argv=[]) == 0
    assert "lambda 0.003" in capsys.readouterr().out
    encoder, extra = load_encoder("models/final/encoder.pt")
    assert extra["sparsehead"] == {"form": "l1", "lambda": 0.003, "update": "gradient",
                                  "include_predictor": False} and extra["epochs"] == 2
    metrics = json.loads(Path("metrics/final.json").read_text())
    assert 0.0 <= metrics["val_linear_top1"] <= 1.0 and "test_linear_top1" in metrics
    assert Path("metrics/final_train.json").exists() and Path("plots/final/confusion.csv").exists()

    params = load_params("params.yaml")
    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    run_id = Path("models/final/run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "final" and run.data.tags["sparsehead.lambda"] == "0.003"
    assert run.data.metrics["val_linear_top1"] == pytest.approx(metrics["val_linear_top1"])  # eval, same run

    assert stage_main("register", register_body, argv=[]) == 0
    assert "now @champion" in capsys.readouterr().out
    record = json.loads(Path("metrics/register.json").read_text())
    assert (record["version"], record["promoted"], record["champion_version_before"]) == (1, 1, None)
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert str(mv.version) == "1" and mv.run_id == run_id
    assert mv.tags["lambda"] == "0.003" and mv.tags["form"] == "l1" and mv.tags["dataset"] == "synthetic"
    assert mv.tags["dataset_sha256"] == extra["dataset_sha256"] and mv.tags["git_commit"]
    assert float(mv.tags["metric.val_linear_top1"]) == pytest.approx(metrics["val_linear_top1"])

    # The champion gives the embeddings of the checkpoint it came from, through the evaluation code.
    loaded = load_registered(f"models:/{NAME}@champion")
    images = load_split("data/prepared", "test").images
    want, got = extract_features(encoder, images), extract_features(loaded.encoder, images)
    assert torch.allclose(want.h, got.h, atol=1e-6) and torch.allclose(want.z, got.z, atol=1e-6)

    # A challenger that is no better: registered with its numbers, the alias stays.
    worse = {**metrics, "val_linear_top1": metrics["val_linear_top1"] - 0.25}
    Path("metrics/final.json").write_text(json.dumps(worse))
    assert stage_main("register", register_body, argv=[]) == 0
    assert "stays on version 1" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags[OUTCOME_TAG] == "lost" and float(v2.tags["metric.val_linear_top1"]) == worse["val_linear_top1"]
    assert json.loads(Path("metrics/register.json").read_text())["promoted"] == 0


def test_final_and_register_fail_with_one_line_on_bad_input(workdir, capsys):
    assert stage_main("final", final_body, argv=[]) == 2
    assert capsys.readouterr().err.strip() == "final: error: best_params.json: best params not found (run the tune stage first)"
    _best(workdir / "best_params.json", -1.0)
    with pytest.raises(ValueError, match="'lambda' must be a number >= 0"):
        read_best_params("best_params.json")
    Path("best_params.json").write_text("{not json")
    assert stage_main("final", final_body, argv=[]) == 2
    assert "best_params.json: not valid JSON" in capsys.readouterr().err
    assert stage_main("register", register_body, argv=[]) == 2
    assert "models/final/run_id: run id file not found" in capsys.readouterr().err
    assert not Path("metrics/register.json").exists()


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _dvc(cwd: Path, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_a_fresh_clone_runs_every_stage_and_produces_the_study(tmp_path):
    """The real dvc.yaml, as a newcomer meets it. A first clone runs the pipeline on small params and
    commits what a project commits (dvc.lock, .gitignore); a fresh clone of *that* must still run every
    stage (results are DVC-cached, not in git), leaving the study, its MLflow runs and the model in its own
    stores; then a second `dvc repro` has nothing to do."""
    first = tmp_path / "first"
    _git(tmp_path, "clone", "-q", str(REPO), str(first))
    # This working tree's code and config over the clone (the same files in CI, which tests a clean clone).
    for name in ("dvc.yaml", "pipeline", "stages", ".dvcignore", ".gitignore"):
        src = REPO / name
        if src.is_dir():
            shutil.rmtree(first / name, ignore_errors=True)
            shutil.copytree(src, first / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, first / name)
    # The repository's params.yaml (DVC needs every key it names) with the small budget on top.
    tiny = tiny_params(first)
    tiny["tracking"] = {"experiment": "dvc-e2e"}  # the embedded defaults: sqlite:///mlflow.db, mlartifacts/
    tiny["tune"] = {**tiny["tune"], "storage": "sqlite:///optuna.db", "seeds": [0, 1]}
    tiny["final"] = {"seeds": [0, 1]}
    tiny["evaluate"]["random_baseline"] = True
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), tiny)
    (first / "params.yaml").write_text(yaml.safe_dump(params))
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONPATH"] = str(first)
    _dvc(first, "repro", env=env)
    _git(first, "add", "-A")
    _git(first, "commit", "-qm", "small pipeline run")
    assert not _git(first, "ls-files", "metrics", "plots", "best_params.json").strip()  # results not in git

    work = tmp_path / "fresh"
    _git(tmp_path, "clone", "-q", str(first), str(work))
    env["PYTHONPATH"] = str(work)
    out = _dvc(work, "repro", env=env)
    for stage in ("prepare", "pretrain", "evaluate", "tune", "final", "register"):
        assert f"Running stage '{stage}'" in out
    for path in ("data/prepared/manifest.json", "models/pretrain/encoder.pt", "metrics/eval.json",
                 "best_params.json", "metrics/tune.json", "models/final/encoder.pt", "metrics/final.json",
                 "models/final/seeds/seed1/encoder.pt", "metrics/register.json", "mlflow.db", "optuna.db"):
        assert (work / path).exists(), path
    assert json.loads((work / "metrics/register.json").read_text())["version"] == 1

    # The study is in this clone's Optuna storage, its parent and nested trial runs in this clone's MLflow.
    best = json.loads((work / "best_params.json").read_text())
    study = optuna.load_study(study_name=best["study"], storage=f"sqlite:///{work / 'optuna.db'}")
    assert len(study.get_trials()) == 2
    store = f"sqlite:///{work / 'mlflow.db'}"  # the registry too: other tests set a process-wide one
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    parent = client.get_run(best["mlflow_parent_run_id"])
    assert parent.data.tags["stage"] == "tune"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and best["mlflow_run_id"] in {r.info.run_id for r in children}
    tune = json.loads((work / "metrics/tune.json").read_text())
    assert tune["seeds"] == 2
    assert tune["gap_ci95_low"] <= tune["gap_mean"] <= tune["gap_ci95_high"]
    assert {"best_mean", "baseline_mean", "gap_p_value"} <= set(tune)
    final = json.loads((work / "metrics/final.json").read_text())
    assert final["final_seeds"] == 2 and "test_linear_top1_sd" in final
    version = client.get_model_version(NAME, "1")
    assert version.tags["tune.choice"] == best["choice"] and version.tags["tune.reason"] == best["reason"]

    again = _dvc(work, "repro", env=env)
    assert "Running stage" not in again and "up to date" in again
    assert "changed" not in _dvc(work, "status", env=env)
    shown = _dvc(work, "metrics", "show", "--json", env=env)
    assert "test_linear_top1" in shown and "gap_mean" in shown
    summary = subprocess.run([sys.executable, "-m", "pipeline.summary"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in summary] == ["pretrain", "evaluate", "tune", "final", "over", "register"]
    assert summary[-1].endswith("@champion")

    # The registered champion loads in a fresh process without this repository's code.
    script = textwrap.dedent(f"""
        import mlflow, numpy as np
        m = mlflow.pyfunc.load_model("models:/{NAME}@champion")
        print(m.predict(np.zeros((2, 1, 8, 8), dtype=np.float32)).shape)
    """)
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    clean["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"
    proc = subprocess.run([sys.executable, "-c", script], cwd=work, env=clean, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("(2, 16)")


def test_only_the_projects_user_errors_become_one_line_and_a_bug_keeps_its_traceback(workdir, capsys):
    from pipeline.config import ConfigError
    from pipeline.data.errors import DataError
    from pipeline.errors import StageError, UserError

    def failing(exc: BaseException):
        def body(params, args):
            raise exc
        return body

    for exc in (UserError("x.npz: garbage; rerun prepare"), StageError("s"), ConfigError("c"), DataError("d")):
        assert stage_main("demo", failing(exc), argv=[]) == 2
        assert capsys.readouterr().err == f"demo: error: {exc}\n"
    with pytest.raises(ValueError, match="a bug"):  # numpy's, torch's or ours: a traceback, not one line
        stage_main("demo", failing(ValueError("a bug")), argv=[])
