"""Every method on the digits default: two epochs whose loss falls, SparseHead sparsifies its head, and a
resumed BYOL / MoCo v2 run (target network, predictor, queue) equals an uninterrupted one bit for bit."""

import numpy as np
import pytest
import torch

from pipeline.engine.trainer import train
from tests.conftest import Crash, crash_after
from tests.methods.helpers import tiny_cfg

NEW_METHODS = ["byol", "simsiam", "barlow_twins", "vicreg", "mocov2"]
# MoCo's first steps contrast against the random vectors the queue starts with: a queue of one step's
# keys (2 x 64) is filled by real ones after the first step, so the epochs compare like with like.
OVER = {"mocov2": {"ssl": {"mocov2": {"queue_size": 128}}}}


@pytest.mark.parametrize("method", NEW_METHODS)
def test_two_epochs_loss_falls_and_lambda_sparsifies_the_head(method, digits):
    plain = train(tiny_cfg(method, **OVER.get(method, {})), digits, seed=0, progress=False).history
    assert plain[1]["loss_ssl"] < plain[0]["loss_ssl"]
    assert plain[1]["loss_total"] == pytest.approx(plain[1]["loss_ssl"], rel=1e-6)  # lambda 0: no penalty
    sparse = train(tiny_cfg(method, sparsehead={"form": "l1", "lambda": 0.05}, **OVER.get(method, {})), digits,
                   seed=0, progress=False).history
    assert all(np.isfinite(h["loss_total"]) for h in plain + sparse)
    assert sparse[-1]["head_sparsity"] > plain[-1]["head_sparsity"]
    assert sparse[-1]["sparse_reg"] < plain[-1]["sparse_reg"]


@pytest.mark.parametrize("method", ["byol", "mocov2"])
def test_resume_is_bit_identical(method, digits, tmp_path):
    cfg = tiny_cfg(method, epochs=3, sparsehead={"form": "l1", "lambda": 1e-3, "include_predictor": True},
                   ssl={"mocov2": {"queue_size": 200}})
    digits = digits[:256]  # three runs: keep them short
    full = train(cfg, digits, seed=3, out_dir=tmp_path / "full", progress=False)

    with pytest.raises(Crash):
        train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False, callbacks=[crash_after(2)])
    resumed = train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    for a, b in ((full.encoder.state_dict(), resumed.encoder.state_dict()),
                 (full.method.state_dict(), resumed.method.state_dict())):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    keys = set(full.method.state_dict())
    assert any(k.startswith("target.") for k in keys)
    assert {"queue.keys", "queue.ptr"} <= keys if method == "mocov2" else any(k.startswith("predictor.") for k in keys)
    assert [h["loss_total"] for h in full.history] == [h["loss_total"] for h in resumed.history]


def test_a_diverged_run_stops_with_one_clear_line(digits):
    # VICReg's covariance term is quartic in the embedding's scale: too large an SGD step blows it up.
    cfg = tiny_cfg("vicreg", epochs=2, optim={"lr": 20.0, "warmup_epochs": 0})
    with pytest.raises(ValueError, match="training diverged; lower pretrain.optim.lr"):
        train(cfg, digits[:256], seed=0, progress=False)
