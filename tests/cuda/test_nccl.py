"""torchrun on the one GPU: NCCL with world size 1 (two ranks cannot share a GPU under NCCL), through the
same code path as eight GPUs, trains as one plain process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.engine.trainer import train
from tests.cuda.common import CUDA, ON_CPU, images, small_cfg

pytestmark = CUDA

ROOT = Path(__file__).resolve().parents[2]


def test_one_nccl_rank_under_torchrun_trains_as_one_process(tmp_path, deterministic):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(Path(__file__).with_name("nccl_worker.py")), str(tmp_path / "rank0.pt")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank = torch.load(tmp_path / "rank0.pt")
    assert rank["launched"] and rank["world"] == 1
    assert rank["backend"] == ("gloo" if ON_CPU else "nccl")
    assert rank["all_reduce"].tolist() == [0.0, 1.0, 2.0, 3.0]
    plain = train(small_cfg(), images(256, side=16), seed=0, progress=False)
    # SyncBatchNorm over one rank normalises as BatchNorm; DDP averages over one rank: the same numbers.
    assert rank["losses"] == pytest.approx([h["loss_total"] for h in plain.history], rel=1e-6)
    for key, value in plain.encoder.state_dict().items():
        torch.testing.assert_close(rank["encoder"][key], value.cpu(), rtol=1e-5, atol=1e-6)
