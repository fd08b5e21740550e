"""Evaluation: probe, kNN, collapse metrics, extraction, evaluate_encoder and the stage end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.cli import stage_main
from pipeline.config import EvaluateConfig, Params, ProbeConfig, load_params
from pipeline.data.format import Dataset, Split, save_dataset
from pipeline.data.preprocess import InputSpec
from pipeline.evaluation import (
    dims_for_share,
    evaluate_encoder,
    extract_features,
    knn_accuracy,
    knn_predict,
    knn_score,
    linear_probe,
    random_encoder,
    rankme,
    singular_values,
    spectrum_stats,
    validation_report,
)
from pipeline.evaluation.report import fmt, ssl_gain_warning, summary
from pipeline.evaluation.spectrum import log_spectrum
from pipeline.models import Encoder, EncoderSpec, save_encoder
from pipeline.stages.evaluate import run as evaluate_body
from pipeline.stages.evaluate import run_evaluation
from pipeline.summary import summarise

torch.set_num_threads(1)

TINY_SPEC = EncoderSpec("small", InputSpec(8, 1, (0.5,), (0.25,)), width=4, head_hidden=[16], head_out=8)
KNN_K = [2, 5]


def _tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(TINY_SPEC)
    # Non-trivial running statistics, so that eval-mode batch norm is not the identity.
    enc.train()
    with torch.no_grad():
        enc.forward_both(torch.rand(16, 1, 8, 8))
    return enc.eval()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def _split(n: int, num_classes: int, seed: int) -> Split:
    # Classes differ in brightness, so that features carry some signal.
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    base = (labels * (200 // num_classes))[:, None, None, None]
    images = (base + rng.integers(0, 56, (n, 8, 8, 1))).clip(0, 255).astype(np.uint8)
    return Split(images, labels)


def _tiny_eval_cfg(**kw: object) -> EvaluateConfig:
    return EvaluateConfig(batch_size=16, knn_k=KNN_K, probe=ProbeConfig(epochs=5, batch_size=16,
                                                                        weight_decays=[0.0, 1e-3]), **kw)


# ---------------------------------------------------------------- linear probe


def _blobs(n: int, d: int, c: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * scale
    y = torch.arange(n) % c
    return centres[y] + torch.randn(n, d, generator=g), y


def test_probe_separable_features_reach_full_accuracy():
    xtr, ytr = _blobs(300, 16, 10, 0, scale=10.0)
    xval, yval = _blobs(100, 16, 10, 1, scale=10.0)
    xte, yte = _blobs(100, 16, 10, 2, scale=10.0)
    cfg = ProbeConfig(epochs=30, lr=0.1, batch_size=64, weight_decays=[0.0, 1e-4, 1e-2])
    res = linear_probe(xtr, ytr, xval, yval, xte, yte, 10, cfg, seed=0)
    assert res.val_top1 == 1.0 and res.test_top1 == 1.0 and res.test_top5 == 1.0
    assert res.weight_decay in cfg.weight_decays
    assert set(res.val_top1_by_wd) == set(cfg.weight_decays)
    np.testing.assert_array_equal(res.test_pred, yte.numpy())


def test_probe_on_noise_labels_is_at_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xval, xte = (torch.randn(n, 32, generator=g) for n in (400, 400, 400))
    ytr, yval, yte = (torch.randint(0, 10, (400,), generator=g) for _ in range(3))
    cfg = ProbeConfig(epochs=20, batch_size=64, weight_decays=[0.0, 1e-2])
    res = linear_probe(xtr, ytr, xval, yval, xte, yte, 10, cfg, seed=0)
    # Chance is 0.1; 400 samples give a standard error of 0.015, and the val pick is optimistic.
    assert res.test_top1 < 0.17
    assert 0.35 < res.test_top5 < 0.65  # chance top-5 is 0.5


def test_probe_is_deterministic_under_a_seed_and_top5_clips_to_class_count():
    xtr, ytr = _blobs(60, 8, 3, 0, scale=1.0)
    xval, yval = _blobs(30, 8, 3, 1, scale=1.0)
    cfg = ProbeConfig(epochs=5, batch_size=16, weight_decays=[0.0, 1e-3])
    a = linear_probe(xtr, ytr, xval, yval, xval, yval, 3, cfg, seed=7)
    b = linear_probe(xtr, ytr, xval, yval, xval, yval, 3, cfg, seed=7)
    assert a.val_top1_by_wd == b.val_top1_by_wd
    np.testing.assert_array_equal(a.test_pred, b.test_pred)
    assert a.val_top5 == 1.0  # 3 classes: the top 5 hold every class


def test_probe_rejects_out_of_range_labels():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="train labels"):
        linear_probe(x, torch.full((10,), 3), x, torch.zeros(10, dtype=torch.long), None, None, 3,
                     ProbeConfig(epochs=1), seed=0)


# ---------------------------------------------------------------- kNN

# Four unit vectors and their classes; the query (1, 0) has cosine similarities 1, 0.6, 0.8, -1 to them.
KNN_TRAIN = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, -0.6], [-1.0, 0.0]])
KNN_LABELS = torch.tensor([0, 1, 1, 0])


def _hand_vote(sims: list[float], labels: list[int], t: float) -> int:
    votes = [0.0, 0.0]
    for s, y in zip(sims, labels, strict=True):
        votes[y] += math.exp(s / t)
    return int(np.argmax(votes))


def test_knn_matches_hand_computation():
    # Query 0 is (1, 0) scaled by 3 (cosine ignores scale); query 1 is (-1, 0.2).
    queries = torch.tensor([[3.0, 0.0], [-1.0, 0.2]])
    q1 = np.array([-1.0, 0.2]) / math.hypot(1.0, 0.2)
    sims_q1 = (KNN_TRAIN.numpy().astype(np.float64) @ q1).tolist()
    order_q1 = np.argsort(sims_q1)[::-1]
    for t in (0.1, 1.0):
        preds = knn_predict(KNN_TRAIN, KNN_LABELS, queries, [2, 3, 10], t, num_classes=2)
        # Query 0, k=2: neighbours sim 1 (class 0) and 0.8 (class 1): class 0 at any t.
        assert preds[2][0].item() == 0
        # k=3 adds sim 0.6 (class 1): e^10 > e^8 + e^6 at t=0.1, but e^1 < e^0.8 + e^0.6 at t=1.
        assert preds[3][0].item() == _hand_vote([1.0, 0.8, 0.6], [0, 1, 1], t) == (0 if t == 0.1 else 1)
        # k=10 is clipped to the 4 training points.
        assert preds[10][0].item() == _hand_vote([1.0, 0.6, 0.8, -1.0], [0, 1, 1, 0], t)
        for k in (2, 3):
            idx = order_q1[:k]
            expected = _hand_vote([sims_q1[i] for i in idx], [int(KNN_LABELS[i]) for i in idx], t)
            assert preds[k][1].item() == expected
    acc = knn_accuracy(KNN_TRAIN, KNN_LABELS, queries, torch.tensor([1, 0]), [3], 1.0, 2)
    assert acc[3] == pytest.approx(1.0)  # at t=1, query 0 votes class 1 and query 1 votes class 0


def test_knn_chunking_does_not_change_predictions():
    g = torch.Generator().manual_seed(0)
    tr, q = torch.randn(50, 6, generator=g), torch.randn(23, 6, generator=g)
    ytr = torch.randint(0, 4, (50,), generator=g)
    whole = knn_predict(tr, ytr, q, [1, 5, 20], 0.1, 4)
    chunked = knn_predict(tr, ytr, q, [1, 5, 20], 0.1, 4, chunk_size=4)
    for k in whole:
        assert torch.equal(whole[k], chunked[k])
    # k=1 is the nearest neighbour's label.
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(tr, dim=1).T
    assert torch.equal(whole[1], ytr[sims.argmax(dim=1)])


# ---------------------------------------------------------------- spectrum


def test_rankme_on_a_known_spectrum():
    # p = (1/2, 1/4, 1/8, 1/8): entropy 1.75 ln 2, so exp(entropy) = 2 ** 1.75.
    assert rankme(np.array([4.0, 2.0, 1.0, 1.0])) == pytest.approx(2**1.75, rel=1e-5)
    assert rankme(np.ones(7)) == pytest.approx(7.0, rel=1e-5)
    assert rankme(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0, abs=1e-4)


def test_rankme_isotropic_is_d_and_rank_one_is_one():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, 16, generator=g)
    assert spectrum_stats(iso).rankme == pytest.approx(16.0, abs=0.1)
    direction = torch.randn(16, generator=g)
    rank_one = torch.randn(500, 1, generator=g) * direction
    stats = spectrum_stats(rank_one)
    assert stats.rankme == pytest.approx(1.0, abs=1e-3)
    assert stats.dims99 == 1


def test_spectrum_matches_numpy_covariance_of_normalised_features():
    g = torch.Generator().manual_seed(1)
    # Features in a 3-d subspace of 10-d: only 3 non-zero variances.
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 10, generator=g, dtype=torch.float64)
    stats = spectrum_stats(x)
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    expected = np.linalg.svd(np.cov(xn, rowvar=False), compute_uv=False)
    np.testing.assert_allclose(stats.singular_values, expected, atol=1e-12)
    assert np.all(np.diff(stats.singular_values) <= 0)
    assert stats.singular_values[3:].max() < 1e-12
    assert stats.dims99 <= 3
    assert stats.rankme_l2 == pytest.approx(rankme(np.linalg.svd(xn, compute_uv=False)), rel=1e-6)


def test_rankme_is_the_published_one_on_the_raw_matrix():
    # Garrido et al.: singular values of the raw feature matrix. Rows of very different norms make the
    # raw and the row-normalised variants disagree; each must match its own SVD.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.tensor([10.0, 5, 1, 1, 0.5, 0.1],
                                                                               dtype=torch.float64)
    x[:50] *= 20.0
    stats = spectrum_stats(x)
    raw = rankme(np.linalg.svd(x.numpy(), compute_uv=False))
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    normalised = rankme(np.linalg.svd(xn, compute_uv=False))
    assert stats.rankme == pytest.approx(raw, rel=1e-6)
    assert stats.rankme_l2 == pytest.approx(normalised, rel=1e-6)
    assert abs(raw - normalised) > 0.1


def test_rankme_with_fewer_samples_than_dimensions_takes_min_n_d_singular_values():
    # Garrido et al.: the min(N, d) singular values. With N = 5 < d = 40, the d x d Gram matrix has 35
    # zero eigenvalues, whose eps terms would add to the entropy; the rank must be numpy's SVD's.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 40, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    assert s.shape == (5,)
    p = s / s.sum() + 1e-7
    by_hand = float(np.exp(-(p * np.log(p)).sum()))
    assert singular_values(x).shape == (5,)
    np.testing.assert_allclose(singular_values(x), s, rtol=1e-10)
    assert spectrum_stats(x).rankme == pytest.approx(by_hand, rel=1e-10)
    padded = np.concatenate([s, np.zeros(35)])  # d values, as a d x d Gram matrix gives them
    assert rankme(padded) != pytest.approx(by_hand, rel=1e-6)  # the difference the test can see
    assert spectrum_stats(x.T.contiguous()).rankme == pytest.approx(by_hand, rel=1e-10)  # N > d: the same


def test_dims99_on_known_spectra():
    assert dims_for_share(np.array([90.0, 9.0, 0.9, 0.1])) == 2  # 99% reached exactly at 2
    assert dims_for_share(np.array([90.0, 8.9, 1.0, 0.1])) == 3
    assert dims_for_share(np.array([0.1, 8.9, 90.0, 1.0])) == 3  # order does not matter
    assert dims_for_share(np.ones(100)) == 99


# ---------------------------------------------------------------- extraction


def test_extraction_is_deterministic_and_independent_of_batch_size():
    enc = _tiny_encoder()
    enc.train()  # extraction must switch to eval and restore the mode afterwards
    images = _images(64, 0)
    runs = [extract_features(enc, images, batch_size=b) for b in (1, 3, 64)]
    assert enc.training
    again = extract_features(enc, images, batch_size=3)
    assert torch.equal(again.h, runs[1].h) and torch.equal(again.z, runs[1].z)
    assert runs[0].h.shape == (64, enc.feature_dim) and runs[0].z.shape == (64, enc.projection_dim)
    for f in runs[1:]:
        # Equal up to float rounding of differently blocked convolutions.
        torch.testing.assert_close(f.h, runs[0].h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f.z, runs[0].z, rtol=1e-5, atol=1e-6)
    # Reference: the encoder applied by hand in eval mode to the shared pre-processing.
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        h_ref, z_ref = enc.eval().forward_both(x)
    torch.testing.assert_close(runs[2].h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(runs[2].z, z_ref, rtol=1e-5, atol=1e-6)


def test_extraction_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="images must be"):
        extract_features(_tiny_encoder(), np.zeros((2, 8, 8, 3), np.uint8))


# ---------------------------------------------------------------- evaluate_encoder


def _expected_keys(prefix: str = "") -> set[str]:
    keys = set()
    for s in ("", "_z"):
        keys |= {f"{split}_linear_top{k}{s}" for split in ("val", "test") for k in (1, 5)}
        keys |= {f"{split}_knn{k}_top1{s}" for split in ("val", "test") for k in KNN_K}
        keys |= {f"rankme{s}", f"rankme_l2{s}", f"dims99{s}", f"linear_weight_decay{s}"}
    keys |= {"head_l1_layer0", "head_l1_layer1", "head_sparsity_layer0", "head_sparsity_layer1", "head_sparsity", "head_exact_zero_frac",
             "head_features_used", "head_features_used_frac"}
    return {prefix + k for k in keys}


ALL_KEYS = (_expected_keys() | _expected_keys("random_")
            | {"ssl_gain_linear", "ssl_gain_knn", "num_train", "num_val", "num_test", "eval_seconds",
               "eval_extract_seconds", "eval_linear_seconds", "eval_knn_seconds", "eval_spectrum_seconds"})


def test_evaluate_encoder_reports_every_documented_key():
    enc = _tiny_encoder()
    train, val, test = _split(30, 3, 0), _split(15, 3, 1), _split(12, 3, 2)
    cfg = _tiny_eval_cfg()
    res = evaluate_encoder(enc, train, val, test, 3, cfg, "cpu", seed=0)
    m = res.metrics
    assert set(m) == ALL_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert m["ssl_gain_linear"] == pytest.approx(m["test_linear_top1"] - m["random_test_linear_top1"])
    assert m["ssl_gain_knn"] == pytest.approx(m["test_knn2_top1"] - m["random_test_knn2_top1"])
    assert (m["num_train"], m["num_val"], m["num_test"]) == (30.0, 15.0, 12.0)
    assert set(res.spectra) == {"backbone", "projection", "random_backbone", "random_projection"}
    assert res.spectra["backbone"].shape == (enc.feature_dim,)
    np.testing.assert_array_equal(res.test_labels, test.labels)
    assert res.test_pred.shape == (12,)
    # The confusion predictions are the h probe's: their accuracy is test_linear_top1.
    assert (res.test_pred == test.labels).mean() == pytest.approx(m["test_linear_top1"])
    # The tuning scores reuse the same code on validation, with the same numbers.
    assert knn_score(enc, train, val, cfg, "cpu") == pytest.approx(m["val_knn2_top1"])
    rep = validation_report(enc, train, val, 3, cfg, "cpu", 0, "linear")
    assert rep["linear"] == pytest.approx(m["val_linear_top1"])
    assert rep["knn"] == pytest.approx(m["val_knn2_top1"])
    assert (rep["rankme"], rep["rankme_z"]) == (pytest.approx(m["rankme"]), pytest.approx(m["rankme_z"]))
    assert "linear" not in validation_report(enc, train, val, 3, cfg, "cpu", 0, "knn")


def test_evaluate_encoder_without_test_or_random_baseline():
    res = evaluate_encoder(_tiny_encoder(), _split(30, 3, 0), _split(15, 3, 1), None, 3,
                           _tiny_eval_cfg(random_baseline=False), "cpu", seed=0)
    assert not any(k.startswith(("test_", "random_", "ssl_gain")) for k in res.metrics)
    assert "val_linear_top1_z" in res.metrics and res.test_pred is None


# ---------------------------------------------------------------- the stage, end to end


@pytest.fixture
def stage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train, test = _split(40, 4, 0), _split(16, 4, 1)
    save_dataset(Dataset(train, test, ["a", "b", "c", "d"], "synthetic"), tmp_path / "data" / "prepared")
    raw = {
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "artifact_root": str(tmp_path / "mlartifacts"), "experiment": "eval-test"},
        "prepare": {"out_dir": "data/prepared"},
        "pretrain": {"out_dir": "models/pretrain", "device": "cpu"},
        "evaluate": {"batch_size": 16, "knn_k": KNN_K, "val_fraction": 0.25,
                     "probe": {"epochs": 5, "batch_size": 16, "weight_decays": [0.0, 1e-3]}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    model_dir = tmp_path / "models" / "pretrain"
    save_encoder(_tiny_encoder(), model_dir / "encoder.pt", {"epochs": 1})
    return tmp_path, params


def test_evaluate_stage_writes_metrics_plots_and_logs_to_the_pretrain_run(stage_dir, capsys):
    tmp_path, params = stage_dir
    # What pretrain leaves behind: a run in the store and its id beside the encoder.
    with tracking.start_run(params.tracking, run_name="pretrain") as run:
        tracking.log_metrics({"loss_total": 1.0})
    tracking.write_run_id(tmp_path / "models" / "pretrain" / "run_id", run.info.run_id)
    assert stage_main("evaluate", evaluate_body, argv=["--params", str(tmp_path / "params.yaml")]) == 0
    assert "linear top-1" in capsys.readouterr().out

    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    # Timings go to MLflow only: the metrics file that `dvc metrics diff` compares holds results.
    timings = {k for k in ALL_KEYS if k.endswith("_seconds")}
    assert timings and set(metrics) == ALL_KEYS - timings
    assert metrics["num_test"] == 16.0 and metrics["num_train"] + metrics["num_val"] == 40.0

    plots = tmp_path / "plots" / "eval"
    for level in ("backbone", "projection"):
        for name in (f"spectrum_{level}.csv", f"random_spectrum_{level}.csv"):
            with (plots / name).open() as f:
                rows = list(csv.DictReader(f))
            dim = 16 if level == "backbone" else 8
            assert [int(r["index"]) for r in rows] == list(range(1, dim + 1))
            logs = [float(r["log_singular_value"]) for r in rows]
            assert logs == sorted(logs, reverse=True)
        assert (plots / f"spectrum_{level}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (plots / "confusion.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and set(rows[0]) == {"actual", "predicted"}
    assert {r["actual"] for r in rows} == {"a", "b", "c", "d"}
    assert (plots / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(Path(tmp_path).glob("**/*.tmp"))

    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    run_id = (tmp_path / "models" / "pretrain" / "run_id").read_text().strip()
    logged = client.get_run(run_id).data.metrics
    assert logged["loss_total"] == 1.0  # the pretrain run, resumed rather than a new one
    for key in ("test_linear_top1", "rankme_z", "random_test_knn5_top1", "head_sparsity"):
        assert logged[key] == pytest.approx(metrics[key])
    assert logged["eval_seconds"] > 0  # the timing is in MLflow
    artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "eval")}
    assert {"eval.json", "confusion.csv", "confusion.png", "spectrum_backbone.csv",
            "spectrum_projection.png"} <= artifacts


def test_an_encoder_no_better_than_random_is_warned_about_and_tagged(stage_dir, capsys):
    tmp_path, params = stage_dir
    # The random encoder itself: the SSL gain is exactly 0.
    save_encoder(random_encoder(TINY_SPEC, params.seed), tmp_path / "models" / "pretrain" / "encoder.pt", {})
    with tracking.start_run(params.tracking, run_name="pretrain") as run:
        pass
    tracking.write_run_id(tmp_path / "models" / "pretrain" / "run_id", run.info.run_id)
    assert stage_main("evaluate", evaluate_body, argv=["--params", str(tmp_path / "params.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "not better than a random one" in warnings[0] and "(gain +0.000 <= 0.01)" in warnings[0]
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert metrics["ssl_gain_linear"] == 0.0
    tags = MlflowClient(tracking_uri=params.tracking.tracking_uri).get_run(run.info.run_id).data.tags
    assert tags["ssl_warning"] == warnings[0]
    # The end-of-run summary says it too, under the model's line.
    summary_lines = summarise(params)
    assert summary_lines[0].startswith("evaluate") and summary_lines[1].strip() == warnings[0]


def test_ssl_gain_warning_threshold_and_formatting():
    base = {"test_linear_top1": 0.93, "random_test_linear_top1": 0.92}
    assert ssl_gain_warning({**base, "ssl_gain_linear": 0.0100001}) is None
    line = ssl_gain_warning({**base, "ssl_gain_linear": 0.01})
    assert line is not None and "test linear top-1 0.930 vs random init 0.920 (gain +0.010 <= 0.01)" in line
    assert ssl_gain_warning({"val_linear_top1": 0.5, "random_val_linear_top1": 0.6, "ssl_gain_linear": -0.1})
    assert ssl_gain_warning({"test_linear_top1": 0.9}) is None  # no random reference: nothing to compare
    assert "warning:" in summary({**base, "ssl_gain_linear": -0.02}, 20).splitlines()[-1]
    assert "warning:" not in summary({**base, "ssl_gain_linear": 0.2}, 20)
    assert fmt({"a": 0.5}, "a") == "0.500" and fmt({}, "a") == "n/a"


def test_run_evaluation_fails_with_named_file_on_bad_input(stage_dir):
    tmp_path, params = stage_dir
    with pytest.raises(FileNotFoundError, match="run_id"):
        run_evaluation(params, "models/pretrain", "metrics/eval.json", "plots/eval")
    tracking.write_run_id(tmp_path / "models" / "pretrain" / "run_id", "0" * 32)  # never reached: fails first
    rgb = EncoderSpec("small", InputSpec(8, 3, (0.5,) * 3, (0.25,) * 3), width=4, head_hidden=[16], head_out=8)
    save_encoder(Encoder(rgb), tmp_path / "models" / "pretrain" / "encoder.pt")
    with pytest.raises(ValueError, match="channels"):
        run_evaluation(params, "models/pretrain", "metrics/eval.json", "plots/eval")
    assert not (tmp_path / "metrics" / "eval.json").exists()


def test_log_spectrum_floors_exact_zeros_relative_to_the_largest():
    logs = log_spectrum(np.array([np.e**2, 1.0, 0.0]))
    np.testing.assert_allclose(logs, [2.0, 0.0, 2.0 + math.log(1e-16)])
    assert np.all(np.isfinite(log_spectrum(np.zeros(3))))
