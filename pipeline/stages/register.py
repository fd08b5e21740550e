"""The ``register`` stage's body: the final encoder into the MLflow Model Registry, champion or challenger.

The encoder is logged as an MLflow model into the run that trained it (so its run holds training,
evaluation and the model), registered as a new version of ``register.model_name``, and given the alias
``register.alias`` only when its ``register.metric`` (a validation metric: selection never looks at test)
beats the current holder's; :func:`pipeline.registry.register_encoder` has the rule.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import read_json, write_json
from pipeline.models import ENCODER_FILE, load_encoder
from pipeline.tracking.registry import RegistrationResult, log_encoder_model, register_encoder

# Version tags carry the metrics of the model itself; the random-init reference and timings stay in its run.
_UNTAGGED_PREFIXES = ("random_", "eval_")


def version_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith(_UNTAGGED_PREFIXES)}


def _number(d: dict, key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def study_gap(tune_metrics: dict) -> str | None:
    """The study's gap (best - baseline) and its 95% interval, from ``metrics/tune.json`` if it has them."""
    gap = _number(tune_metrics, "gap_mean")
    if gap is None:
        gap = _number(tune_metrics, "gap")  # a single-seed study: no interval
    if gap is None:
        return None
    low, high = _number(tune_metrics, "gap_ci95_low"), _number(tune_metrics, "gap_ci95_high")
    ci = f" (95% CI {low:+.4f} to {high:+.4f})" if low is not None and high is not None else ""
    return f"gap to the baseline {gap:+.4f}{ci}"


def version_description(tags: dict[str, str], metrics: dict, metric: str, tune_metrics: dict) -> str:
    """One paragraph from the version's tags: what it was trained on and how, the study's gap, its score."""
    data = f"{tags['dataset']} (dataset sha256 {tags['dataset_sha256'][:12]})"
    update = "" if tags.get("update", "gradient") == "gradient" else f" ({tags['update']} update)"
    reg = ("no SparseHead (lambda 0)" if tags["lambda"] in ("0", "0.0")
           else f"SparseHead {tags['form']}{update}, lambda {tags['lambda']}")
    parts = [f"Trained on {data}: {tags.get('method', 'simclr')}, {reg}, {tags['epochs']} epochs."]
    if "tune.study" in tags:
        gap = study_gap(tune_metrics)
        parts.append(f"Chosen by study {tags['tune.study']} (trial {tags['tune.trial']})"
                     + (f": {gap}." if gap else "."))
    value = _number(metrics, metric)
    if value is not None:
        parts.append(f"{metric} {value:.4f}.")
    parts.append(f"Run {tags['run_id']}, git {tags['git_commit']}.")
    return " ".join(parts)


def model_description(dataset: str, metric: str, alias: str) -> str:
    return (f"Self-supervised image encoder with a SparseHead projection head, trained on {dataset} by the "
            f"sparsehead pipeline (dvc repro). Input float32 (N, C, S, S) in [0, 1]; output the backbone "
            f"features. @{alias} is the version with the highest {metric} so far; each version's "
            f"description says what it was trained on.")


def register_model_dir(params: Params, model_dir: str | Path, metrics_path: str | Path,
                       best_params_path: str | Path | None = None) -> tuple[RegistrationResult, dict]:
    """Log ``<model_dir>/encoder.pt`` into its training run, register it, write ``register.out_info``."""
    model_dir = Path(model_dir)
    run_id = tracking.read_run_id(model_dir / tracking.RUN_ID_FILE)
    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: evaluation metrics not found (run the final stage first)")
    metrics = read_json(metrics_path)
    encoder, extra = load_encoder(model_dir / ENCODER_FILE)
    best = read_json(best_params_path) if best_params_path and Path(best_params_path).exists() else {}
    sparse = extra.get("sparsehead") or {}
    tags = {
        "lambda": str(sparse.get("lambda")),
        "form": str(sparse.get("form")),
        "dataset": str(extra.get("dataset")),
        "dataset_sha256": str(extra.get("dataset_sha256")),
        "git_commit": tracking.git_commit(),
        "run_id": run_id,
        "epochs": str(extra.get("epochs")),
        "update": str(sparse.get("update", "gradient")),
        "method": str(extra.get("method", best.get("method", "simclr") if best else "simclr")),
        **({"tune.study": str(best["study"]), "tune.trial": str(best["trial"]),
            "tune.choice": str(best.get("choice", "best")), "tune.reason": str(best.get("reason", ""))[:5000]}
           if best else {}),
    }
    metadata = {**tags, "sparsehead": sparse, "classes": extra.get("classes")}
    with tracking.start_run(params.tracking, run_id=run_id):
        info = log_encoder_model(encoder, metadata=metadata)
    tune_path = Path(params.tune.out_metrics)
    tune_metrics = read_json(tune_path) if best and tune_path.exists() else {}
    result = register_encoder(
        info.model_uri, params.registry, version_metrics(metrics), tags,
        description=version_description(tags, metrics, params.registry.metric,
                                        tune_metrics if isinstance(tune_metrics, dict) else {}),
        model_description=model_description(tags["dataset"], params.registry.metric, params.registry.alias))
    reg = params.registry
    record = {
        "model_name": result.name, "version": int(result.version), "alias": reg.alias,
        "promoted": int(result.promoted), "metric": reg.metric, "value": result.challenger_value,
        "champion_version_before": int(result.champion_version) if result.champion_version else None,
        "champion_value_before": result.champion_value, "model_uri": info.model_uri, "run_id": run_id,
    }
    write_json(reg.out_info, record)
    return result, record


def run(params: Params, args: object = None) -> None:
    reg = params.registry
    result, record = register_model_dir(params, params.final.out_dir, params.final.out_metrics,
                                        params.tune.best_params)
    before = (f"version {result.champion_version} ({reg.metric} {result.champion_value})"
              if result.champion_version else "none")
    verdict = (f"now @{reg.alias}" if result.promoted
               else f"registered, but @{reg.alias} stays on version {result.champion_version}")
    print(f"register: {result.name} version {result.version}, {reg.metric} {result.challenger_value:.4f}: "
          f"{verdict} (previous {reg.alias}: {before}) -> {reg.out_info}")
