"""Paired comparisons of two encoders on the same images: the paired bootstrap, shape-bias outcome codes
and the interval of an accuracy difference (blockmae.report.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockmae.evaluation.shape_bias import shape_bias_from_decisions
from blockmae.report.stats import (
    NEITHER,
    SHAPE,
    TEXTURE,
    accuracy_difference_interval,
    cue_outcomes,
    mcnemar_test,
    paired_bootstrap,
    shape_bias_of_outcomes,
)


def row_mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1)


def correlated_pair(rng: np.random.Generator, n: int, p_a: float, p_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two encoders that share image difficulty (a paired design)."""
    u = rng.random(n)  # one difficulty per image, seen by both
    return (u < p_a).astype(float), (u < p_b).astype(float)


def test_identical_inputs_give_zero_difference_and_p_one():
    values = np.random.default_rng(0).random(300)
    for vectorised, statistic in ((True, row_mean), (False, np.mean)):
        result = paired_bootstrap(statistic, values, values.copy(), num_samples=2000, vectorised=vectorised)
        assert result.difference == 0.0 and result.p == 1.0
        assert (result.interval.low, result.interval.high) == (0.0, 0.0)
        assert result.n == 300 and result.num_samples == 2000


def test_strong_difference_is_detected():
    a, b = correlated_pair(np.random.default_rng(1), 400, 0.8, 0.6)
    result = paired_bootstrap(row_mean, a, b, num_samples=5000, vectorised=True)
    assert result.difference == pytest.approx(a.mean() - b.mean())
    assert result.p < 0.01 and result.interval.low > 0
    assert result.p >= 2 / (5000 + 1)  # never 0 with finitely many resamples
    # The other way round: the same images, the sign flips.
    reverse = paired_bootstrap(row_mean, b, a, num_samples=5000, vectorised=True)
    assert reverse.difference == -result.difference and reverse.interval.high < 0 and reverse.p < 0.01


def test_deterministic_given_seed_and_one_draw_for_both_modes():
    a, b = correlated_pair(np.random.default_rng(2), 150, 0.7, 0.65)
    first = paired_bootstrap(row_mean, a, b, num_samples=3000, seed=5, vectorised=True)
    assert paired_bootstrap(row_mean, a, b, num_samples=3000, seed=5, vectorised=True) == first
    # The per-resample statistic sees the same resampled images as the vectorised one.
    looped = paired_bootstrap(np.mean, a, b, num_samples=3000, seed=5)
    assert looped.interval.low == pytest.approx(first.interval.low)
    assert looped.interval.high == pytest.approx(first.interval.high) and looped.p == first.p
    assert paired_bootstrap(row_mean, a, b, num_samples=3000, seed=6, vectorised=True) != first


def test_resampling_is_paired_not_independent():
    """Two encoders that agree on most images: pairing makes the interval of the difference far narrower
    than the spread of either accuracy alone."""
    a, b = correlated_pair(np.random.default_rng(3), 500, 0.62, 0.60)
    paired = paired_bootstrap(row_mean, a, b, num_samples=4000, vectorised=True)
    width = paired.interval.high - paired.interval.low
    independent_width = 2 * 1.96 * math.sqrt(0.62 * 0.38 / 500 + 0.60 * 0.40 / 500)
    assert width < 0.5 * independent_width
    # ~ the paired Wald width: 2 z sqrt(discordant share / n) with 2% discordant images.
    assert width == pytest.approx(2 * 1.96 * math.sqrt(0.02 / 500), rel=0.3)


def test_interval_coverage_on_synthetic_pairs():
    """95% intervals of a known difference (0.1) cover it in about 95% of repeated experiments."""
    rng = np.random.default_rng(4)
    trials, covered_boot, covered_wald = 200, 0, 0
    for trial in range(trials):
        u = rng.random(120)
        a, b = (u < 0.75).astype(float), (u < 0.65).astype(float)  # true difference exactly 0.1
        flip = rng.random(120) < 0.1  # some images where b wins: discordance both ways
        a[flip], b[flip] = b[flip], a[flip]
        truth = 0.1 * (1 - 2 * 0.1)
        boot = paired_bootstrap(row_mean, a, b, num_samples=1000, seed=trial, vectorised=True)
        covered_boot += boot.interval.contains(truth)
        covered_wald += accuracy_difference_interval(a.astype(bool).tolist(), b.astype(bool).tolist()).contains(truth)
    assert 0.89 <= covered_boot / trials <= 0.99
    assert 0.90 <= covered_wald / trials <= 0.995


