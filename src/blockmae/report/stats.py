"""The statistics of a report: intervals and paired tests, in pure Python and numpy (no scipy at run time).

- :func:`wilson_interval`: a proportion measured on n images (one run's accuracy).
- :func:`t_interval`: the mean of a few seeds, with Student's t quantile for n - 1 degrees of freedom.
- :func:`paired_t_test` and :func:`sign_flip_test`: per-seed deltas between two arms that share seeds.
- :func:`holm`: Holm-adjusted p-values of a family of comparisons (family-wise error control).
- :func:`mcnemar_test`: per-image correctness of two arms evaluated on the same images, and
  :func:`accuracy_difference_interval` the interval of their accuracy difference.
- :func:`bootstrap`: any per-image statistic (an area under an accuracy curve, say), resampling images;
  :func:`paired_bootstrap`: the same for the difference of two encoders on the same images (accuracy, shape
  bias via :func:`cue_outcomes` and :func:`shape_bias_of_outcomes`), resampling the images jointly.

Student's t distribution is only ever needed for integer degrees of freedom (n - 1 seeds), where its CDF
has a closed form (a finite trigonometric series, Abramowitz & Stegun 26.7.3-4); the quantile is found by
bisection on it. tests/test_report_stats.py checks both against scipy.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# Standard normal quantile at 0.975.
Z95 = 1.959963984540054
# Sign-flip tests enumerate every pattern up to this many deltas, else sample this many patterns.
EXACT_SIGN_FLIP_MAX_N = 16
SIGN_FLIP_SAMPLES = 20_000
# The bootstrap draws its resamples in chunks holding at most this many image indices (memory).
BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22
# Per-image outcome codes on a cue-conflict image (cue_outcomes, shape_bias_of_outcomes).
NEITHER, SHAPE, TEXTURE = 0, 1, 2


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval."""

    value: float
    low: float
    high: float

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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    Sorted ascending, the k-th smallest p (k = 1..m) is multiplied by m - k + 1, capped at 1 and made
    non-decreasing along the sorted order; rejecting every hypothesis whose adjusted p is below alpha
    keeps the family-wise error rate at alpha (Holm 1979), for any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        if not 0 <= p_values[i] <= 1:
            raise ValueError(f"p-values must be in [0, 1], got {p_values[i]}")
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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


