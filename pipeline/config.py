"""Typed parameters, parsed from ``params.yaml``: the one source of defaults for every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    # A typo in params.yaml must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TrackingConfig(_Section):
    experiment: str = "sparsehead"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "mlartifacts"


class PrepareConfig(_Section):
    source: Literal["digits", "cifar10", "cifar100", "folder"] = "digits"
    path: str | None = None  # archive file (cifar) or root folder (folder); None for digits
    download: bool = False  # cifar only: fetch through torchvision when no archive is at `path`
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # for sources without an official split
    image_size: int | None = None  # folder only: resize every image to a square of this side
    out_dir: str = "data/prepared"


class BackboneConfig(_Section):
    name: Literal["small", "resnet18", "resnet34", "resnet50"] = "small"
    width: int = Field(32, gt=0)  # base channel count of the small backbone


class HeadConfig(_Section):
    hidden_dims: list[int] = Field(default_factory=lambda: [256])
    out_dim: int = Field(64, gt=0)
    batch_norm: bool = True


class SSLConfig(_Section):
    method: Literal["simclr"] = "simclr"
    temperature: float = Field(0.5, gt=0.0)


class SparseHeadConfig(_Section):
    form: Literal["l1", "group", "activation"] = "l1"
    lam: float = Field(1e-3, ge=0.0, alias="lambda")
    # gradient: lambda * R in the loss; proximal: soft-threshold after each optimiser step (exact zeros)
    update: Literal["gradient", "proximal"] = "gradient"
    include_predictor: bool = False  # BYOL / SimSiam: penalise the predictor's Linear layers too (l1)


class AugmentConfig(_Section):
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip_prob: float = Field(0.0, ge=0.0, le=1.0)  # 0 for digits: a mirrored 3 is not a 3
    jitter_prob: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0)
    contrast: float = Field(0.4, ge=0.0)
    saturation: float = Field(0.4, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)
    jitter_random_order: bool = True  # a fresh order of the four colour ops per image, as torchvision
    grayscale_prob: float = Field(0.2, ge=0.0, le=1.0)
    blur_prob: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)


class OptimConfig(_Section):
    name: Literal["sgd", "lars"] = "sgd"
    lr: float = Field(0.3, gt=0.0)  # base rate for a batch of 256, scaled linearly with the batch size
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: int = Field(2, ge=0)
    eta: float = Field(1e-3, gt=0.0)  # LARS trust coefficient (SimCLR's, lightly's, timm's, solo-learn's)


class PretrainConfig(_Section):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    sparsehead: SparseHeadConfig = Field(default_factory=SparseHeadConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    image_size: int | None = None  # model input side; None keeps the data set's own
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(256, gt=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    channels_last: bool | None = None  # None: on for CUDA
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    out_dir: str = "models/pretrain"


class ProbeConfig(_Section):
    epochs: int = Field(100, gt=0)
    lr: float = Field(0.1, gt=0.0)
    batch_size: int = Field(256, gt=0)
    weight_decays: list[float] = Field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3, 1e-2])


class EvaluateConfig(_Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    batch_size: int = Field(512, gt=0)
    knn_k: list[int] = Field(default_factory=lambda: [20, 200])
    knn_temperature: float = Field(0.1, gt=0.0)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    random_baseline: bool = True
    out_metrics: str = "metrics/eval.json"
    plots_dir: str = "plots/eval"


class TuneConfig(_Section):
    study_name: str = "sparsehead-lambda"
    storage: str = "sqlite:///optuna.db"  # OPTUNA_STORAGE overrides; journal:<path> for a file journal
    n_trials: int = Field(8, ge=1)
    timeout_s: float | None = None
    lambda_low: float = Field(1e-5, gt=0.0)
    lambda_high: float = Field(1e-1, gt=0.0)
    forms: list[Literal["l1", "group", "activation"]] = Field(default_factory=lambda: ["l1"])
    epochs: int = Field(20, gt=0)  # the reduced budget of one trial
    objective: Literal["knn", "linear"] = "knn"
    eval_every: int = Field(5, gt=0)  # epochs between the intermediate kNN reports that feed the pruner
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_steps: int = Field(5, ge=0)
    pruner_startup_trials: int = Field(2, ge=0)  # median: completed trials before it prunes (baseline included)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    enqueue_baseline: bool = True
    max_failed_trials: int = Field(3, ge=1)  # a worker gives up after this many failed trials in a row
    best_params: str = "best_params.json"
    out_metrics: str = "metrics/tune.json"
    plots_dir: str = "plots/tune"  # trials.csv, history.png, lambda.png[, importances.png]


class FinalConfig(_Section):
    epochs: int | None = None  # None: pretrain.epochs
    out_dir: str = "models/final"
    out_metrics: str = "metrics/final.json"  # the evaluation of the final encoder
    train_metrics: str = "metrics/final_train.json"  # its last training epoch
    plots_dir: str = "plots/final"


class RegisterConfig(_Section):
    model_name: str = "sparsehead-encoder"
    alias: str = "champion"
    metric: str = "val_linear_top1"  # higher is better; the champion moves only on a strict gain
    out_info: str = "metrics/register.json"


class ServeConfig(_Section):
    model_uri: str = "models:/sparsehead-encoder@champion"  # SERVE_MODEL_URI overrides
    host: str = "127.0.0.1"
    port: int = 8000
    max_images_per_request: int = Field(64, gt=0)
    max_image_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(16_000_000, gt=0)
    max_batch_size: int = Field(64, gt=0)
    max_wait_ms: float = Field(0.0, ge=0.0)  # 0: no waiting for stragglers; batches form while a pass runs
    max_queue_images: int = Field(1024, gt=0)
    workers: int = Field(1, gt=0)  # threads doing torch work off the event loop
    reload_poll_s: float | None = None


class Params(_Section):
    seed: int = 0
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)
    registry: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("seed")
    @classmethod
    def _non_negative_seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError("seed must be >= 0")
        return v


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a value of the wrong kind."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Parse ``params.yaml``; a missing file means all defaults, a bad value raises ConfigError."""
    path = Path(path)
    if not path.exists():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def flat_params(params: BaseModel, prefix: str = "") -> dict[str, object]:
    """Flatten nested params into dotted keys, as MLflow params want them."""
    out: dict[str, object] = {}
    for key, value in params.model_dump(by_alias=True).items():
        _flatten(f"{prefix}{key}", value, out)
    return out


def _flatten(key: str, value: object, out: dict[str, object]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{key}.{k}", v, out)
    else:
        out[key] = value
