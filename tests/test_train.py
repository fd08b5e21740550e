"""The training loop: loss falls, a resumed run equals an uninterrupted one, checkpoints, callbacks, LARS."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.config import PretrainConfig
from pipeline.engine.checkpoint import CHECKPOINT, read_checkpoint_meta
from pipeline.engine.optim import LARS, warmup_cosine
from pipeline.engine.trainer import Trainer, train
from tests.conftest import Crash, crash_after


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x = load_digits().images[:320]
    return np.rint(x * 255 / 16).astype(np.uint8)[..., None]


def tiny_cfg(**over) -> PretrainConfig:
    base = dict(backbone={"name": "small", "width": 8}, head={"hidden_dims": [32], "out_dim": 16},
                epochs=2, batch_size=64, optim={"lr": 0.5, "warmup_epochs": 0},
                sparsehead={"form": "l1", "lambda": 1e-3})
    base.update(over)
    return PretrainConfig.model_validate(base)


def test_two_epochs_loss_falls_and_metrics_are_complete(digits):
    torch.set_num_threads(1)
    seen = []
    result = train(tiny_cfg(epochs=3), digits, seed=0, progress=False,
                   callbacks=[lambda e, m, enc: seen.append((e, m))])
    hist = result.history
    assert [e for e, _ in seen] == [1, 2, 3]
    assert hist[-1]["loss_total"] < hist[0]["loss_total"]
    for key in ("loss_total", "loss_ssl", "sparse_reg", "head_sparsity", "lr", "img_per_s",
                "head_l1_layer0", "head_l1_layer1"):
        assert key in hist[0] and np.isfinite(hist[0][key])
    # loss_total = loss_ssl + lambda * R holds per step, hence for the epoch means.
    assert hist[0]["loss_total"] == pytest.approx(hist[0]["loss_ssl"] + 1e-3 * hist[0]["sparse_reg"], rel=1e-5)
    assert not result.encoder.training


def test_resume_equals_uninterrupted(digits, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(epochs=3)
    full = train(cfg, digits, seed=3, out_dir=tmp_path / "full", progress=False)

    with pytest.raises(Crash):
        train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False, callbacks=[crash_after(2)],
              meta={"run_id": "abc"})
    meta = read_checkpoint_meta(tmp_path / "resumed" / CHECKPOINT)
    assert meta["epoch"] == 2 and meta["meta"] == {"run_id": "abc"}
    resumed = train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    a, b = full.encoder.state_dict(), resumed.encoder.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss_total"] for h in full.history] == [h["loss_total"] for h in resumed.history]


def test_same_seed_same_weights_other_seed_differs(digits):
    torch.set_num_threads(1)
    cfg = tiny_cfg(epochs=1)
    w = [train(cfg, digits, seed=s, progress=False).encoder.head.linear_layers()[0].weight for s in (5, 5, 6)]
    assert torch.equal(w[0], w[1])
    assert not torch.equal(w[0], w[2])


def test_checkpoint_of_other_params_is_not_resumed(digits, tmp_path):
    torch.set_num_threads(1)
    train(tiny_cfg(epochs=1), digits, seed=0, out_dir=tmp_path, progress=False)
    other = train(tiny_cfg(epochs=1, sparsehead={"form": "group", "lambda": 0.1}), digits, seed=0,
                  out_dir=tmp_path, progress=False)
    assert other.resumed_from == 0
    assert len(other.history) == 1


def test_lambda_zero_is_plain_simclr_and_large_lambda_sparsifies(digits):
    torch.set_num_threads(1)
    plain = train(tiny_cfg(epochs=2, sparsehead={"lambda": 0.0}), digits, seed=0, progress=False).history[-1]
    assert plain["loss_total"] == pytest.approx(plain["loss_ssl"], rel=1e-6)
    sparse = train(tiny_cfg(epochs=2, sparsehead={"lambda": 0.05}), digits, seed=0, progress=False).history[-1]
    assert sparse["head_sparsity"] > plain["head_sparsity"]
    assert sparse["sparse_reg"] < plain["sparse_reg"]


def test_too_few_images_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="too few"):
        train(tiny_cfg(), digits[:1], progress=False)


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.0, abs=1e-12)


def test_lars_scales_the_step_by_the_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars": False}], lr=1.0, momentum=0.0,
               weight_decay=0.0, eta=0.1)
    w.grad = torch.tensor([[0.0, 10.0]])  # ||g|| = 10: trust = 0.1 * 5 / 10 = 0.05
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0 - 0.5]]))
    assert torch.allclose(b.detach(), torch.tensor([-1.0]))  # plain SGD for the excluded group


def test_resume_with_another_thread_count_warns(digits, tmp_path, caplog):
    torch.set_num_threads(1)
    cfg = tiny_cfg(epochs=2)
    train(cfg, digits, seed=0, out_dir=tmp_path, progress=False, epochs=2)
    assert read_checkpoint_meta(tmp_path / CHECKPOINT)["num_threads"] == 1
    torch.set_num_threads(2)
    try:
        with caplog.at_level("WARNING", logger="pipeline.engine.trainer"):
            resumed = train(cfg, digits, seed=0, out_dir=tmp_path, progress=False, epochs=2)
    finally:
        torch.set_num_threads(1)
    assert resumed.resumed_from == 2
    assert any("written with 1 CPU threads, this run has 2" in r.getMessage() for r in caplog.records)


def test_trainers_in_lockstep_equal_train_alone(digits):
    # The tuning objective advances several seeds one epoch at a time: each must be what it is alone.
    torch.set_num_threads(1)
    cfg = tiny_cfg(epochs=2)
    alone = {s: train(cfg, digits, seed=s, progress=False).encoder.state_dict() for s in (0, 1)}
    runs = {s: Trainer(cfg, digits, seed=s, progress=False) for s in (0, 1)}
    for _ in range(2):
        for run in runs.values():
            run.train_epoch()
    for s, run in runs.items():
        assert run.finished and run.epochs_done == 2
        with pytest.raises(RuntimeError, match="all 2 epochs"):
            run.train_epoch()
        together = run.result().encoder.state_dict()
        assert all(torch.equal(together[k], alone[s][k]) for k in together)
