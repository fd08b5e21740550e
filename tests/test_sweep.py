"""``python -m pipeline.sweep``: every configuration on every seed, the table and the CSV."""

import csv
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from pipeline.sweep import COLUMNS, main


def test_sweep_trains_every_configuration_on_every_seed(prepared_dir: Path, capsys):
    params = {"pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                           "batch_size": 32, "epochs": 1, "device": "cpu", "optim": {"warmup_epochs": 0}},
              "evaluate": {"val_fraction": 0.25, "knn_k": [3], "probe": {"epochs": 2, "weight_decays": [0.0]}}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["--lambdas", "0", "0.5", "--updates", "gradient", "proximal", "--seeds", "0", "1",
                 "--out", "sweep.csv"]) == 0
    rows = list(csv.DictReader(Path("sweep.csv").read_text().splitlines()))
    assert [(r["update"], float(r["lambda"]), int(r["seed"])) for r in rows] == [
        ("-", 0.0, 0), ("-", 0.0, 1), ("gradient", 0.5, 0), ("gradient", 0.5, 1),
        ("proximal", 0.5, 0), ("proximal", 0.5, 1)]
    assert all(0.0 <= float(r[c]) <= 1.0 for r in rows for c in COLUMNS if c != "rankme_z")
    assert float(rows[0]["exact_zeros"]) == 0.0 and float(rows[4]["exact_zeros"]) > 0.0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| simclr")]
    assert len(table) == 3 and "±" in table[1] and "[" in table[1]

    # In MLflow as the study: a parent run with the CSV and the table, one nested run per configuration.
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sparsehead")
    [parent] = client.search_runs([exp.experiment_id], "tags.stage = 'sweep' and tags.`mlflow.parentRunId` IS NULL")
    assert parent.info.run_name == "sweep simclr lambdas 0 0.5 seeds 0,1"
    assert parent.data.params["sweep.updates"] == "gradient proximal"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep.csv", "sweep.md"}
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"sweep simclr lambda 0 seed 0,1", "sweep simclr lambda 0.5 seed 0,1",
                            "sweep simclr lambda 0.5 proximal seed 0,1"}
    proximal = by_name["sweep simclr lambda 0.5 proximal seed 0,1"].data.metrics
    seeds = [r for r in rows if r["update"] == "proximal"]
    assert abs(proximal["test_linear.seed1"] - float(seeds[1]["test_linear"])) < 1e-6
    assert abs(proximal["test_linear"] - sum(float(r["test_linear"]) for r in seeds) / 2) < 1e-5
    assert proximal["gap_ci95_low"] <= proximal["gap_test_linear"] <= proximal["gap_ci95_high"]
    assert "gap_test_linear" not in by_name["sweep simclr lambda 0 seed 0,1"].data.metrics
