"""The pipeline on the engines a lab runs: an MLflow tracking server on PostgreSQL (proxied artifacts), Optuna
workers sharing a PostgreSQL study, and faults on those servers: a worker killed mid-trial, PostgreSQL
restarted mid-study, the tracking server restarted mid-training. Real servers (tests/servers.py), no mocks."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import pipeline.stages.pretrain as pretrain_stage
from pipeline.cli import stage_main
from pipeline.config import load_params
from pipeline.stages.evaluate import run as evaluate_body
from pipeline.stages.final import run as final_body
from pipeline.stages.pretrain import run as pretrain_body
from pipeline.stages.register import run as register_body
from pipeline.stages.tune import run as tune_body
from pipeline.tracking.registry import load_registered
from pipeline.tracking.trials import PARENT_ATTR, PARENT_RUN_TAG, RUN_ATTR
from pipeline.tuning.space import BASELINE_ATTR, LAMBDA_ATTR, study_name
from pipeline.tuning.storage import open_storage
from pipeline.tuning.study import WORKER_ATTR
from pipeline.tuning.worker import run_tuning

REPO = Path(__file__).resolve().parents[1]
MODEL = "server-encoder"


def server_params(experiment: str, *, pretrain_epochs: int = 2, **tune: object) -> dict:
    return {
        "seed": 0,
        "tracking": {"experiment": experiment},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": pretrain_epochs, "device": "cpu", "num_threads": 1,
                     "optim": {"warmup_epochs": 0}},
        "evaluate": {"val_fraction": 0.25, "batch_size": 64, "knn_k": [3], "random_baseline": False,
                     "probe": {"epochs": 3, "batch_size": 32, "weight_decays": [0.0]}},
        "tune": {"n_trials": 2, "epochs": 2, "eval_every": 1, "pruner": "none", "seeds": [0],
                 "lambda_low": 1e-4, "lambda_high": 1e-1, "heartbeat_s": 1, "grace_s": 4,
                 "storage_retry_s": 60, **tune},
        "final": {"seeds": [0]},
        "register": {"model_name": MODEL},
    }


def _write(workdir: Path, params: dict) -> None:
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def _study(url: str, workdir: Path) -> optuna.Study:
    params = load_params(workdir / "params.yaml")
    sha = json.loads((workdir / "data/prepared/manifest.json").read_text())["dataset_sha256"]
    return optuna.load_study(study_name=study_name(params, sha), storage=open_storage(url))


def _children(client: MlflowClient, experiment: str, parent_id: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.{PARENT_RUN_TAG} = '{parent_id}'")


def test_the_pipeline_runs_against_a_tracking_server_on_postgres(prepared_dir, postgres, mlflow_server,
                                                                  monkeypatch):
    workdir = prepared_dir
    _write(workdir, server_params("server-pipeline"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the only thing that points at the server
    monkeypatch.setenv("OPTUNA_STORAGE", postgres.create_database("pipeline_study"))
    for name, body in [("pretrain", pretrain_body), ("evaluate", evaluate_body), ("tune", tune_body),
                       ("final", final_body), ("register", register_body)]:
        assert stage_main(name, body, argv=[]) == 0, name

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name("server-pipeline")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's choice, no local path
    runs = client.search_runs([exp.experiment_id])
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"pretrain", "tune", "final"} <= stages
    pretrain_id = (workdir / "models/pretrain/run_id").read_text().strip()
    assert "val_linear_top1" in client.get_run(pretrain_id).data.metrics  # evaluate logged into the same run
    parent = next(r for r in runs if r.data.tags.get("stage") == "tune")
    children = _children(client, "server-pipeline", parent.info.run_id)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)

    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1"
    loaded = load_registered(f"models:/{MODEL}@champion")
    assert (loaded.version, loaded.run_id) == ("1", version.run_id)
    # Artifacts went through the server into its destination, none into the project.
    assert any(mlflow_server.artifacts.rglob("encoder.pt"))
    assert not (workdir / "mlartifacts").exists() and not (workdir / "mlruns").exists()


def _worker(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.tune", "--params", "params.yaml"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_three_workers_on_postgres_one_killed_mid_trial(prepared_dir, postgres, mlflow_server):
    workdir, n = prepared_dir, 4
    # Trials long enough to be caught running (10 epochs, a kNN report at the end only). A grace of 10
    # heartbeats: three workers, PostgreSQL and the tracking server on CI's 2 cores once starved a live
    # worker's heartbeat thread for over 4 s.
    _write(workdir, server_params("server-killed", n_trials=n, epochs=10, eval_every=10, grace_s=10))
    url = postgres.create_database("killed_study")
    open_storage(url)  # the schema, before anyone polls it (the workers create theirs under their lock)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "OPTUNA_STORAGE": url,
           "PYTHONPATH": str(REPO)}
    workers = {p.pid: p for p in (_worker(workdir, env) for _ in range(3))}
    study = None
    complete_before: dict[int, float] = {}
    killed_number = victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            study = study or _study(url, workdir)
        except KeyError:  # the study does not exist yet
            continue
        trials = study.get_trials(deepcopy=False)
        # The victim is whichever worker holds a running trial, caught once the trial has drawn its params
        # and opened its MLflow run, in the middle of training: which worker that is does not matter.
        running = [t for t in trials if t.state == TrialState.RUNNING and RUN_ATTR in t.user_attrs]
        if running:
            killed_number = running[0].number
            victim = workers[int(running[0].user_attrs[WORKER_ATTR].rpartition(":")[2])]
            victim.send_signal(signal.SIGKILL)
            complete_before = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert victim is not None, "no trial was seen running"
    procs = list(workers.values())
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        if p is not victim:
            assert p.returncode == 0, out[-3000:]

    trials = {t.number: t for t in study.get_trials()}
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL
    # The killed trial is failed; a live worker whose heartbeat a starved machine delayed past the grace may
    # lose its trial too (the worker logs it and goes on). Either way each failed trial is redone exactly
    # once, with its params and its baseline and lambda attributes.
    failed = [t for t in trials.values() if t.state == TrialState.FAIL]
    assert killed_number in [t.number for t in failed]
    for lost in failed:
        retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == lost.number]
        assert len(retries) == 1, lost.number
        redo = retries[0]
        assert redo.state == TrialState.COMPLETE and redo.params == lost.params
        for attr in (BASELINE_ATTR, LAMBDA_ATTR):
            assert redo.user_attrs.get(attr) == lost.user_attrs.get(attr)
    # The budget exactly: n trials that are not failed, all complete.
    alive = [t for t in trials.values() if t.state != TrialState.FAIL]
    assert len(alive) == n and all(t.state == TrialState.COMPLETE for t in alive)
    for number, value in complete_before.items():  # nothing completed was lost or redone
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == value

    client = MlflowClient(tracking_uri=mlflow_server.url)
    children = {r.info.run_id: r for r in _children(client, "server-killed", study.user_attrs[PARENT_ATTR])}
    assert len(children) == n + len(failed)  # one run per trial, the failed ones included
    assert children[killed.user_attrs[RUN_ATTR]].info.status == "FAILED"
    for t in alive:
        assert children[t.user_attrs[RUN_ATTR]].info.status == "FINISHED"
    assert not [r for r in children.values() if r.info.status == "RUNNING"]


def test_postgres_restarted_mid_study_loses_nothing(prepared_dir, postgres, caplog, monkeypatch):
    workdir, n = prepared_dir, 4
    url = postgres.create_database("restart_study")
    open_storage(url)  # the schema, before the fault thread polls it
    monkeypatch.setenv("OPTUNA_STORAGE", url)
    params = server_params("restart", n_trials=n, epochs=20, eval_every=5, grace_s=30)
    params["tracking"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"  # the fault is the database's
    _write(workdir, params)
    restarted: list[dict[int, float]] = []

    def restart_after_first_complete() -> None:
        study = None
        while True:
            time.sleep(0.1)
            try:
                study = study or _study(url, workdir)
            except KeyError:  # no study yet
                continue
            trials = study.get_trials(deepcopy=False)
            done = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
            # Mid-training of the next trial: its heartbeat (every second) meets the 3 s outage for certain,
            # where a restart between trials could fall in a pause of a loaded machine and meet no call.
            if done and any(t.state == TrialState.RUNNING and RUN_ATTR in t.user_attrs for t in trials):
                restarted.append(done)
                postgres.restart(down_s=3.0)
                return

    caplog.set_level(logging.WARNING)
    fault = threading.Thread(target=restart_after_first_complete, daemon=True)
    fault.start()
    outcome = run_tuning(load_params(workdir / "params.yaml"), progress=False)
    fault.join(timeout=120)
    assert restarted, "the database was not restarted during the study"
    trials = {t.number: t for t in outcome.study.get_trials()}
    assert len(trials) == n and all(t.state == TrialState.COMPLETE for t in trials.values())
    for number, value in restarted[0].items():
        assert trials[number].value == value
    assert "the database did not answer" in caplog.text  # a call did meet the restart, and was retried


def test_tracking_server_restarted_mid_training_keeps_every_epoch(prepared_dir, mlflow_server, monkeypatch):
    workdir, epochs = prepared_dir, 5
    _write(workdir, server_params("server-restart", pretrain_epochs=epochs))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast while it is down
    back_at: list[int] = []

    def fault(epoch: int, metrics: dict, encoder: object) -> None:
        if epoch == 2:
            mlflow_server.stop()  # epochs 3 and 4 end while it is down
        elif epoch == 4:
            mlflow_server.start()
            back_at.append(int(time.time() * 1000))

    real_train = pretrain_stage.train

    def train_with_fault(*args: object, callbacks: list, **kwargs: object) -> object:
        return real_train(*args, callbacks=[*callbacks, fault], **kwargs)

    monkeypatch.setattr(pretrain_stage, "train", train_with_fault)
    try:
        assert stage_main("pretrain", pretrain_body, argv=[]) == 0
    finally:
        if mlflow_server.proc is None or mlflow_server.proc.poll() is not None:
            mlflow_server.start()  # the next tests need it, whatever happened here

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run_id = (workdir / "models/pretrain/run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run_id, "loss_total"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, epochs + 1))  # no epoch lost
    # Epochs 3 and 4 were queued with the time they ended, before the server came back.
    assert all(m.timestamp < back_at[0] for m in history if m.step in (3, 4))
    final = json.loads((workdir / "metrics/pretrain.json").read_text())
    assert history[-1].value == pytest.approx(final["loss_total"], abs=1e-6)
