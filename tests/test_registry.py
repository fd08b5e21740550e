"""MLflow model logging, champion/challenger registration and loading back, in a throwaway sqlite store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline import tracking
from pipeline.config import RegisterConfig, TrackingConfig
from pipeline.data.preprocess import InputSpec
from pipeline.models import Encoder, EncoderSpec
from pipeline.tracking.registry import (
    OUTCOME_TAG,
    LoadedModel,
    load_registered,
    log_encoder_model,
    register_encoder,
)

REPO = Path(__file__).resolve().parents[1]
NAME = "sparsehead-encoder"


def tiny_encoder(seed: int) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(EncoderSpec("small", InputSpec(8, 1, (0.3,), (0.4,)), width=8, head_hidden=[32], head_out=16))
    # Non-trivial batch-norm statistics, so a loader that dropped the buffers would be caught.
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc.project(torch.rand(32, 1, 8, 8))
    return enc.eval()


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = TrackingConfig(experiment="test-registry", tracking_uri=uri, artifact_root=str(tmp_path / "mlartifacts"))
    tracking.setup(cfg)
    return cfg


def log_tiny(cfg: TrackingConfig, encoder: Encoder) -> str:
    with tracking.start_run(cfg, run_name="register"):
        info = log_encoder_model(encoder, metadata={"lambda": 0.001, "form": "l1"})
    return info.model_uri


def test_logged_model_carries_signature_example_and_preprocessing(store, tmp_path):
    enc = tiny_encoder(0)
    enc.train()  # the caller's module must come back as it was
    with tracking.start_run(store, run_name="log") as run:
        info = log_encoder_model(enc, metadata={"dataset": "digits"})
    assert enc.training
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
    conf = yaml.safe_load((local / "MLmodel").read_text())
    sig_in = json.loads(conf["signature"]["inputs"])[0]
    sig_out = json.loads(conf["signature"]["outputs"])[0]
    assert sig_in["tensor-spec"] == {"dtype": "float32", "shape": [-1, 1, 8, 8]}
    assert sig_out["tensor-spec"] == {"dtype": "float32", "shape": [-1, enc.feature_dim]}
    assert conf["flavors"]["pytorch"]["extra_files"] == [{"path": "extra_files/encoder.pt"}]
    meta = conf["metadata"]
    assert meta["input_spec"] == {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.4]}
    assert meta["encoder_spec"]["width"] == 8 and meta["dataset"] == "digits"
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example["inputs"] if isinstance(example, dict) else example).shape == (2, 1, 8, 8)
    loaded = load_registered(f"runs:/{run.info.run_id}/model")
    assert loaded.run_id == run.info.run_id and loaded.name is None and not loaded.encoder.training


def test_logging_needs_an_active_run(store):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_encoder_model(tiny_encoder(0))


def test_alias_moves_only_on_a_strict_gain(store):
    cfg = RegisterConfig(model_name=NAME, alias="champion", metric="val_linear_top1")
    client = mlflow.MlflowClient()
    tags = {"lambda": "0.001", "form": "l1", "dataset": "digits", "dataset_sha256": "ab" * 32, "git_commit": "x"}

    # One logged model registered several times: each registration is a new version with its own numbers.
    uri = log_tiny(store, tiny_encoder(0))
    first = register_encoder(uri, cfg, {"val_linear_top1": 0.80, "val_knn": 0.7}, tags)
    assert (first.version, first.promoted, first.champion_version) == ("1", True, None)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    better = register_encoder(uri, cfg, {"val_linear_top1": 0.85}, tags)
    assert (better.version, better.promoted, better.champion_version) == ("2", True, "1")
    assert better.champion_value == pytest.approx(0.80) and better.challenger_value == pytest.approx(0.85)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert client.get_model_version(NAME, "1").tags["registry.replaced_by"] == "2"

    worse = register_encoder(uri, cfg, {"val_linear_top1": 0.60}, tags)
    tie = register_encoder(uri, cfg, {"val_linear_top1": 0.85}, tags)
    for res in (worse, tie):
        assert not res.promoted and res.champion_version == "2"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    lost = client.get_model_version(NAME, "3").tags
    assert lost[OUTCOME_TAG] == "lost" and float(lost["metric.val_linear_top1"]) == 0.60
    assert lost["registry.compared_to_version"] == "2" and lost["lambda"] == "0.001"
    assert lost["dataset_sha256"] == "ab" * 32 and lost["git_commit"] == "x"
    assert client.get_model_version(NAME, "2").tags[OUTCOME_TAG] == "champion"

    with pytest.raises(ValueError, match="val_linear_top1"):
        register_encoder(uri, cfg, {"val_knn": 0.9}, tags)
    with pytest.raises(ValueError, match="not finite"):
        register_encoder(uri, cfg, {"val_linear_top1": float("nan")}, tags)


def test_champion_reloads_in_process_and_in_a_fresh_subprocess(store, tmp_path):
    enc = tiny_encoder(7)
    cfg = RegisterConfig(model_name=NAME)
    res = register_encoder(log_tiny(store, enc), cfg, {"val_linear_top1": 0.9}, {"lambda": "0.001", "form": "l1"})
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        want_h, want_z = enc(x).numpy(), enc.project(x).numpy()

    loaded: LoadedModel = load_registered(f"models:/{NAME}@champion")
    assert (loaded.name, loaded.version, loaded.alias) == (NAME, res.version, "champion")
    assert loaded.tags["lambda"] == "0.001" and loaded.metadata["input_spec"]["image_size"] == 8
    assert next(loaded.encoder.parameters()).device.type == "cpu" and not loaded.encoder.training
    with torch.inference_mode():
        assert np.allclose(loaded.encoder.embed(x, "backbone").numpy(), want_h, atol=1e-6)
        assert np.allclose(loaded.encoder.embed(x, "projection").numpy(), want_z, atol=1e-6)
    by_version = load_registered(f"models:/{NAME}/{res.version}")
    assert by_version.alias is None and by_version.version == res.version

    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import numpy as np, torch, mlflow, mlflow.pytorch, mlflow.pyfunc
        x = np.load("x.npy")
        m = mlflow.pytorch.load_model("models:/{NAME}@champion")
        with torch.inference_mode():
            np.save("plain.npy", m(torch.from_numpy(x)).numpy())
        np.save("pyfunc.npy", mlflow.pyfunc.load_model("models:/{NAME}@champion").predict(x))
    """)
    # No PYTHONPATH: the registered model must load without this repository's code.
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.allclose(np.load(tmp_path / "plain.npy"), want_h, atol=1e-6)
    assert np.allclose(np.load(tmp_path / "pyfunc.npy"), want_h, atol=1e-6)


def test_bad_uris_name_the_problem(store):
    with pytest.raises(ValueError, match="nope"):
        load_registered("models:/nope@champion")
    with pytest.raises(ValueError, match="expected models"):
        load_registered(f"models:/{NAME}/banana")
