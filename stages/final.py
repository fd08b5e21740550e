"""DVC stage ``final``: retrain with the best lambda and form at the full budget, and evaluate it."""

import argparse

from pipeline.cli import run
from pipeline.config import Params
from pipeline.evaluation.report import summary
from pipeline.final import train_final


def body(params: Params, args: argparse.Namespace) -> None:
    outcome, metrics, best = train_final(params)
    if not metrics:  # a torchrun rank other than 0
        return
    who = "baseline, lambda 0" if best.get("baseline") else f"lambda {best['lambda']:.3g}, {best['form']}"
    print(f"final: run {outcome.run_id} ({who}) -> {outcome.encoder_path}")
    print(summary(metrics, min(params.evaluate.knn_k)))


if __name__ == "__main__":
    run("final", body)
