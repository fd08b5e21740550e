"""DVC stage ``tune``: the Optuna study of the SparseHead lambda (and form); one worker of it.

Run ``python -m stages.tune`` in several processes (or on several machines, against PostgreSQL) to
share one study's trials; each worker writes the report when it finishes, the last one the complete one.
"""

import argparse

from pipeline.cli import run
from pipeline.config import Params
from pipeline.tuning.report import summary, write_report
from pipeline.tuning.worker import run_tuning


def body(params: Params, args: argparse.Namespace) -> None:
    outcome = run_tuning(params, progress=True)
    best, metrics = write_report(outcome, params)
    print(summary(best, metrics))
    print(f"tune: this worker ran {outcome.ran} trial(s) in {outcome.seconds:.1f} s; storage {outcome.storage_url}; "
          f"-> {params.tune.best_params}, {params.tune.out_metrics}")


if __name__ == "__main__":
    run("tune", body)
