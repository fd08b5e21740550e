"""The ``pretrain`` stage: train an encoder and record it (the MLflow run with its quality curves, the
encoder file, the run-id hand-off, the metrics and the curves' plots).

:func:`pretrain_and_log` is shared by the ``pretrain`` and ``final`` stages, so the two differ only in
their params.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params, PretrainConfig, flat_params
from pipeline.data.format import load_manifest, load_split
from pipeline.engine.checkpoint import CHECKPOINT, fingerprint, read_checkpoint_meta
from pipeline.engine.distributed import DistContext
from pipeline.engine.monitor import Monitor, write_curves
from pipeline.engine.trainer import TrainResult, check_input, train
from pipeline.io import write_metrics
from pipeline.models.encoder import ENCODER_FILE, Encoder, save_encoder
from pipeline.tracking.buffer import UNREACHABLE, EpochMetricLogger
from pipeline.tracking.datasets import log_dataset_input

log = logging.getLogger(__name__)

COLLAPSE_TAG = "collapse_warning"


@dataclass
class PretrainOutcome:
    """A recorded training run: its MLflow run id ("" on a torchrun rank other than 0), result and encoder file."""

    run_id: str
    result: TrainResult
    encoder_path: Path


class CollapseTag:
    """An epoch callback that tags the run (:data:`COLLAPSE_TAG`) once its monitor has seen a collapse.

    Args:
        run_id: the MLflow run.
        client: the tracking client.
        monitor: the run's monitor.
    """

    def __init__(self, run_id: str, client: MlflowClient, monitor: Monitor) -> None:
        self.run_id, self.client, self.monitor = run_id, client, monitor
        self.tagged = False

    def __call__(self, epoch: int, metrics: dict[str, float], encoder: Encoder) -> None:
        if self.tagged or self.monitor.warning is None:
            return
        try:
            self.client.set_tag(self.run_id, COLLAPSE_TAG, self.monitor.warning)
            self.tagged = True
        except UNREACHABLE as exc:  # training goes on; the next collapsed epoch tries again
            log.warning("could not tag run %s with the collapse warning (%s)", self.run_id, type(exc).__name__)


def _relog_unlogged_epochs(epoch_logger: EpochMetricLogger, history: list[dict[str, float]]) -> None:
    """Epochs the checkpoint holds but the run lacks (the process was killed between saving an epoch and
    logging it): log them now, so a resumed run's history has every epoch once."""
    logged = {m.step for m in epoch_logger.client.get_metric_history(epoch_logger.run_id, "loss_total")}
    for epoch, metrics in enumerate(history, 1):
        if epoch not in logged:
            epoch_logger(epoch, metrics)


