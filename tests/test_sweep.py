"""``python -m pipeline.sweep``: every configuration on every seed, the table and the CSV."""

import csv
from pathlib import Path

import yaml

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
