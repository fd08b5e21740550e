"""The ``register`` stage's body: the final encoder into the MLflow Model Registry, champion or challenger.

The encoder is logged as an MLflow model into the run that trained it (so its run holds training,
evaluation and the model). ``register.policy`` then decides (:func:`decide`): a new version of
``register.model_name``, given the alias ``register.alias`` only when its ``register.metric`` (a validation
metric: selection never looks at test) beats the current holder's
(:func:`pipeline.tracking.registry.register_encoder`) and its tree is clean; or nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import read_json, write_json
from pipeline.models import ENCODER_FILE, load_encoder
from pipeline.tracking.lineage import experiment_name
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


@dataclass(frozen=True)
class Decision:
    """What ``register.policy`` lets this run do to the registry."""

    register: bool  # a new version
    may_promote: bool  # the alias may move to it (on a win)
    reason: str  # one line: why not, or empty


def decide(policy: str, experiment: str | None, commit: str) -> Decision:
    """What a run may do to the registry.

    Args:
        policy: ``register.policy``: ``main``, ``experiments`` or ``never``.
        experiment: The DVC experiment the stage runs in (None: ``dvc repro``).
        commit: :func:`pipeline.tracking.git_commit` of the tree (``-dirty`` when code or params differ).

    Returns:
        Whether to register a version, and whether the alias may move to it.
    """
    if policy == "never":
        return Decision(False, False, "register.policy is never")
    if policy == "main" and experiment:
        return Decision(False, False, f"DVC experiment {experiment}: register.policy main registers only "
                                      "from dvc repro; -S register.policy=experiments registers experiments")
    if commit.endswith("-dirty"):
        return Decision(True, False, f"the tree differs from its commit ({commit}): the alias stays")
    return Decision(True, True, "")


def register_model_dir(params: Params, model_dir: str | Path, metrics_path: str | Path,
                       best_params_path: str | Path | None = None) -> tuple[RegistrationResult | None, dict]:
    """Log ``<model_dir>/encoder.pt`` into its training run, register it as ``register.policy`` allows,
    and write ``register.out_info``.

    Args:
        params: The pipeline's params.
        model_dir: The folder holding ``encoder.pt`` and its ``run_id``.
        metrics_path: The model's evaluation metrics (JSON).
        best_params_path: The study's ``best_params.json``, when the model came from one.

    Returns:
        The registration (None when the policy registered nothing) and the record written.

    Raises:
        FileNotFoundError: The run id or metrics file is missing.
    """
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
        **tracking.lineage_tags(),
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
    reg = params.registry
    decision = decide(reg.policy, experiment_name(), tags["git_commit"])
    record: dict = {
        "model_name": reg.model_name, "registered": int(decision.register), "version": None, "alias": reg.alias,
        "promoted": 0, "metric": reg.metric, "value": _number(metrics, reg.metric),
        "champion_version_before": None, "champion_value_before": None, "model_uri": info.model_uri,
        "run_id": run_id, "tune_run_id": best.get("mlflow_parent_run_id"), "policy": reg.policy,
        "reason": decision.reason,
    }
    result = None
    if decision.register:
        tune_path = Path(params.tune.out_metrics)
        tune_metrics = read_json(tune_path) if best and tune_path.exists() else {}
        result = register_encoder(
            info.model_uri, reg, version_metrics(metrics), tags,
            description=version_description(tags, metrics, reg.metric,
                                            tune_metrics if isinstance(tune_metrics, dict) else {}),
            model_description=model_description(tags["dataset"], reg.metric, reg.alias),
            may_promote=decision.may_promote)
        record.update(version=int(result.version), promoted=int(result.promoted), value=result.challenger_value,
                      champion_version_before=int(result.champion_version) if result.champion_version else None,
                      champion_value_before=result.champion_value)
    write_json(reg.out_info, record)
    return result, record


def run(params: Params, args: object = None) -> None:
    """The stage: register the final model as ``register.policy`` allows and print one line."""
    reg = params.registry
    result, record = register_model_dir(params, params.final.out_dir, params.final.out_metrics,
                                        params.tune.best_params)
    if result is None:
        print(f"register: not registered ({record['reason']}); the model is logged in run {record['run_id']}: "
              f"mlflow.register_model('{record['model_uri']}', '{reg.model_name}') registers it -> {reg.out_info}")
        return
    reason = f"; {record['reason']}" if record["reason"] else ""
    before = (f"version {result.champion_version} ({reg.metric} {result.champion_value})"
              if result.champion_version else "none")
    verdict = (f"now @{reg.alias}" if result.promoted
               else f"registered, but @{reg.alias} stays on version {result.champion_version}")
    print(f"register: {result.name} version {result.version}, {reg.metric} {result.challenger_value:.4f}: "
          f"{verdict} (previous {reg.alias}: {before}{reason}) -> {reg.out_info}")
