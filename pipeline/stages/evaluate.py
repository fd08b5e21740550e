"""The ``evaluate`` stage; :func:`run_evaluation` is shared with the ``final`` stage.

Loads the prepared data and a saved encoder, carves validation from train (seeded), evaluates, writes
the metrics JSON and the plots, and logs both into the MLflow run that trained the model (its id is in
``<model_dir>/run_id``), so one run holds the whole story of a model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.format import load_dataset, load_manifest
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.evaluation.metrics import evaluate_encoder
from pipeline.evaluation.plots import write_plots
from pipeline.evaluation.report import SSL_WARNING_TAG, ssl_gain_warning, summary
from pipeline.io import write_metrics
from pipeline.models import ENCODER_FILE, load_encoder

log = logging.getLogger(__name__)

MLFLOW_ARTIFACT_DIR = "eval"


def run_evaluation(params: Params, model_dir: str | Path, metrics_path: str | Path,
                   plots_dir: str | Path | None, progress: bool = True) -> dict[str, float]:
    """Evaluate a saved encoder and record the result.

    Args:
        params: all params (data, evaluation, tracking, device).
        model_dir: the folder of ``encoder.pt`` and ``run_id``.
        metrics_path: the metrics JSON to write.
        plots_dir: where the plots go; None: no plots.
        progress: show progress bars.

    Returns:
        The metrics (:mod:`pipeline.evaluation.metrics`). They are logged to the model's MLflow run, which
        is tagged ``ssl_warning`` when the encoder is not better than a random one.

    Raises:
        ValueError: the data do not fit the encoder.
    """
    model_dir, metrics_path = Path(model_dir), Path(metrics_path)
    cfg = params.evaluate
    # Fail before the work, not after it, when the run to log into is unknown.
    run_id = tracking.read_run_id(model_dir / tracking.RUN_ID_FILE)
    data_dir = Path(params.prepare.out_dir)
    ds = load_dataset(data_dir)  # memory-mapped when prepare sharded the set
    manifest = load_manifest(data_dir)
    encoder, extra = load_encoder(model_dir / ENCODER_FILE)
    channels = encoder.spec.input.channels
    if ds.image_shape[-1] != channels:
        raise UserError(f"{data_dir}: images have {ds.image_shape[-1]} channels but "
                         f"{model_dir / ENCODER_FILE} expects {channels}")
    trained_on = extra.get("dataset_sha256")
    if trained_on and trained_on != manifest.get("dataset_sha256"):
        log.warning("%s was trained on data set %s but %s holds %s", model_dir / ENCODER_FILE, trained_on[:12],
                    data_dir, str(manifest.get("dataset_sha256"))[:12])

    train, val = train_val_split(ds.train, cfg.val_fraction, params.seed)
    # Evaluation runs where pretraining ran, with the same CPU thread budget.
    device = resolve_device(params.pretrain.device)
    if params.pretrain.num_threads:
        torch.set_num_threads(params.pretrain.num_threads)
    result = evaluate_encoder(encoder, train, val, ds.test, len(ds.classes), cfg, device, params.seed,
                              progress=progress)
    metrics = result.metrics
    write_metrics(metrics_path, metrics)
    plot_files = write_plots(result, plots_dir, ds.classes) if plots_dir is not None else []

    warning = ssl_gain_warning(metrics)
    with tracking.start_run(params.tracking, run_id=run_id):
        tracking.log_metrics(metrics)
        if warning:
            mlflow.set_tag(SSL_WARNING_TAG, warning)
        mlflow.log_artifact(str(metrics_path), artifact_path=MLFLOW_ARTIFACT_DIR)
        for path in plot_files:
            mlflow.log_artifact(str(path), artifact_path=MLFLOW_ARTIFACT_DIR)
    return metrics


def run(params: Params, args: object = None) -> None:
    cfg = params.evaluate
    metrics = run_evaluation(params, params.pretrain.out_dir, cfg.out_metrics, cfg.plots_dir)
    print(f"evaluate: {cfg.out_metrics}, plots in {cfg.plots_dir}")
    print(summary(metrics, min(cfg.knn_k)))
