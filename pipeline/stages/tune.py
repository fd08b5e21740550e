"""The ``tune`` stage: one worker of the Optuna study of the SparseHead lambda (and form).

Run ``python -m stages.tune`` in several processes (or on several machines, against PostgreSQL) to
share one study's trials; each worker writes the report when it finishes, the last one the complete one.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.tuning.report import summary, write_report
from pipeline.tuning.worker import run_tuning


def run(params: Params, args: object = None) -> None:
    outcome = run_tuning(params, progress=True)
    best, metrics = write_report(outcome, params)
    print(summary(best, metrics))
    print(f"tune: this worker ran {outcome.ran} trial(s) in {outcome.seconds:.1f} s; storage {outcome.storage_url}; "
          f"-> {params.tune.best_params}, {params.tune.out_metrics}")
