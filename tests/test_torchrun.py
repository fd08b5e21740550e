"""torchrun on the CPU (gloo): the pretrain stage end to end on two ranks, and a resume after SIGKILL of the
whole group that ends bit-identical to an uninterrupted two-rank run.

Each run is the real ``torchrun --standalone --nproc_per_node=2 -m stages.pretrain`` in a scratch project
folder of its own (its params.yaml, prepared data, checkpoint); the three runs share one MLflow database
(created once: its migrations cost seconds) and each writes to an experiment of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.data.format import Dataset, save_dataset
from pipeline.engine.checkpoint import CHECKPOINT
from pipeline.engine.distributed import DistContext
from pipeline.models.encoder import ENCODER_FILE, load_encoder
from tests.conftest import four_class_split

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
EPOCHS = 8


def _project(folder: Path, experiment: str) -> Path:
    folder.mkdir()
    params = {"tracking": {"experiment": experiment},
              "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                           "epochs": EPOCHS, "batch_size": 32, "device": "cpu"}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    save_dataset(Dataset(four_class_split(256, 0), four_class_split(32, 1), ["a", "b", "c", "d"], "synthetic"),
                 folder / "data/prepared")
    return folder


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def _torchrun(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: its process group is torchrun and nothing else of the test's.
    return subprocess.Popen([*TORCHRUN, "-m", "stages.pretrain"], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


def _epochs_done(folder: Path) -> int:
    try:
        return int(torch.load(folder / "models/pretrain" / CHECKPOINT, weights_only=False)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return load_encoder(folder / "models/pretrain" / ENCODER_FILE)[0].state_dict()


def test_torchrun_pretrain_resumes_after_sigkill_of_the_group_bit_identically(tmp_path):
    db = tmp_path / "mlflow.db"
    env = _env(db)
    whole, killed = _project(tmp_path / "whole", "whole"), _project(tmp_path / "killed", "killed")

    out = _finish(_torchrun(whole, env))
    assert out.count("pretrain: run ") == 1, out[-2000:]  # rank 0 alone reports (and records)

    proc = _torchrun(killed, env)
    deadline = time.monotonic() + 180
    while _epochs_done(killed) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"torchrun ended before it could be killed: {proc.communicate()[0][-3000:]}"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun's group; its workers sit in sessions of their own
    proc.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers outlived torchrun: {alive}"
    done = _epochs_done(killed)
    assert 2 <= done < EPOCHS and not (killed / "models/pretrain" / ENCODER_FILE).exists()

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("killed")
    [before] = client.search_runs([exp.experiment_id])
    assert before.info.status == "RUNNING"  # killed: nobody closed it

    _finish(_torchrun(killed, env))

    a, b = _state(whole), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    results = [json.loads((d / "metrics/pretrain.json").read_text()) for d in (whole, killed)]
    ids = [(d / "models/pretrain/run_id").read_text().strip() for d in (whole, killed)]
    assert [r.pop("mlflow_run_id") for r in results] == ids  # each metrics file names its own run
    assert results[0] == results[1]

    [run] = client.search_runs([exp.experiment_id])  # one run, resumed, written by rank 0 only
    assert run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["torchrun.world_size"] == "2"
    assert run.data.params["torchrun.sync_batchnorm"] == "False"
    assert (killed / "models/pretrain/run_id").read_text().strip() == run.info.run_id
    [whole_run] = client.search_runs([client.get_experiment_by_name("whole").experiment_id])
    assert [d.dataset.name for d in whole_run.inputs.dataset_inputs] == ["synthetic"]
    # Every epoch once, even one saved in the checkpoint but killed before its metrics were logged.
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_total"))
    assert steps == list(range(1, EPOCHS + 1))


def test_sync_batchnorm_is_refused_on_cpu_ranks_and_torch_agrees(tmp_path):
    ranks = DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"^pretrain.sync_batchnorm: true needs GPU ranks"):
        ranks.sync_batchnorm(True)
    assert ranks.sync_batchnorm(None) is False and ranks.sync_batchnorm(False) is False
    assert DistContext().sync_batchnorm(True) is False  # one process: nothing to synchronise

    # The reason: torch's own SyncBatchNorm raises on CPU tensors in a gloo group.
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        bn = torch.nn.SyncBatchNorm(3).train()
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            bn(torch.randn(4, 3))
    finally:
        torch.distributed.destroy_process_group()
