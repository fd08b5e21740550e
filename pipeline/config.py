"""Typed parameters, parsed from ``params.yaml``: the one source of defaults for every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError


class _Section(BaseModel):
    # A typo in params.yaml must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TrackingConfig(_Section):
    experiment: str = "sparsehead"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "mlartifacts"  # local stores: relative = inside whichever copy of the project runs
    # A tracking server that is down: MLflow's retries per call (1, 2, 4, ... s apart) and its timeout
    http_retries: int = Field(3, ge=0)
    http_timeout_s: int = Field(30, gt=0)
    # CPU, memory, disk, network (and GPU with nvidia-ml-py) sampled into each training run's
    # system/* metrics every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); off: a CPU digits run
    # lasts a few samples and the sampler thread competes for its 2 cores.
    system_metrics: bool = False


class PrepareConfig(_Section):
    source: Literal["digits", "cifar10", "cifar100", "folder"] = "digits"
    path: str | None = None  # archive file (cifar) or root folder (folder); None for digits
    download: bool = False  # cifar only: fetch through torchvision when no archive is at `path`
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # for sources without an official split
    image_size: int | None = None  # folder only: resize every image to a square of this side
    out_dir: str = "data/prepared"
    # npz: one array per split; shards: memory-mappable uint8 .npy shards (data larger than memory);
    # auto: shards once the images exceed shard_above_gb
    format: Literal["auto", "npz", "shards"] = "auto"
    shard_above_gb: float = Field(2.0, gt=0.0)
    shard_images: int = Field(8192, gt=0)  # images per shard file
    workers: int | None = Field(None, gt=0)  # folder: decoding threads; None: one per CPU core

    @model_validator(mode="after")
    def _only_what_the_source_reads(self) -> PrepareConfig:
        # A key the source ignores would be a silent no-op (digits stays 8x8 whatever image_size says).
        # Messages start with the key: load_params prefixes the section.
        folder, cifar = self.source == "folder", self.source in ("cifar10", "cifar100")
        ignored = [("image_size", self.image_size is not None and not folder,
                    "only the folder source resizes; resize for the model with pretrain.image_size"),
                   ("workers", self.workers is not None and not folder, "only the folder source decodes images"),
                   ("download", self.download and not cifar, "only the cifar sources download"),
                   ("path", self.path is not None and self.source == "digits", "digits is embedded")]
        for key, bad, why in ignored:
            if bad:
                raise ValueError(f"{key}: the {self.source} source ignores it ({why}); set it to null/false "
                                 "or remove it")
        return self


# The smallest input side each backbone can take: below it some 3x3 kernel taps see nothing but zero
# padding (a 3x3 conv needs a map >= 2 wide, a stride-2 one >= 3), so those weights never learn. The
# small ConvNet downsamples twice (5 -> 3 -> 2), the CIFAR-stem ResNets three times (9 -> 5 -> 3 -> 2);
# tests/test_hardening_stages.py measures it on the real backbones.
MIN_INPUT_SIDE = {"small": 5, "resnet18": 9, "resnet34": 9, "resnet50": 9}


class BackboneConfig(_Section):
    name: Literal["small", "resnet18", "resnet34", "resnet50"] = "small"
    width: int = Field(32, gt=0)  # base channel count of the small backbone


class HeadConfig(_Section):
    hidden_dims: list[int] = Field(default_factory=lambda: [256])
    out_dim: int = Field(64, gt=0)
    batch_norm: bool = True


class MethodParams(_Section):
    """Base of an SSL method's own parameters, ``pretrain.ssl.<method>.<key>``: a misspelt key is an error.

    Each method declares its subclass beside its code (``Method.params_model``); :class:`SSLConfig` checks
    every method's section with it.
    """


# The flat pretrain.ssl keys of before each method had its own section, and where each went.
MOVED_SSL_KEYS: dict[str, tuple[str, ...]] = {
    "temperature": ("simclr.temperature", "mocov2.temperature"),
    "momentum": ("byol.momentum", "mocov2.momentum"),
    "predictor_hidden_dim": ("byol.predictor_hidden_dim", "simsiam.predictor_hidden_dim"),
    "asymmetric_views": tuple(f"{m}.{k}" for m in ("byol", "barlow_twins", "vicreg")
                              for k in ("view_blur", "view_solarize")),
    "barlow_lambda": ("barlow_twins.lambda_offdiag",),
    **{f"vicreg_{k}": (f"vicreg.{k}",) for k in ("invariance", "variance", "covariance", "gamma", "eps")},
    "moco_queue_size": ("mocov2.queue_size",),
    "moco_temperature": ("mocov2.temperature",),
}


class SSLConfig(_Section):
    """``pretrain.ssl``: the method, and one section of parameters per registered method.

    ``method`` names a method of the registry (:data:`pipeline.methods.METHODS`). Every other key is a
    registered method's name and holds that method's parameters, checked by the method's own model; a
    method without a section takes its model's defaults. Every method's section is kept (not only the
    chosen one's), so ``-S pretrain.ssl.method=byol`` and a study over ``tune.methods`` switch methods
    without touching the rest (README, "SSL methods").
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    method: str = "simclr"

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in MOVED_SSL_KEYS:
                    places = ", ".join(f"pretrain.ssl.{k}" for k in MOVED_SSL_KEYS[key])
                    raise ValueError(f"{key}: each method has its own section now; this key moved to {places}")
        return data

    @model_validator(mode="after")
    def _method_sections(self) -> SSLConfig:
        # Deferred: the methods import torch, and this module.
        from pipeline.methods.registry import METHODS, method_class

        try:
            method_class(self.method)
        except ValueError as exc:
            raise ValueError(f"method: {exc}") from None
        given = dict(self.model_extra or {})
        for key in given:
            if key not in METHODS:
                raise ValueError(f"{key}: not a registered method, so not a section of pretrain.ssl (the keys "
                                 f"are method and one section per method: {', '.join(METHODS)})")
        sections: dict[str, MethodParams] = {}
        for name, cls in METHODS.items():
            raw = given.get(name)
            if isinstance(raw, cls.params_model):
                sections[name] = raw
                continue
            try:
                sections[name] = cls.params_model.model_validate(raw if raw is not None else {})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in (name, *first["loc"]))
                raise ValueError(f"{where}: {str(first['msg']).removeprefix('Value error, ')}") from None
        extra = self.__pydantic_extra__
        assert extra is not None  # extra="allow": pydantic keeps a dict
        extra.clear()
        extra.update(sections)
        return self

    def section(self, name: str) -> MethodParams:
        """The parameters of method ``name``: its validated section, or its model's defaults when it was
        registered after this config was read (a test's toy method, say).

        Raises:
            ValueError: ``name`` is not a registered method.
        """
        held = (self.model_extra or {}).get(name)
        if isinstance(held, MethodParams):
            return held
        from pipeline.methods.registry import method_class

        return method_class(name).params_model()


