"""DVC stage ``pretrain``: SimCLR + SparseHead on the prepared data; logs to MLflow."""

import argparse

from pipeline.cli import run
from pipeline.config import Params
from pipeline.pretraining import pretrain_and_log


def body(params: Params, args: argparse.Namespace) -> None:
    cfg = params.pretrain
    outcome = pretrain_and_log(params, cfg, cfg.out_dir, run_name="pretrain", metrics_path="metrics/pretrain.json")
    final = outcome.result.final
    print(f"pretrain: run {outcome.run_id}: loss {final['loss_total']:.4f}, "
          f"head sparsity {final['head_sparsity']:.3f}, {final['img_per_s']:.0f} img/s -> {outcome.encoder_path}")


if __name__ == "__main__":
    run("pretrain", body)
