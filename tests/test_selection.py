"""The study's answer: the paired interval and p-value against hand computation, and the selection rule."""

import math

import pytest

from pipeline.tuning.selection import is_tie, objective_resolution, paired_gap, select


def t_quantile_df2(u: float) -> float:
    # Student's t with 2 degrees of freedom has a closed-form quantile: (2u - 1) / sqrt(2 u (1 - u)).
    return (2 * u - 1) / math.sqrt(2 * u * (1 - u))


def two_sided_p_df2(t: float) -> float:
    # and a closed-form CDF, 1/2 + t / (2 sqrt(2 + t^2)): the two-sided p is 1 - |t| / sqrt(2 + t^2).
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_paired_interval_and_p_value_by_hand():
    best = {0: 0.90, 1: 0.92, 2: 0.95}
    base = {0: 0.88, 1: 0.91, 2: 0.90}
    d = [0.02, 0.01, 0.05]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = t_quantile_df2(0.975) * sd / math.sqrt(3)
    t = mean / (sd / math.sqrt(3))
    gap = paired_gap(best, base)
    assert gap.n == 3
    assert gap.mean == pytest.approx(mean, abs=1e-12) and gap.sd == pytest.approx(sd, rel=1e-9)
    assert gap.ci_low == pytest.approx(mean - half, rel=1e-6)
    assert gap.ci_high == pytest.approx(mean + half, rel=1e-6)
    assert gap.p_value == pytest.approx(two_sided_p_df2(t), rel=1e-6)
    # The numbers themselves, so that a formula change cannot pass by changing both sides.
    assert (gap.ci_low, gap.ci_high, gap.p_value) == (pytest.approx(-0.02505, abs=1e-4),
                                                      pytest.approx(0.07838, abs=1e-4),
                                                      pytest.approx(0.1567, abs=1e-3))


def test_pairs_only_common_seeds_and_degenerate_cases():
    assert paired_gap({0: 1.0, 1: 2.0, 5: 9.0}, {0: 0.5, 1: 1.0}).n == 2
    one = paired_gap({0: 0.9}, {0: 0.8})
    assert one.mean == pytest.approx(0.1) and one.ci_low is None and one.p_value is None
    same = paired_gap({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert (same.mean, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_gap({0: 1.0}, {1: 1.0})


def test_significant_keeps_the_baseline_for_an_interval_that_includes_zero():
    gap = paired_gap({0: 0.90, 1: 0.92, 2: 0.95}, {0: 0.88, 1: 0.91, 2: 0.90})  # CI [-0.025, 0.078]
    assert select("significant", False, gap).chose_baseline
    assert "does not lie above zero" in select("significant", False, gap).reason
    assert not select("mean", False, gap).chose_baseline


def test_significant_moves_for_an_interval_above_zero():
    gap = paired_gap({0: 0.92, 1: 0.93, 2: 0.925}, {0: 0.90, 1: 0.90, 2: 0.90})  # d = 0.02, 0.03, 0.025
    assert gap.ci_low > 0
    choice = select("significant", False, gap)
    assert not choice.chose_baseline and "lies above zero" in choice.reason


def test_a_best_baseline_is_kept_by_either_rule():
    assert select("mean", True, None).chose_baseline and select("significant", True, None).chose_baseline


def test_a_gap_within_the_objectives_resolution_is_a_tie_that_keeps_lambda_zero():
    # The fresh clone's case: 3 seeds, 435 validation images, both trials 397 right per seed on average;
    # their means differ only by float rounding (+2e-8), far below one image in 3 x 435 (7.7e-4).
    n_val, seeds = 435, 3
    resolution = objective_resolution(seeds, n_val)
    assert resolution == pytest.approx(1 / 1305)
    best = {0: 396 / n_val, 1: 398 / n_val, 2: 397 / n_val + 6e-8}
    base = {0: 397 / n_val, 1: 397 / n_val, 2: 397 / n_val}
    gap = paired_gap(best, base)
    assert 0 < gap.mean < 1e-7
    for rule in ("mean", "significant"):
        choice = select(rule, False, gap, resolution)
        assert choice.chose_baseline, rule
        assert choice.reason.startswith("a tie:") and "keeping lambda = 0, the simpler model" in choice.reason


def test_one_image_more_is_not_a_tie():
    n_val, seeds = 435, 3
    resolution = objective_resolution(seeds, n_val)
    best = {0: 398 / n_val, 1: 397 / n_val, 2: 397 / n_val}  # one more image right over the three seeds
    base = {0: 397 / n_val, 1: 397 / n_val, 2: 397 / n_val}
    gap = paired_gap(best, base)
    assert gap.mean == pytest.approx(resolution)
    assert not is_tie(gap, resolution)
    assert not select("mean", False, gap, resolution).chose_baseline
    assert select("significant", False, gap, resolution).chose_baseline  # the interval includes zero
    assert "does not lie above zero" in select("significant", False, gap, resolution).reason
