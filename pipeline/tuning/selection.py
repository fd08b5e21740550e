"""The study's answer: the best trial against its method's baseline, paired seed by seed, and the choice.

Every trial trains once per seed of ``tune.seeds`` and its method's baseline (lambda = 0) on the same
seeds, so each seed gives a paired difference d_s = value_s(best) - value_s(baseline). With n seeds:

- ``gap_mean`` = mean(d), ``gap_sd`` = sample sd of d;
- the 95% interval is the paired t interval ``gap_mean +- t(0.975, n - 1) * gap_sd / sqrt(n)``;
- ``gap_p_value`` is the two-sided paired t test of "mean difference = 0" (scipy.stats.ttest_rel);
  with one seed, or a zero sd with a non-zero mean, there is no interval or p-value (None), never a
  made-up one.

``tune.select``: ``mean`` takes the trial of the best mean (a baseline can be it); ``significant``
keeps the baseline unless the best trial's gap interval lies above zero (``gap_ci95_low > 0``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedGap:
    n: int
    mean: float
    sd: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


def paired_gap(best: dict[int, float], baseline: dict[int, float]) -> PairedGap:
    """Paired difference best - baseline over the seeds both have (see the module docstring)."""
    seeds = sorted(set(best) & set(baseline))
    if not seeds:
        raise ValueError("no seed in common between the trial and its baseline: they cannot be paired")
    d = [best[s] - baseline[s] for s in seeds]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        return PairedGap(n, mean, 0.0, None, None, None)
    sd = statistics.stdev(d)
    if sd == 0:
        # Every seed moved by the same amount: the interval is that point; a p-value is 1 for no change
        # and undefined otherwise (t is infinite).
        return PairedGap(n, mean, 0.0, mean, mean, 1.0 if mean == 0 else None)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_rel([best[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    return PairedGap(n, mean, sd, mean - half, mean + half, p)


@dataclass(frozen=True)
class Selection:
    chose_baseline: bool
    reason: str


def select(rule: str, best_is_baseline: bool, gap: PairedGap | None) -> Selection:
    """Whether the final model trains the best trial's configuration or its method's baseline, and why."""
    if best_is_baseline:
        return Selection(True, "the baseline (lambda = 0) has the best mean")
    if gap is None:
        return Selection(rule == "significant", "no completed baseline to compare with"
                         + ("; keeping lambda = 0" if rule == "significant" else ""))
    desc = _describe(gap)
    if rule == "mean":
        return Selection(False, f"best mean over seeds ({desc})")
    if rule != "significant":
        raise ValueError(f"tune.select must be 'mean' or 'significant', got {rule!r}")
    if gap.ci_low is not None and gap.ci_low > 0:
        return Selection(False, f"the gap's 95% interval lies above zero ({desc})")
    return Selection(True, f"the gap's 95% interval does not lie above zero ({desc}); keeping lambda = 0")


def _describe(gap: PairedGap) -> str:
    ci = (f"[{gap.ci_low:+.4f}, {gap.ci_high:+.4f}]" if gap.ci_low is not None and gap.ci_high is not None
          else "no interval")
    p = f"p = {gap.p_value:.3g}" if gap.p_value is not None else "no p-value"
    return f"gap {gap.mean:+.4f}, 95% CI {ci}, {p}, {gap.n} seeds"
