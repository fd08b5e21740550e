"""The ``register`` stage's body: the final encoder into the MLflow Model Registry, champion or challenger.

The encoder is logged as an MLflow model into the run that trained it (so its run holds training,
evaluation and the model), registered as a new version of ``register.model_name``, and given the alias
``register.alias`` only when its ``register.metric`` (a validation metric: selection never looks at test)
beats the current holder's; :func:`pipeline.registry.register_encoder` has the rule.
"""

from __future__ import annotations

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
        **({"tune.study": str(best["study"]), "tune.trial": str(best["trial"])} if best else {}),
    }
    metadata = {**tags, "sparsehead": sparse, "classes": extra.get("classes")}
    with tracking.start_run(params.tracking, run_id=run_id):
        info = log_encoder_model(encoder, metadata=metadata)
    result = register_encoder(info.model_uri, params.registry, version_metrics(metrics), tags)
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
