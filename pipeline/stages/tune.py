"""The ``tune`` stage: one worker of the Optuna study of the SparseHead lambda (and form, update, method).

Run ``python -m stages.tune`` in several processes, or on several machines against PostgreSQL, to share one
study; each worker writes the report when it stops, the last one the complete one.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.tuning.report import write_report
from pipeline.tuning.worker import run_tuning


def summary(best: dict, m: dict[str, Any]) -> str:
    """The stage's one-line answer: what was chosen and why, the figures over seeds, and the trial counts.

    Args:
        best: ``best_params.json``.
        m: ``metrics/tune.json``.
    """
    who = (f"the {best['method']} baseline (lambda = 0)" if best["baseline"]
           else f"{best['method']} lambda {best['lambda']:.3g} ({best['form']}, {best['update']})")
    gap = ""
    if "gap_mean" in m:
        ci = (f" [{m['gap_ci95_low']:+.4f}, {m['gap_ci95_high']:+.4f}]" if "gap_ci95_low" in m else "")
        p = f", p {m['gap_p_value']:.3g}" if "gap_p_value" in m else ""
        gap = f"; best - baseline {m['gap_mean']:+.4f}{ci}{p}"
    base = f", baseline {m['baseline_mean']:.4f} +- {m['baseline_sd']:.4f}" if "baseline_mean" in m else ""
    return (f"tune: study {best['study']}: chose {who}: {best['reason']}. Best mean {best['objective']} "
            f"{m['best_mean']:.4f} +- {m['best_sd']:.4f} over {m['seeds']:.0f} seeds{base}{gap}; "
            f"{m['trials_complete']:.0f} complete, {m['trials_pruned']:.0f} pruned, {m['trials_failed']:.0f} failed")


def run(params: Params, args: object = None) -> None:
    outcome = run_tuning(params, progress=True)
    best, metrics = write_report(outcome, params)
    print(summary(best, metrics))
    print(f"tune: this worker ran {outcome.ran} trial(s) in {outcome.seconds:.1f} s; storage {outcome.storage_url}; "
          f"-> {params.tune.best_params}, {params.tune.out_metrics}")