def accuracy_difference_interval(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> Interval:
    """accuracy(a) - accuracy(b) on the same images with its 95% interval.

    Agresti & Min's (2005) interval for matched proportions: the Wald interval of the paired difference,
    (b - c)/n +- z sqrt((b + c) - (b - c)^2 / n) / n with b (c) the images only `a` (only `b`) gets
    right, computed after adding 1/2 to each of the four cells of the paired 2x2 table (n + 2 in all). The
    plain Wald interval collapses to a point when no image is discordant and undercovers when few are;
    the adjustment gives close to nominal coverage. `value` is the unadjusted difference; the bounds are
    clipped to [-1, 1]."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"per-image results of different lengths ({len(a_correct)} vs {len(b_correct)})")
    n = len(a_correct)
    if n == 0:
        raise ValueError("no images to compare")
    only_a = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    p_a, p_b, total = (only_a + 0.5) / (n + 2), (only_b + 0.5) / (n + 2), n + 2
    centre = p_a - p_b
    half = Z95 * math.sqrt(max(0.0, p_a + p_b - centre**2) / total)
    return Interval((only_a - only_b) / n, max(-1.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Bootstrap:
    """A per-image statistic with its percentile bootstrap interval and the bootstrap test of value = 0."""

    value: float  # on the full data
    interval: Interval  # value = value; percentile interval of the resampled statistics at `level`
    p: float  # two-sided bootstrap p-value of value = 0 (see bootstrap)
    n: int  # images
    num_samples: int  # resamples whose statistic is defined (a nan statistic drops its resample)

    @property
    def difference(self) -> float:
        """The value, named for paired use (statistic(a) - statistic(b))."""
        return self.value


PairedBootstrap = Bootstrap  # what paired_bootstrap returns: its value is the difference


def bootstrap(
    statistic: Callable[[Any], Any], values: Sequence[Any] | np.ndarray, num_samples: int = 10_000, seed: int = 0,
    level: float = 0.95, vectorised: bool = False,
) -> Bootstrap:
    """Percentile bootstrap of statistic(values), values[i] belonging to image i (the one bootstrap of blockmae).

    Every resample draws n image indices with replacement (seeded by `seed`: the same call gives the same
    result). `statistic`: with `vectorised=False`, statistic(values of n images) -> float, called once per
    resample; with `vectorised=True`, statistic(array with one resample per row, shape (rows, n, ...)) ->
    one value per row (rows,), e.g. `lambda x: x.mean(axis=1)`, which is much faster. A resample whose
    statistic is nan is left out.

    The interval holds the central `level` of the resampled statistics s*. The p-value (of s = 0) inverts
    that percentile interval: p = min(1, 2 min(#(s* <= 0) + 1, #(s* >= 0) + 1) / (B + 1)) over the B
    resamples, so p < 1 - level about when the interval excludes 0. The +1s count the data as one of the
    draws (as Monte-Carlo p-values do): p is at least 2 / (B + 1), never 0.
    """
    x = np.asarray(values)
    if x.ndim == 0 or len(x) == 0 or num_samples < 1 or not 0 < level < 1:
        raise ValueError("the bootstrap needs per-image values, num_samples >= 1 and 0 < level < 1")
    n = len(x)

    def per_row(rows: np.ndarray) -> np.ndarray:
        if not vectorised:
            return np.array([float(statistic(row)) for row in rows])
        out = np.asarray(statistic(rows), dtype=float)
        if out.shape != (len(rows),):
            raise ValueError(f"a vectorised statistic must give one value per row: {len(rows)} rows gave "
                             f"shape {out.shape}")
        return out

    value = float(per_row(x[None])[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    parts = []
    for start in range(0, num_samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, num_samples - start), n))
        parts.append(per_row(x[idx]))
    resampled = np.concatenate(parts)
    resampled = resampled[~np.isnan(resampled)]
    if len(resampled) == 0:
        return Bootstrap(value, Interval(value, math.nan, math.nan), math.nan, n, 0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    at_most, at_least = int((resampled <= 0).sum()), int((resampled >= 0).sum())
    p = min(1.0, 2 * (min(at_most, at_least) + 1) / (len(resampled) + 1))
    return Bootstrap(value, Interval(value, float(low), float(high)), p, n, len(resampled))


def paired_bootstrap(
    statistic: Callable[[Any], Any], a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray,
    num_samples: int = 10_000, seed: int = 0, level: float = 0.95, vectorised: bool = False,
) -> Bootstrap:
    """Paired bootstrap of statistic(a) - statistic(b); a[i] and b[i] belong to the same image.

    Each resample applies the same image indices to a and b (:func:`bootstrap` over the pairs), so what
    the two encoders share per image (an easy or a hard image) cancels out of the difference. `statistic`
    is as in :func:`bootstrap` (e.g. :func:`shape_bias_of_outcomes` with `vectorised=True`)."""
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.ndim == 0 or xb.ndim == 0 or len(xa) != len(xb):
        raise ValueError(f"paired per-image values need the same length, got {xa.shape} and {xb.shape}")
    pairs = np.stack([xa, xb], axis=1)  # (n, 2, ...): image i's two values side by side

    if vectorised:
        def difference(rows: np.ndarray) -> Any:
            return np.asarray(statistic(rows[:, :, 0]), dtype=float) - np.asarray(statistic(rows[:, :, 1]), dtype=float)
    else:
        def difference(row: np.ndarray) -> float:
            return float(statistic(row[:, 0])) - float(statistic(row[:, 1]))
    return bootstrap(difference, pairs, num_samples=num_samples, seed=seed, level=level, vectorised=vectorised)


def cue_outcomes(decisions: Sequence[int] | np.ndarray, shape_labels: Sequence[int] | np.ndarray,
                 texture_labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-image outcome codes on cue-conflict images (int8): SHAPE (1) where the decision is the shape
    label, TEXTURE (2) where it is the texture label, NEITHER (0) otherwise. Takes lists, arrays or CPU
    tensors (e.g. the lists of a shape-bias run's decisions.json, `read_decisions`)."""
    decided, shape, texture = (np.asarray(x).astype(np.int64) for x in (decisions, shape_labels, texture_labels))
    if not decided.shape == shape.shape == texture.shape or decided.ndim != 1:
        raise ValueError(f"decisions and labels need one value per image, got {decided.shape}, {shape.shape}, "
                         f"{texture.shape}")
    if bool((shape == texture).any()):
        raise ValueError("cue outcomes need conflicting images: drop those whose shape and texture labels agree")
    outcomes = np.full(decided.shape, NEITHER, dtype=np.int8)
    outcomes[decided == shape] = SHAPE
    outcomes[decided == texture] = TEXTURE
    return outcomes


def shape_bias_of_outcomes(outcomes: Sequence[int] | np.ndarray) -> Any:
    """shape / (shape + texture) of outcome codes (:func:`cue_outcomes`), nan without either decision.

    1-D (one value per image) -> float; 2-D (rows of resampled images) -> one value per row, so it can be
    `paired_bootstrap`'s statistic with `vectorised=True`. The counts are exact integers, so the value equals
    the shape bias of `blockmae eval shape-bias` on the same decisions bit for bit."""
    codes = np.asarray(outcomes)
    shape = (codes == SHAPE).sum(axis=-1)
    decided = shape + (codes == TEXTURE).sum(axis=-1)
    bias = np.where(decided > 0, shape / np.maximum(decided, 1), math.nan)
    return float(bias) if codes.ndim == 1 else bias
