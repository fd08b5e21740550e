"""Quality curves while pretraining: their steps in MLflow, the DVC plots, the last kNN point against the
evaluate stage, the collapse warning, and the measures against hand computation."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import Params
from pipeline.engine.monitor import (
    COLLAPSED,
    RANKME_H,
    RANKME_Z,
    SECONDS,
    Z_STD,
    collapse_reason,
    knn_every,
    knn_key,
    normalised_std,
)
from pipeline.stages.evaluate import run_evaluation
from pipeline.stages.pretrain import COLLAPSE_TAG, pretrain_and_log

EPOCHS = 4


def _params(tmp_path: Path, **pretrain: object) -> Params:
    return Params.model_validate({
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "monitor",
                     "artifact_root": str(tmp_path / "mlartifacts")},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": EPOCHS, "device": "cpu", "num_threads": 1, "monitor_every": 3,
                     **pretrain},
        "evaluate": {"batch_size": 64, "knn_k": [5, 20], "probe": {"epochs": 2}},
    })


def test_curves_are_logged_with_their_steps_written_as_plots_and_end_at_the_evaluation(prepared_dir):
    params = _params(prepared_dir)
    outcome = pretrain_and_log(params, params.pretrain, "models/pretrain", run_name="pretrain",
                               plots_dir="plots/pretrain", progress=False)
    client = MlflowClient()
    knn = knn_key(5)  # the smallest evaluate.knn_k

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(outcome.run_id, key))

    for key in (RANKME_H, RANKME_Z, Z_STD, COLLAPSED, "loss_total"):
        assert steps(key) == [1, 2, 3, 4], key
    assert steps(knn) == [3, 4]  # every 3 epochs, and the last
    history = outcome.result.history
    logged = {m.step: m.value for m in client.get_metric_history(outcome.run_id, RANKME_Z)}
    assert logged == {e: pytest.approx(h[RANKME_Z]) for e, h in enumerate(history, 1)}
    for h in history:
        assert 1.0 <= h[RANKME_Z] <= 8.0 and 1.0 <= h[RANKME_H] <= 16.0  # at most min(N, d)
        assert h[SECONDS] > 0

    with open("plots/pretrain/curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["rankme_z"]) for r in rows] == pytest.approx([h[RANKME_Z] for h in history], rel=1e-7)
    assert [float(r["loss_total"]) for r in rows] == pytest.approx([h["loss_total"] for h in history], rel=1e-7)
    with open("plots/pretrain/knn.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), float(r["val_knn_top1"])) for r in rows] == [
        (3, pytest.approx(history[2][knn], rel=1e-7)), (4, pytest.approx(history[3][knn], rel=1e-7))]

    # The last point is what the evaluate stage reports: the same split, features and kNN.
    metrics = run_evaluation(params, "models/pretrain", "metrics/eval.json", None, progress=False)
    assert history[-1][knn] == metrics["val_knn5_top1"]


def test_a_collapse_is_logged_once_and_tags_the_run(prepared_dir, caplog):
    # A proximal lambda this large zeroes the head in its first steps: z is its bias, the same for every image.
    params = _params(prepared_dir, sparsehead={"lambda": 50.0, "update": "proximal"}, optim={"warmup_epochs": 1})
    with caplog.at_level(logging.WARNING, logger="pipeline.engine.monitor"):
        outcome = pretrain_and_log(params, params.pretrain, "models/pretrain", run_name="pretrain", progress=False)
    history = outcome.result.history
    assert history[0]["head_exact_zero_frac"] == 1.0
    assert [h[COLLAPSED] for h in history] == [0.0, 1.0, 1.0, 1.0]  # the warm-up epoch is not checked
    assert history[1][Z_STD] == 0.0 and history[1][RANKME_Z] == pytest.approx(1.0, abs=1e-4)
    warnings = [r.getMessage() for r in caplog.records if "collapsing" in r.getMessage()]
    assert len(warnings) == 1 and "at epoch 2: the normalised std of z is 0.000" in warnings[0]
    tag = MlflowClient().get_run(outcome.run_id).data.tags[COLLAPSE_TAG]
    assert tag.startswith("epoch 2: the normalised std of z is 0.000") and "RankMe of z is 1.00" in tag


def test_collapse_reason_on_known_clouds():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 16, generator=g)
    assert normalised_std(iso) == pytest.approx(1.0, abs=0.02)
    assert collapse_reason(16.0, normalised_std(iso)) is None
    point = torch.ones(100, 16) * torch.randn(16, generator=g)
    assert normalised_std(point) == pytest.approx(0.0, abs=1e-12)
    assert "normalised std of z is 0.000" in collapse_reason(1.0, normalised_std(point))
    # A line through the origin: two antipodal points spread well but span one direction.
    line = torch.sign(torch.randn(100, 1, generator=g)) * torch.randn(16, generator=g)
    assert normalised_std(line) > 0.5
    assert collapse_reason(1.0, normalised_std(line)) == "RankMe of z is 1.00 (< 1.5)"


def test_knn_points_per_run():
    assert knn_every(None, 50) == 10 and knn_every(None, 3) == 1 and knn_every(None, 11) == 3
    assert knn_every(7, 50) == 7


def test_normalised_std_by_hand():
    z = torch.tensor([[3.0, 4.0], [4.0, 3.0]])  # rows of norm 5
    zn = np.array([[0.6, 0.8], [0.8, 0.6]])
    expected = zn.std(axis=0, ddof=1).mean() * np.sqrt(2)
    assert normalised_std(z) == pytest.approx(expected, rel=1e-12)
