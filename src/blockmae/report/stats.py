"""The statistics of a report: intervals and paired tests, in pure Python (no scipy at run time).

- :func:`wilson_interval`: a proportion measured on n images (one run's accuracy).
- :func:`t_interval`: the mean of a few seeds, with Student's t quantile for n - 1 degrees of freedom.
- :func:`paired_t_test` and :func:`sign_flip_test`: per-seed deltas between two arms that share seeds.
- :func:`mcnemar_test`: per-image correctness of two arms evaluated on the same images.

Student's t distribution is only ever needed for integer degrees of freedom (n - 1 seeds), where its CDF
has a closed form (a finite trigonometric series, Abramowitz & Stegun 26.7.3-4); the quantile is found by
bisection on it. tests/test_report_stats.py checks both against scipy.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Sequence

# Standard normal quantile at 0.975.
Z95 = 1.959963984540054
# Sign-flip tests enumerate every pattern up to this many deltas, else sample this many patterns.
EXACT_SIGN_FLIP_MAX_N = 16
SIGN_FLIP_SAMPLES = 20_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval."""

    value: float
    low: float
    high: float

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def above(self, other: "Interval") -> bool:
        """Higher than `other`, with the two intervals apart."""
        return self.low > other.high

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def wilson_interval(accuracy: float, n: int) -> Interval:
    """95% Wilson score interval of an accuracy measured on `n` images."""
    if n <= 0:
        return Interval(accuracy, 0.0, 1.0)
    centre = (accuracy + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(accuracy * (1 - accuracy) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return Interval(accuracy, max(0.0, centre - half), min(1.0, centre + half))


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for t >= 0 and integer df >= 1 (A&S 26.7.3 for odd df, 26.7.4 for even)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, 1.0
        if df > 1:
            total = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
            total *= math.sin(theta) * math.cos(theta)
        return min(1.0, 2 / math.pi * (theta + total))
    total, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return min(1.0, math.sin(theta) * total)


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with integer `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    half = _t_central(abs(t), df) / 2
    return 0.5 + half if t >= 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student's t with integer `df` (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2 * high
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval | None:
    """Interval of the mean of `values` (seeds) from Student's t; None with fewer than two values."""
    mean, std = mean_std(values)
    if std is None:
        return None
    half = t_quantile(0.5 + level / 2, len(values) - 1) * std / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class PairedComparison:
    """An arm against the baseline over the seeds they share: delta = arm - baseline per seed."""

    deltas: tuple[float, ...]
    mean: float
    interval: Interval | None  # 95% t-interval of the mean delta (None below two pairs)
    t_p: float | None  # two-sided paired t-test
    sign_flip_p: float | None  # two-sided sign-flip permutation test (exact up to EXACT_SIGN_FLIP_MAX_N)
    min_sign_flip_p: float | None  # the smallest p the sign-flip test can give with this many pairs

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def outside_noise(self) -> bool:
        """True only when the 95% interval of the mean delta excludes 0."""
        return self.interval is not None and not self.interval.contains(0.0)


def paired_t_test(deltas: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t-test of mean(deltas) = 0; None below two deltas."""
    mean, std = mean_std(deltas)
    if std is None:
        return None
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (std / math.sqrt(len(deltas)))
    return max(0.0, 1.0 - _t_central(abs(t), len(deltas) - 1))


def sign_flip_test(deltas: Sequence[float], seed: int = 0) -> float | None:
    """Two-sided p-value of the sign-flip permutation test on |sum of deltas|: under the null each delta
    is as likely to have either sign. Exact (every pattern) up to EXACT_SIGN_FLIP_MAX_N deltas, else a
    seeded Monte-Carlo estimate."""
    n = len(deltas)
    if n == 0:
        return None
    observed = abs(sum(deltas))
    tol = 1e-12 * max(1.0, observed)
    if n <= EXACT_SIGN_FLIP_MAX_N:
        patterns = itertools.product((1, -1), repeat=n)
        hits = sum(abs(sum(s * d for s, d in zip(signs, deltas))) >= observed - tol for signs in patterns)
        return hits / 2**n
    rng = random.Random(seed)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in deltas)) >= observed - tol
               for _ in range(SIGN_FLIP_SAMPLES))
    return (hits + 1) / (SIGN_FLIP_SAMPLES + 1)


def paired_comparison(arm: Sequence[float], baseline: Sequence[float]) -> PairedComparison:
    """Per-seed deltas `arm[i] - baseline[i]` (same seeds, in order) with their interval and tests."""
    if len(arm) != len(baseline) or not arm:
        raise ValueError("paired values need the same, non-zero length")
    deltas = tuple(a - b for a, b in zip(arm, baseline))
    nonzero = [d for d in deltas if d != 0]
    return PairedComparison(
        deltas=deltas,
        mean=sum(deltas) / len(deltas),
        interval=t_interval(deltas),
        t_p=paired_t_test(deltas),
        sign_flip_p=sign_flip_test(deltas),
        min_sign_flip_p=2 / 2 ** len(deltas) if nonzero else None,
    )


@dataclass(frozen=True)
class McNemar:
    """Per-image comparison of two classifiers on the same images."""

    only_arm: int  # images the arm gets right and the baseline wrong
    only_baseline: int  # the reverse
    n: int  # images compared
    p: float  # exact two-sided McNemar (binomial on the discordant pairs)


def mcnemar_test(arm_correct: Sequence[bool], baseline_correct: Sequence[bool]) -> McNemar:
    """Exact McNemar test of two per-image correctness vectors over the same images."""
    if len(arm_correct) != len(baseline_correct):
        raise ValueError(f"per-image results of different lengths ({len(arm_correct)} vs {len(baseline_correct)})")
    b = sum(1 for a, r in zip(arm_correct, baseline_correct) if a and not r)
    c = sum(1 for a, r in zip(arm_correct, baseline_correct) if r and not a)
    m = b + c
    if m == 0:
        p = 1.0
    else:
        tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
        p = min(1.0, 2 * tail / 2**m)  # exact integers: no overflow for large image counts
    return McNemar(b, c, len(arm_correct), p)
