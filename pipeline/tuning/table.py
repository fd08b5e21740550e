"""Every trial of a study as one row: what it trained, its value per seed, mean and sd, what the head did,
and where it ran; written as ``plots/tune/trials.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna

from pipeline.io import atomic_path
from pipeline.tracking.trials import RUN_ATTR
from pipeline.tuning.answer import seed_values, trial_value
from pipeline.tuning.objective import SUMMARY_ATTRS, VALUE_SD_ATTR
from pipeline.tuning.space import FORM_ATTR, LAMBDA_ATTR, UPDATE_ATTR, is_baseline, trial_method
from pipeline.tuning.study import WORKER_ATTR

TRIAL_COLUMNS = ("number", "state", "method", "lambda", "form", "update", "baseline", "value", "sd",
                 "seed_values", *SUMMARY_ATTRS, "last_step", "duration_s", "worker", "mlflow_run_id")


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial, by number, keyed by :data:`TRIAL_COLUMNS` (None where a trial has no value)."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        duration = t.duration.total_seconds() if t.duration is not None else None
        per_seed = seed_values(t)
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "method": trial_method(t),
            "lambda": t.user_attrs.get(LAMBDA_ATTR),
            "form": t.user_attrs.get(FORM_ATTR),
            "update": t.user_attrs.get(UPDATE_ATTR),
            "baseline": is_baseline(t),
            "value": trial_value(t),
            "sd": t.user_attrs.get(VALUE_SD_ATTR),
            "seed_values": " ".join(f"{s}:{v:.4f}" for s, v in sorted(per_seed.items())) or None,
            **{k: t.user_attrs.get(k) for k in SUMMARY_ATTRS},
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "worker": t.user_attrs.get(WORKER_ATTR),
            "mlflow_run_id": t.user_attrs.get(RUN_ATTR),
        })
    return rows


def write_trials_csv(path: str | Path, rows: list[dict]) -> Path:
    """``rows`` as CSV (an empty cell for None), written atomically; returns ``path``."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in TRIAL_COLUMNS} for r in rows)
    return Path(path)
