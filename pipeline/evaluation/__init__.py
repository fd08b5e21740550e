"""Evaluation of a frozen encoder: features, linear probe, kNN, collapse metrics, plots, the stage body."""

from pipeline.evaluation.features import Features, extract_features
from pipeline.evaluation.knn import knn_accuracy, knn_predict
from pipeline.evaluation.metrics import (
    EvalResult,
    evaluate_encoder,
    knn_score,
    random_encoder,
    validation_report,
)
from pipeline.evaluation.probe import ProbeResult, linear_probe
from pipeline.evaluation.spectrum import SpectrumStats, dims_for_share, rankme, spectrum_stats

__all__ = [
    "EvalResult", "Features", "ProbeResult", "SpectrumStats", "dims_for_share", "evaluate_encoder",
    "extract_features", "knn_accuracy", "knn_predict", "knn_score", "linear_probe", "random_encoder", "rankme",
    "spectrum_stats", "validation_report",
]