def pretrain_and_log(params: Params, cfg: PretrainConfig, out_dir: str | Path, *, run_name: str,
                     metrics_path: str | Path | None = None, plots_dir: str | Path | None = None,
                     extra_tags: dict[str, str] | None = None, progress: bool = True,
                     seed: int | None = None) -> PretrainOutcome:
    """Train ``cfg`` on the prepared training split and log everything into one MLflow run.

    Every epoch's metrics, the monitor's quality curves among them (:mod:`pipeline.engine.monitor`, on
    the validation split that the evaluate stage carves), go to the run with the epoch as their step.

    Args:
        params: all params (the data, tracking and evaluation sections are read too).
        cfg: the pretraining params of this run.
        out_dir: where the encoder, the checkpoint and the run id go.
        run_name: the MLflow run's name and ``stage`` tag.
        metrics_path: the last epoch's metrics as a DVC metrics file; None: not written.
        plots_dir: the curves as DVC plots (``curves.csv``, ``knn.csv``); None: not written.
        extra_tags: more tags for the run.
        progress: show a progress bar.
        seed: the training seed (default: the params' ``seed``, which also fixes the data splits).

    Returns:
        The run's id, result and encoder file.
    """
    out_dir = Path(out_dir)
    seed = params.seed if seed is None else seed
    data_dir = params.prepare.out_dir
    manifest = load_manifest(data_dir)
    train_split = load_split(data_dir, "train", manifest)  # memory-mapped when prepare sharded the set
    images = train_split.images
    check_input(cfg, images.shape)  # before a run is started for nothing
    digest = str(manifest["sha256"]["train"])  # stands for the images in checkpoint fingerprints
    dist = DistContext.from_env()
    sync_bn = dist.sync_batchnorm(cfg.sync_batchnorm)  # refuses true on CPU ranks before any run starts
    if not dist.is_main:
        # Under torchrun only rank 0 records; the other ranks contribute their gradients and stop. They
        # read the same checkpoint as rank 0 (only rank 0 writes it), so a resumed run stays in step.
        result = train(cfg, images, seed=seed, out_dir=out_dir, progress=False, dist=dist, data_digest=digest)
        return PretrainOutcome("", result, out_dir / ENCODER_FILE)

    # A checkpoint of the same params and data means an interrupted run: continue it and its MLflow run.
    prev = read_checkpoint_meta(out_dir / CHECKPOINT)
    same = prev is not None and prev["fingerprint"] == fingerprint(cfg, digest, seed,
                                                                   world_size=dist.world_size)
    run_id = prev["meta"].get("run_id") if prev is not None and same else None
    # A run of this stage that a killed process left RUNNING is over: close it (never the one resumed).
    tracking.close_orphaned_runs(params.tracking, run_name, keep=run_id)

    tags = {
        "stage": run_name,
        "git_commit": tracking.git_commit(),
        "dataset": manifest["source"],
        "dataset_sha256": manifest["dataset_sha256"],
        "sparsehead.form": cfg.sparsehead.form,
        "sparsehead.lambda": str(cfg.sparsehead.lam),
        "sparsehead.update": cfg.sparsehead.update,
        "ssl.method": cfg.ssl.method,
        **(extra_tags or {}),
    }
    title = tracking.run_name(run_name, method=cfg.ssl.method, lam=cfg.sparsehead.lam, seed=seed,
                              form=cfg.sparsehead.form, update=cfg.sparsehead.update)
    with tracking.start_run(params.tracking, run_id=run_id, run_name=title) as run:
        if run_id is None:
            # Results are bit-identical only at one thread count: it is part of what the run was.
            mlflow.log_params({**flat_params(cfg, "pretrain."), "seed": seed,
                               **flat_params(params.prepare, "prepare."),
                               "torch_num_threads": cfg.num_threads or torch.get_num_threads()})
            mlflow.set_tags(tags)
            if dist.enabled:
                mlflow.log_params({"torchrun.world_size": dist.world_size,
                                   "torchrun.sync_batchnorm": sync_bn})
            log_dataset_input(manifest, params.prepare, context="train")
        # A tracking server that goes away mid-training queues the epochs' metrics; training goes on.
        epoch_logger = EpochMetricLogger(run.info.run_id)
        if prev is not None and run_id is not None:
            _relog_unlogged_epochs(epoch_logger, prev["history"])
        # Curves on the validation split the evaluate stage carves (its seed is the params', not the run's).
        monitor = Monitor.for_training(train_split, cfg, params.evaluate, params.seed)
        collapse = CollapseTag(run.info.run_id, epoch_logger.client, monitor)
        result = train(cfg, images, seed=seed, out_dir=out_dir, callbacks=[epoch_logger, collapse],
                       progress=progress, meta={"run_id": run.info.run_id}, dist=dist, data_digest=digest,
                       monitor=monitor)
        epoch_logger.flush()
        if plots_dir is not None:
            write_curves(plots_dir, result.history)
        extra = {"run_id": run.info.run_id, "epochs": cfg.epochs, "method": cfg.ssl.method,
                 "dataset": manifest["source"], "dataset_sha256": manifest["dataset_sha256"],
                 "classes": manifest["classes"],
                 "sparsehead": cfg.sparsehead.model_dump(by_alias=True), "seed": seed}
        encoder_path = save_encoder(result.encoder, out_dir / ENCODER_FILE, extra=extra)
        mlflow.log_artifact(str(encoder_path), artifact_path="encoder")
        if metrics_path is not None:
            # The run id beside the results: `dvc exp show` and `dvc metrics diff` name each one's run.
            write_metrics(metrics_path, {**{k: round(v, 6) for k, v in result.final.items()},
                                         "mlflow_run_id": run.info.run_id})
        tracking.write_run_id(out_dir / tracking.RUN_ID_FILE, run.info.run_id)
        return PretrainOutcome(run.info.run_id, result, encoder_path)


def run(params: Params, args: object = None) -> None:
    cfg = params.pretrain
    outcome = pretrain_and_log(params, cfg, cfg.out_dir, run_name="pretrain", metrics_path="metrics/pretrain.json",
                               plots_dir="plots/pretrain")
    if not outcome.run_id:  # a torchrun rank other than 0
        return
    final = outcome.result.final
    print(f"pretrain: run {outcome.run_id}: {cfg.ssl.method}, loss {final['loss_total']:.4f}, head sparsity "
          f"{final['head_sparsity']:.3f} (exact zeros {final['head_exact_zero_frac']:.3f}), "
          f"{final['img_per_s']:.0f} img/s -> {outcome.encoder_path}")
