"""A study's report: ``best_params.json``, ``metrics/tune.json`` (:mod:`.answer`), ``trials.csv``
(:mod:`.table`) and the figures (:mod:`.plots`), written and logged to the study's MLflow parent run.
The README ("Tuning lambda") describes each file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.tracking.trials import log_study_report
from pipeline.tuning.answer import answer, best_params, tune_metrics
from pipeline.tuning.plots import param_importances, plot_history, plot_importances, plot_lambda
from pipeline.tuning.space import SearchSpace
from pipeline.tuning.table import trial_rows, write_trials_csv
from pipeline.tuning.worker import TuneOutcome


def write_report(outcome: TuneOutcome, params: Params) -> tuple[dict, dict[str, Any]]:
    """Write every output of the study and log it to its MLflow parent run.

    Args:
        outcome: What the worker left (the study, its storage and parent run, the objective's resolution).
        params: The pipeline's parameters (output paths, ``tune.select``).

    Returns:
        ``best_params.json`` and ``metrics/tune.json`` as written.

    Raises:
        UserError: No trial of the study completed.
    """
    t = params.tune
    study = outcome.study
    rows = trial_rows(study)
    ans = answer(study, params, outcome.resolution)
    best = best_params(ans, params, study.study_name, outcome.storage_url, outcome.parent_run_id)
    metrics = tune_metrics(ans, params, outcome.counts)
    plots_dir = Path(t.plots_dir)
    files = [write_trials_csv(plots_dir / "trials.csv", rows),
             plot_history(plots_dir / "history.png", rows, t.objective),
             plot_lambda(plots_dir / "lambda.png", rows, t.objective)]
    importances = param_importances(study, SearchSpace.from_params(params))
    if importances is not None:
        files.append(plot_importances(plots_dir / "importances.png", importances))
        metrics.update({f"importance_{k}": float(v) for k, v in importances.items()})
    else:
        (plots_dir / "importances.png").unlink(missing_ok=True)  # a stale one would describe another study
    write_json(t.best_params, best)
    # The study's MLflow parent run beside its figures, as pretrain's metrics name their run.
    written: dict[str, Any] = {**metrics, "mlflow_parent_run_id": outcome.parent_run_id}
    write_json(t.out_metrics, written)
    log_study_report(params, outcome.parent_run_id, {**metrics, "seconds": outcome.seconds},
                     {"best.trial": str(ans.best.number), "choice": best["choice"], "choice.reason": best["reason"],
                      "chosen.trial": str(best["trial"]), "chosen.lambda": str(best["lambda"]),
                      "chosen.method": best["method"]},
                     [*files, Path(t.best_params), Path(t.out_metrics)])
    return best, written
