"""The encoder as an MLflow model: logging it, registering it behind a champion alias, loading it back.

The MLflow ``pytorch`` flavour is saved with ``torch.export`` (pt2): a pickle-free graph of
``Encoder.forward`` (images in [0, 1] -> backbone features) that plain ``mlflow.pytorch.load_model``,
``mlflow.pyfunc`` and ``mlflow models serve`` load in any process without our code and without
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``. Beside it the model directory carries ``encoder.pt``
(:func:`pipeline.models.save_encoder`: spec + CPU weights, loaded with ``weights_only=True``), from which
:func:`load_registered` rebuilds the full :class:`Encoder`, so the service can embed with either the
backbone or the projection head. Both come from the same CPU copy of the weights, so they agree.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from pipeline.config import RegisterConfig
from pipeline.errors import UserError
from pipeline.models.encoder import ENCODER_FILE, Encoder, load_encoder, save_encoder

log = logging.getLogger(__name__)

METRIC_TAG_PREFIX = "metric."
OUTCOME_TAG = "registry.outcome"  # "champion", "lost", or "held" (it would win, but its tree is dirty)


# --------------------------------------------------------------------------------------------- logging

def _cpu_copy(encoder: Encoder) -> Encoder:
    """A fresh CPU encoder in eval mode with the same weights; the caller's module is left untouched."""
    cpu = Encoder(encoder.spec)
    cpu.load_state_dict({k: v.detach().to("cpu") for k, v in encoder.state_dict().items()})
    return cpu.eval()


def encoder_signature(encoder: Encoder) -> ModelSignature:
    s, c = encoder.spec.input.image_size, encoder.spec.input.channels
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, s, s))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.feature_dim))]),
    )


def _plain(obj: dict) -> dict:
    # MLmodel is YAML: numpy scalars, tuples and paths must become plain JSON types first.
    plain: dict = json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return plain