# SparseHead's regulariser forms and update rules (pipeline/sparsehead.py): the one list of each.
SparseHeadForm = Literal["l1", "group", "activation"]
SparseHeadUpdate = Literal["gradient", "proximal"]


class SparseHeadConfig(_Section):
    form: SparseHeadForm = "l1"
    lam: float = Field(1e-3, ge=0.0, alias="lambda")
    # gradient: lambda * R in the loss; proximal: soft-threshold after each optimiser step (exact zeros)
    update: SparseHeadUpdate = "gradient"
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
    solarize_prob: float = Field(0.0, ge=0.0, le=1.0)  # invert pixels >= 0.5 (BYOL's second view: 0.2)


class OptimConfig(_Section):
    name: Literal["sgd", "lars"] = "sgd"
    # base rate for a batch of 256, scaled linearly with the batch size; None: the SSL method's default
    lr: float | None = Field(None, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: int = Field(2, ge=0)
    # LARS trust coefficient: SimCLR's 0.001 (also lightly's and timm's default); solo-learn's CIFAR
    # configurations use 0.02 with lars_clip
    eta: float = Field(1e-3, gt=0.0)
    lars_clip: bool = False  # LARS: trust ratio / lr capped at 1 (solo-learn's clip_lr)
    # SGD: torch's fused kernel (one launch for all parameters); LARS (custom, per-parameter trust
    # ratios) ignores it and stays unfused
    fused: bool = False


class DataFeedConfig(_Section):
    """How training images reach the device: all at once (in memory) or streamed in chunks."""

    streaming: Literal["auto", "on", "off"] = "auto"  # auto: stream when the images exceed the budget
    memory_budget_gb: float = Field(8.0, gt=0.0)  # host/device memory the whole uint8 set may take
    chunk_images: int = Field(65536, gt=0)  # images per streamed chunk (two chunks live at a time)


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
    # torchrun: batch-norm statistics over the global batch. None: on for GPU ranks, off on the CPU
    # (torch's SyncBatchNorm has no CPU kernel, so true is refused there).
    sync_batchnorm: bool | None = None
    data: DataFeedConfig = Field(default_factory=DataFeedConfig)
    compile: bool = False  # torch.compile the encoder (pays on a GPU for long runs; compiles for minutes)
    # Epochs between the validation kNN points of the quality curves (pipeline/engine/monitor.py); None:
    # about five points per run. RankMe of h and z is measured every epoch whatever this says.
    monitor_every: int | None = Field(None, gt=0)
    out_dir: str = "models/pretrain"

    @model_validator(mode="after")
    def _input_the_backbone_can_take(self) -> PretrainConfig:
        # The data's own side (image_size null) is checked when training builds the encoder.
        low = MIN_INPUT_SIDE[self.backbone.name]
        if self.image_size is not None and self.image_size < low:
            raise ValueError(f"image_size: {self.image_size} is below the smallest side the {self.backbone.name} "
                             f"backbone can take ({low}); set it to {low} or more")
        return self


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


def _distinct_seeds(v: list[int]) -> list[int]:
    if len(set(v)) != len(v) or min(v) < 0:
        raise ValueError(f"seeds must be distinct and >= 0, got {v}")
    return v


class TuneConfig(_Section):
    study_name: str = "sparsehead-lambda"
    storage: str = "sqlite:///optuna.db"  # OPTUNA_STORAGE overrides; also journal:<path>, postgresql+psycopg2://...
    n_trials: int = Field(8, ge=1)
    timeout_s: float | None = None
    lambda_low: float = Field(1e-5, gt=0.0)
    lambda_high: float = Field(1e-1, gt=0.0)
    forms: list[SparseHeadForm] = Field(["l1"])  # pydantic copies a mutable default for each instance
    updates: list[SparseHeadUpdate] = Field(["gradient"])
    methods: list[str] | None = None  # None: pretrain.ssl.method only; more than one: searched, each its baseline
    # Every trial (the baseline too) trains once per seed: each seed gives a paired difference
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    select: Literal["mean", "significant"] = "mean"  # significant: keep the baseline unless the gap's CI > 0
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
    # Database servers (PostgreSQL): a running trial beats every heartbeat_s seconds; one silent for grace_s
    # (its worker died, on any host) is failed and queued again with the same params, at most max_retries times
    # (on SQLite and the journal a dead worker is found by its process id, and its trial queued the same way).
    heartbeat_s: int = Field(30, gt=0)
    grace_s: int | None = Field(None, gt=0)  # None: 2 x heartbeat_s
    max_retries: int | None = Field(3, ge=0)  # None: retry a dead worker's trial for ever
    storage_retry_s: float = Field(120.0, ge=0.0)  # how long a storage call waits out a database restart
    best_params: str = "best_params.json"
    out_metrics: str = "metrics/tune.json"
    plots_dir: str = "plots/tune"  # trials.csv, history.png, lambda.png[, importances.png]

    _seeds = field_validator("seeds")(_distinct_seeds)


class FinalConfig(_Section):
    epochs: int | None = None  # None: pretrain.epochs
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # the first is registered

    _seeds = field_validator("seeds")(_distinct_seeds)
    out_dir: str = "models/final"
    out_metrics: str = "metrics/final.json"  # the evaluation of the final encoder
    train_metrics: str = "metrics/final_train.json"  # its last training epoch
    plots_dir: str = "plots/final"


class RegisterConfig(_Section):
    model_name: str = "sparsehead-encoder"
    alias: str = "champion"
    metric: str = "val_linear_top1"  # higher is better; the champion moves only on a strict gain
    # What a run may do to the registry (README "The model registry"): main = `dvc repro` / `make run`
    # registers, a `dvc exp run` (workspace, queued or --temp) only logs its model in its run; experiments =
    # experiments register too; never = every run only logs its model. The alias never moves from a tree
    # whose code or params differ from its commit.
    policy: Literal["main", "experiments", "never"] = "main"
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


class ConfigError(UserError):
    """params.yaml is missing, unreadable or holds a value of the wrong kind."""


def load_params(path: str | Path = "params.yaml", *, must_exist: bool = False) -> Params:
    """Parse ``params.yaml``; a bad value raises ConfigError naming the key.

    A missing file means all defaults, unless ``must_exist`` (the stages: a misspelt ``--params`` must not
    run silently on built-in defaults; the service, configured by environment, needs no file).
    """
    path = Path(path)
    if not path.exists():
        if must_exist:
            raise ConfigError(f"{path}: params file not found (pass --params <file>, or run from the folder "
                              "that holds params.yaml)")
        return Params()
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (prepare:, pretrain:, ...), got "
                          f"{type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        # A section's own check names its key first ("image_size: ..."): make that "prepare.image_size".
        key, sep, rest = msg.partition(": ")
        if sep and all(part.isidentifier() for part in key.split(".")):
            where, msg = f"{where}.{key}" if where else key, rest
        raise ConfigError(f"{path}: {where}: {msg}") from exc


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
