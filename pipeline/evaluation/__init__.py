"""Evaluation of a frozen encoder: features, linear probe, kNN, collapse metrics, plots, the console summary.

The names below load their module on first use (PEP 562), so that :mod:`pipeline.evaluation.report`, which
the end-of-run summary reads, imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from pipeline.evaluation.spectrum import (
        SpectrumStats,
        dims_for_share,
        rankme,
        singular_values,
        spectrum_stats,
    )

_MODULE_OF = {
    "Features": "features", "extract_features": "features",
    "knn_accuracy": "knn", "knn_predict": "knn",
    "EvalResult": "metrics", "evaluate_encoder": "metrics", "knn_score": "metrics", "random_encoder": "metrics",
    "validation_report": "metrics",
    "ProbeResult": "probe", "linear_probe": "probe",
    "SpectrumStats": "spectrum", "dims_for_share": "spectrum", "rankme": "spectrum",
    "singular_values": "spectrum", "spectrum_stats": "spectrum",
}

__all__ = [
    "EvalResult", "Features", "ProbeResult", "SpectrumStats", "dims_for_share", "evaluate_encoder",
    "extract_features", "knn_accuracy", "knn_predict", "knn_score", "linear_probe", "random_encoder", "rankme",
    "singular_values", "spectrum_stats", "validation_report",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
