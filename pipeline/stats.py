"""Mean and sample sd over seeds: the one helper every "mean ± sd" in the pipeline comes from."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value).

    Args:
        values: one figure per seed, at least one.

    Returns:
        (mean, sd).

    Raises:
        statistics.StatisticsError: ``values`` is empty.
    """
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_sd(values: Sequence[float], spec: str = ".4f") -> str:
    """``"mean ± sd"`` of ``values``, both formatted with ``spec``."""
    mean, sd = mean_sd(values)
    return f"{mean:{spec}} ± {sd:{spec}}"