def test_nan_resamples_are_left_out():
    a = np.array([SHAPE, NEITHER, NEITHER, NEITHER, NEITHER, NEITHER])
    b = np.array([SHAPE, TEXTURE, NEITHER, NEITHER, NEITHER, NEITHER])
    result = paired_bootstrap(shape_bias_of_outcomes, a, b, num_samples=1000, vectorised=True)
    assert result.difference == 0.5
    # a resample without image 0 has no shape-or-texture decision for `a`: its difference is undefined.
    assert 0 < result.num_samples < 1000
    assert (5 / 6) ** 6 * 1000 == pytest.approx(1000 - result.num_samples, abs=60)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(np.mean, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="one value per row"):
        paired_bootstrap(np.mean, [1.0, 2.0], [1.0, 3.0], vectorised=True)  # mean of all, not per row


def test_cue_outcomes_and_shape_bias_match_the_shape_bias_evaluation():
    shape = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    texture = torch.tensor([1, 2, 3, 0, 0, 0, 1])
    decisions = torch.tensor([0, 2, 9, 1, 4, 0, 6])
    codes = cue_outcomes(decisions, shape, texture)
    assert codes.tolist() == [SHAPE, TEXTURE, NEITHER, NEITHER, SHAPE, TEXTURE, SHAPE]
    reference = shape_bias_from_decisions(decisions, shape, texture, num_samples=10)
    assert shape_bias_of_outcomes(codes) == reference.shape_bias == 3 / 5
    # Rows of a 2-D array: one value each, nan where nothing was decided either way.
    rows = np.stack([codes, np.full(7, NEITHER), np.full(7, TEXTURE)])
    np.testing.assert_array_equal(shape_bias_of_outcomes(rows), [3 / 5, np.nan, 0.0])
    assert math.isnan(shape_bias_of_outcomes([NEITHER, NEITHER]))
    with pytest.raises(ValueError, match="conflicting"):
        cue_outcomes([0, 1], [0, 1], [0, 2])


def test_shape_bias_difference_of_two_encoders():
    """A shape-leaning and a texture-leaning encoder on the same 300 cue-conflict images."""
    rng = np.random.default_rng(7)
    shape, texture = rng.integers(0, 5, 300), rng.integers(5, 10, 300)
    u = rng.random(300)  # how shape-readable each image is, the same for both encoders
    shapey, texturey = np.where(u < 0.7, shape, texture), np.where(u < 0.4, shape, texture)
    a, b = cue_outcomes(shapey, shape, texture), cue_outcomes(texturey, shape, texture)
    result = paired_bootstrap(shape_bias_of_outcomes, a, b, num_samples=4000, vectorised=True)
    assert result.difference == pytest.approx(shape_bias_of_outcomes(a) - shape_bias_of_outcomes(b))
    assert result.interval.contains(0.3) and result.interval.low > 0.2 and result.p < 0.01


def test_accuracy_difference_interval_by_hand_and_beside_mcnemar():
    # 100 images: 20 right only for a, 5 only for b, 60 both, 15 neither.
    a = [True] * 20 + [False] * 5 + [True] * 60 + [False] * 15
    b = [False] * 20 + [True] * 5 + [True] * 60 + [False] * 15
    interval = accuracy_difference_interval(a, b)
    p_a, p_b = 20.5 / 102, 5.5 / 102
    half = 1.959963984540054 * math.sqrt((p_a + p_b - (p_a - p_b) ** 2) / 102)
    assert interval.value == pytest.approx(0.15)
    assert (interval.low, interval.high) == pytest.approx((p_a - p_b - half, p_a - p_b + half))
    assert interval.low > 0 and mcnemar_test(a, b).p < 0.05  # both say a is better
    # No discordant image: a non-degenerate interval around 0, and McNemar's p = 1.
    same = accuracy_difference_interval(a, a)
    assert same.value == 0.0 and same.low < 0 < same.high and mcnemar_test(a, a).p == 1.0
    with pytest.raises(ValueError, match="different lengths"):
        accuracy_difference_interval(a, b[:-1])
