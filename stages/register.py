"""DVC stage ``register``: the final encoder into the MLflow Model Registry; the alias moves only on a win."""

import argparse

from pipeline.cli import run
from pipeline.config import Params
from pipeline.registration import register_model_dir


def body(params: Params, args: argparse.Namespace) -> None:
    reg = params.registry
    result, record = register_model_dir(params, params.final.out_dir, params.final.out_metrics,
                                        params.tune.best_params)
    before = (f"version {result.champion_version} ({reg.metric} {result.champion_value})"
              if result.champion_version else "none")
    verdict = (f"now @{reg.alias}" if result.promoted
               else f"registered, but @{reg.alias} stays on version {result.champion_version}")
    print(f"register: {result.name} version {result.version}, {reg.metric} {result.challenger_value:.4f}: "
          f"{verdict} (previous {reg.alias}: {before}) -> {reg.out_info}")


if __name__ == "__main__":
    run("register", body)
