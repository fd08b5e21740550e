"""The study's answer: the best trial against its method's baseline, paired seed by seed, and the choice.

With n seeds and paired differences d_s = value_s(best) - value_s(baseline): ``gap_mean`` = mean(d),
``gap_sd`` = sample sd(d), the 95% interval ``gap_mean +- t(0.975, n - 1) * gap_sd / sqrt(n)`` and the
two-sided paired t test's p-value; with one seed, or a zero sd and a non-zero mean, neither (None).
The README ("Tuning lambda") describes the two ``tune.select`` rules and the tie.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedGap:
    """The paired difference best - baseline over ``n`` seeds (interval and p-value None when undefined)."""

    n: int
    mean: float
    sd: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


def paired_gap(best: dict[int, float], baseline: dict[int, float]) -> PairedGap:
    """The paired difference best - baseline over the seeds both have (see the module docstring).

    Args:
        best: Seed -> objective value of the best trial.
        baseline: Seed -> objective value of its baseline.

    Raises:
        ValueError: No seed in common.
    """
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
    """Whether ``final`` trains the baseline (lambda = 0) rather than the best trial, and why."""

    chose_baseline: bool
    reason: str


def objective_resolution(n_seeds: int, n_val: int) -> float:
    """The smallest non-zero difference between two objective values: ``1 / (n_seeds * n_val)``.

    A seed's value is an accuracy, k / n_val for k images right; the objective is its mean over the seeds, so
    two values differ by a whole number of these steps, or by float rounding when their totals are equal.

    Args:
        n_seeds: Seeds per trial (``tune.seeds``).
        n_val: Validation images.
    """
    return 1.0 / (n_seeds * n_val)


def is_tie(gap: PairedGap, resolution: float) -> bool:
    """Whether ``gap`` is float rounding rather than images: its mean is under half the objective's step.

    Both trials' values are whole numbers of ``resolution`` (k / n_val per seed, averaged over the seeds),
    so a mean gap smaller than half a step means both got as many validation images right.
    """
    return abs(gap.mean) < resolution / 2


def select(rule: str, best_is_baseline: bool, gap: PairedGap | None, resolution: float = 0.0) -> Selection:
    """Whether the final model trains the best trial's configuration or its method's baseline, and why.

    Args:
        rule: ``tune.select``: ``mean`` takes the best mean; ``significant`` keeps the baseline unless the
            gap's 95% interval lies above zero.
        best_is_baseline: The best trial is the baseline itself.
        gap: The best trial against its baseline; None when no baseline completed.
        resolution: The objective's step (:func:`objective_resolution`): a gap
            within it is a tie, and a tie keeps lambda = 0, the simpler model, under either rule.

    Raises:
        ValueError: An unknown rule.
    """
    if rule not in ("mean", "significant"):
        raise ValueError(f"tune.select must be 'mean' or 'significant', got {rule!r}")
    if best_is_baseline:
        return Selection(True, "the baseline (lambda = 0) has the best mean")
    if gap is None:
        return Selection(rule == "significant", "no completed baseline to compare with"
                         + ("; keeping lambda = 0" if rule == "significant" else ""))
    desc = _describe(gap)
    if is_tie(gap, resolution):
        return Selection(True, f"a tie: the gap {gap.mean:+.2g} is within the objective's resolution "
                               f"{resolution:.3g} (as many validation images right); keeping lambda = 0, "
                               f"the simpler model ({desc})")
    if rule == "mean":
        return Selection(False, f"best mean over seeds ({desc})")
    if gap.ci_low is not None and gap.ci_low > 0:
        return Selection(False, f"the gap's 95% interval lies above zero ({desc})")
    return Selection(True, f"the gap's 95% interval does not lie above zero ({desc}); keeping lambda = 0")


def _describe(gap: PairedGap) -> str:
    ci = (f"[{gap.ci_low:+.4f}, {gap.ci_high:+.4f}]" if gap.ci_low is not None and gap.ci_high is not None
          else "no interval")
    p = f"p = {gap.p_value:.3g}" if gap.p_value is not None else "no p-value"
    return f"gap {gap.mean:+.4f}, 95% CI {ci}, {p}, {gap.n} seeds"
