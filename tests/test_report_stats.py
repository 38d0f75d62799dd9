"""The report's statistics against scipy (a test-only dependency) and hand-checked values."""

from __future__ import annotations

import math

import pytest

from blockmae.report.stats import (
    holm,
    mcnemar_test,
    paired_comparison,
    sign_flip_test,
    t_cdf,
    t_interval,
    t_quantile,
    wilson_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 29, 100])
def test_t_distribution_matches_scipy(df):
    for t in (-6.0, -2.1, -0.3, 0.0, 0.7, 1.5, 3.2, 12.0):
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df))


def test_t_interval_matches_scipy_and_needs_two_values():
    values = [0.21, 0.25, 0.19, 0.30]
    iv = t_interval(values)
    mean = sum(values) / 4
    low, high = scipy_stats.t.interval(0.95, 3, loc=mean, scale=scipy_stats.sem(values))
    assert (iv.value, iv.low, iv.high) == pytest.approx((mean, low, high), rel=1e-9)
    assert t_interval([0.3]) is None
    # Two seeds: the interval is wide (t quantile 12.71).
    two = t_interval([0.20, 0.22])
    assert two.high - two.low == pytest.approx(2 * 12.7062047 * 0.01, rel=1e-6)


def test_paired_comparison_matches_scipy_ttest_rel():
    arm = [0.31, 0.35, 0.29, 0.33, 0.36]
    base = [0.28, 0.30, 0.29, 0.30, 0.31]
    cmp = paired_comparison(arm, base)
    assert cmp.deltas == pytest.approx((0.03, 0.05, 0.0, 0.03, 0.05))
    assert cmp.t_p == pytest.approx(scipy_stats.ttest_rel(arm, base).pvalue, rel=1e-9)
    assert not cmp.interval.contains(0.0)  # all deltas >= 0 and the interval excludes 0
    assert cmp.min_sign_flip_p == pytest.approx(2 / 32)


def test_sign_flip_test_is_exact_and_matches_scipy_permutation_test():
    deltas = [0.4, -0.1, 0.3, 0.25, 0.05, 0.2]
    # By hand for two deltas: patterns (+,+), (-,-) reach |sum| = 0.5; (+,-), (-,+) give 0.3 -> p = 0.5.
    assert sign_flip_test([0.4, 0.1]) == 0.5
    assert sign_flip_test([0.0, 0.0]) == 1.0
    ref = scipy_stats.permutation_test(
        (deltas,), lambda d: abs(sum(d)), permutation_type="samples", n_resamples=math.inf, alternative="greater"
    ).pvalue
    assert sign_flip_test(deltas) == pytest.approx(ref, abs=1e-12)


def test_two_seed_difference_is_inside_the_noise_even_when_both_deltas_agree():
    cmp = paired_comparison([0.30, 0.32], [0.28, 0.27])
    assert cmp.sign_flip_p == 0.5 and cmp.min_sign_flip_p == 0.5
    assert cmp.interval.contains(0.0)  # t-interval with 1 df spans 0
    assert paired_comparison([0.3], [0.2]).interval is None


def test_mcnemar_exact_matches_scipy_binomtest():
    arm = [True] * 30 + [False] * 10 + [True] * 5 + [False] * 55
    base = [True] * 30 + [True] * 10 + [False] * 5 + [False] * 55
    result = mcnemar_test(arm, base)
    assert (result.only_arm, result.only_baseline, result.n) == (5, 10, 100)
    assert result.p == pytest.approx(scipy_stats.binomtest(5, 15, 0.5).pvalue, rel=1e-12)
    assert mcnemar_test([True, False], [True, False]).p == 1.0
    with pytest.raises(ValueError):
        mcnemar_test([True], [True, False])
    # Large image counts stay exact (no float overflow of 2**m).
    big = mcnemar_test([True] * 3000 + [False] * 2000, [False] * 3000 + [True] * 2000)
    assert big.p == pytest.approx(scipy_stats.binomtest(2000, 5000, 0.5).pvalue, rel=1e-6)


def test_wilson_interval_matches_known_values():
    iv = wilson_interval(0.5, 100)
    assert iv.low == pytest.approx(0.4038, abs=1e-4) and iv.high == pytest.approx(0.5962, abs=1e-4)


def test_holm_adjusts_by_rank_and_keeps_the_order():
    # By hand, m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, 2 x 0.03 = 0.06,
    # 1 x 0.04 = 0.04 -> made non-decreasing: 0.04, 0.06, 0.06, 0.06; returned in the order given.
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # 3 x 0.001, 2 x 0.4 = 0.8, then 1 x 0.5 lifted to 0.8; 2 x 0.6 is capped at 1.
    assert holm([0.5, 0.4, 0.001]) == pytest.approx([0.8, 0.8, 0.003])
    assert holm([0.6, 0.7, 0.001]) == pytest.approx([1.0, 1.0, 0.003])
    # A single test is unchanged; an empty family is empty.
    assert holm([0.2]) == [0.2] and holm([]) == []
    # A p of 0.02 passes 0.05 alone and fails it in a family of three equal ones (3 x 0.02 = 0.06).
    assert holm([0.02, 0.02, 0.02]) == pytest.approx([0.06, 0.06, 0.06])
    with pytest.raises(ValueError):
        holm([0.1, 1.5])
