"""DVC stage ``evaluate``: linear probe, kNN, collapse metrics and head sparsity of the pretrained encoder."""

import argparse

from pipeline.cli import run
from pipeline.config import Params
from pipeline.evaluation.report import summary
from pipeline.evaluation.stage import run_evaluation


def body(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate
    metrics = run_evaluation(params, params.pretrain.out_dir, cfg.out_metrics, cfg.plots_dir)
    print(f"evaluate: {cfg.out_metrics}, plots in {cfg.plots_dir}")
    print(summary(metrics, min(cfg.knn_k)))


if __name__ == "__main__":
    run("evaluate", body)