def log_encoder_model(encoder: Encoder, *, artifact_path: str = "model",
                      metadata: dict | None = None) -> mlflow.models.model.ModelInfo:
    """Log ``encoder`` as an MLflow model in the active run; returns its ModelInfo (``.model_uri``).

    Input: float32 (N, C, S, S) images in [0, 1] (see :func:`pipeline.data.preprocess.to_model_input`);
    output: float32 (N, feature_dim) backbone features. The model's ``metadata`` holds the input spec
    (the pre-processing a caller owes the model), the encoder spec and ``metadata``.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_encoder_model needs an active MLflow run (mlflow.start_run())")
    cpu = _cpu_copy(encoder)
    spec = cpu.spec.input
    # A batch of two: torch.export specialises size-1 dimensions, which would pin the batch size to 1.
    example = np.random.default_rng(0).random((2, spec.channels, spec.image_size, spec.image_size),
                                              dtype=np.float32)
    model_meta = {
        "input_spec": spec.to_dict(),
        "input_format": "float32 (N, C, S, S) in [0, 1]; uint8 NHWC -> pipeline.data.preprocess.to_model_input",
        "encoder_spec": cpu.spec.to_dict(),
        "feature_dim": cpu.feature_dim,
        "projection_dim": cpu.projection_dim,
        "encoder_file": f"extra_files/{ENCODER_FILE}",
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="encoder-") as tmp:
        enc_path = save_encoder(cpu, Path(tmp) / ENCODER_FILE, extra=_plain(metadata or {}))
        return mlflow.pytorch.log_model(
            cpu,
            name=artifact_path,
            signature=encoder_signature(cpu),
            input_example=example,
            serialization_format="pt2",
            extra_files=[str(enc_path)],
            metadata=_plain(model_meta),
            # Explicit requirements: inferring them would load the model again in a subprocess.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )


# ----------------------------------------------------------------------------------------- registering

@dataclass
class RegistrationResult:
    """What :func:`register_encoder` did: the new version and whether the alias moved to it."""

    name: str
    version: str
    promoted: bool
    champion_version: str | None  # the champion before this registration (None: there was none)
    champion_value: float | None
    challenger_value: float | None


def _finite(value: object, what: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: not a number ({value!r})") from exc
    if not math.isfinite(v):
        raise UserError(f"{what}: not finite ({v})")
    return v


def _champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None  # no such registered model yet, or no version holds the alias


def _tag_value(mv: ModelVersion, metric: str) -> float | None:
    raw = (mv.tags or {}).get(METRIC_TAG_PREFIX + metric)
    try:
        v = float(raw) if raw is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def register_encoder(model_uri: str, cfg: RegisterConfig, metrics: dict[str, float],
                     tags: dict[str, str], *, description: str | None = None,
                     model_description: str | None = None, may_promote: bool = True) -> RegistrationResult:
    """Register ``model_uri`` as a new version of ``cfg.model_name``; move ``cfg.alias`` only on a win.

    The new version wins when ``metrics[cfg.metric]`` is strictly greater than the value tagged on the
    current alias holder (or when there is no holder, or the holder has no value for this metric, e.g.
    after the selection metric changed). Every version keeps its metrics as ``metric.<name>`` tags and
    an outcome tag, so a losing challenger stays in the registry with its numbers.

    Args:
        model_uri: The logged model (``models:/m-...`` or ``runs:/<id>/model``).
        cfg: The register section of the params.
        metrics: The model's metrics; ``cfg.metric`` among them.
        tags: The version's tags (what it was trained on, the commit, the DVC experiment).
        description: The new version's description.
        model_description: The registered model's description (what the registry UI shows first).
        may_promote: False: the version is registered, but the alias stays where it is even on a win
            (outcome ``held``), e.g. for a model from a dirty tree.

    Returns:
        What was registered and whether the alias moved.

    Raises:
        ValueError: ``cfg.metric`` is missing from ``metrics`` or not a finite number.
    """
    if cfg.metric not in metrics:
        raise UserError(f"register.metric {cfg.metric!r} is not among the metrics given "
                         f"({', '.join(sorted(metrics)) or 'none'})")
    value = _finite(metrics[cfg.metric], f"metric {cfg.metric}")
    client = MlflowClient()
    champion = _champion(client, cfg.model_name, cfg.alias)
    champion_value = _tag_value(champion, cfg.metric) if champion is not None else None
    wins = champion is None or champion_value is None or value > champion_value
    promoted = wins and may_promote

    version_tags = {k: str(v) for k, v in tags.items()}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            version_tags[METRIC_TAG_PREFIX + k] = repr(float(v))
    version_tags["registry.metric"] = cfg.metric
    version_tags[OUTCOME_TAG] = "champion" if promoted else "held" if wins else "lost"
    if champion is not None:
        version_tags["registry.compared_to_version"] = str(champion.version)
        if champion_value is not None:
            version_tags["registry.compared_to_value"] = repr(champion_value)

    mv = mlflow.register_model(model_uri, cfg.model_name, tags=version_tags)
    # mlflow.register_model takes no description: set both right after, on what it created.
    if description:
        client.update_model_version(cfg.model_name, mv.version, description=description)
    if model_description:
        client.update_registered_model(cfg.model_name, description=model_description)
    if promoted:
        client.set_registered_model_alias(cfg.model_name, cfg.alias, mv.version)
        if champion is not None:
            client.set_model_version_tag(cfg.model_name, champion.version, "registry.replaced_by", str(mv.version))
        log.info("%s version %s is the new %s (%s=%s, was %s)", cfg.model_name, mv.version, cfg.alias,
                 cfg.metric, value, champion_value)
    else:
        log.info("%s version %s registered but not promoted: %s=%s against %s's %s%s", cfg.model_name,
                 mv.version, cfg.metric, value, cfg.alias, champion_value,
                 "" if not wins else " (it wins, but may not move the alias)")
    return RegistrationResult(
        name=cfg.model_name, version=str(mv.version), promoted=promoted,
        champion_version=str(champion.version) if champion is not None else None,
        champion_value=champion_value, challenger_value=value,
    )


# --------------------------------------------------------------------------------------------- loading

@dataclass
class LoadedModel:
    encoder: Encoder  # eval mode, on the CPU
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    uri: str  # as asked for
    tags: dict[str, str]  # the model version's tags (empty for runs:/ URIs)
    metadata: dict = field(default_factory=dict)  # the MLmodel metadata written by log_encoder_model


@dataclass
class ResolvedModel:
    download_uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def resolve_model_uri(uri: str, client: MlflowClient) -> ResolvedModel:
    """What a model URI points at now: the one parser of ``models:/name@alias``, ``models:/name/<n>``,
    ``models:/name/latest``, ``models:/<logged model id>`` and ``runs:/<id>/<path>`` (the registry and the
    service both use it). ``version`` is None for URIs outside the registry."""
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        if not run_id:
            raise UserError(f"model uri {uri!r}: expected runs:/<run_id>/<path>")
        return ResolvedModel(uri, run_id=run_id)
    if not uri.startswith("models:/"):
        return ResolvedModel(uri)  # a local directory or another artifact URI MLflow understands
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in rest:
        name, ref = rest.rsplit("/", 1)
        if ref == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise UserError(f"model uri {uri!r}: no versions of {name!r} are registered")
            mv = max(versions, key=lambda v: int(v.version))
        elif ref.isdigit():
            mv = client.get_model_version(name, ref)
        else:
            raise UserError(f"model uri {uri!r}: expected models:/<name>/<version>, /latest or @<alias>")
        alias = None
    else:  # models:/<logged model id> (MLflow 3)
        logged = client.get_logged_model(rest)
        return ResolvedModel(uri, run_id=logged.source_run_id)
    # Download the pinned version, so an alias that moves meanwhile cannot mix two versions.
    return ResolvedModel(f"models:/{name}/{mv.version}", name=name, version=str(mv.version), alias=alias,
                     run_id=mv.run_id, tags=dict(mv.tags or {}))


def load_registered(uri: str) -> LoadedModel:
    """Load the encoder behind ``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model`` (or a
    logged-model URI / local directory), in eval mode on the CPU, with where it came from."""
    client = MlflowClient()
    try:
        res = resolve_model_uri(uri, client)
    except MlflowException as exc:
        raise UserError(f"model uri {uri!r}: {exc.message}") from exc
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=res.download_uri, dst_path=tmp))
        except MlflowException as exc:
            raise UserError(f"model uri {uri!r}: cannot download it ({exc.message})") from exc
        mlmodel = local / "MLmodel"
        if not mlmodel.exists():
            raise UserError(f"model uri {uri!r}: no MLmodel file (not an MLflow model)")
        conf = yaml.safe_load(mlmodel.read_text()) or {}
        extra = (conf.get("flavors", {}).get("pytorch", {}) or {}).get("extra_files") or []
        paths = [local / e["path"] for e in extra if Path(e["path"]).name == ENCODER_FILE]
        if not paths or not paths[0].exists():
            raise UserError(f"model uri {uri!r}: no {ENCODER_FILE} in the model's extra files "
                             "(log it with pipeline.tracking.registry.log_encoder_model)")
        encoder, _ = load_encoder(paths[0], map_location="cpu")
    return LoadedModel(encoder=encoder.eval(), name=res.name, version=res.version, alias=res.alias,
                       run_id=res.run_id, uri=uri, tags=res.tags, metadata=conf.get("metadata") or {})
