"""The one decision policy of every report (the quickstart's answer, sweep and registry studies): arm
against arm over pretraining seeds, each verdict with the arms' training stage where it is known.

An arm is one setting (a mask, random init, an ablated value); it has one encoder per seed index (pretrained
with that seed, or random weights drawn with it), all scored on the same test images. For a pair of arms
and a metric:

* the per-seed paired difference, first minus second at the same seed index;
* its mean over the seeds with a 95% Student t-interval over seeds and the paired t-test's p; with a
  single shared seed there is no seed-level interval, and the per-image test of that seed stands in (its
  interval covers the sampling of test images only, and the verdict says so: :func:`interval_scope`);
* Holm's adjustment of the p-values across the whole family of verdicts;
* the verdict: "inside the noise" when the interval covers 0; "higher" or "lower" when it excludes 0
  and the Holm-adjusted p < ALPHA; otherwise "not resolved with N seeds".

Shape bias counts only decisions on cue-conflict images; when an arm's probe has not learned shape
(shape-only accuracy near chance) its "shape" decisions are chance hits, so no shape-bias verdict is
given for it (`learned_shape`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from blockmae.report.stats import Interval, holm, paired_t_test, t_interval, wilson_interval

ALPHA = 0.05  # family-wise level of the Holm-adjusted verdicts
# The level at which one seed's per-image test (secondary detail, no multiplicity control) is called significant.
PER_IMAGE_ALPHA = 0.01
# An arm has learned shape when every seed's shape-only accuracy has a 95% Wilson lower bound of at
# least this many times chance (issue 19: twice chance, 20% on ShapeTex's 10 classes).
LEARNED_SHAPE_CHANCE_FACTOR = 2.0
METRICS = ("linear top-1", "k-NN top-1", "shape-only accuracy", "shape bias")
HIGHER, LOWER, INSIDE = "higher", "lower", "inside the noise"
NOT_INTERPRETABLE = "no verdict: shape bias not interpretable"
RULES = (f"per pair of arms and metric, the per-seed paired difference (same seed index, same test images), its "
         f"mean over seeds with a 95% Student t-interval over seeds and the paired t-test's p (one shared seed: that "
         f"seed's per-image test, whose interval covers test images only); p Holm-adjusted across every verdict; "
         f"'{INSIDE}' when the interval covers 0, '{HIGHER}'/'{LOWER}' when it excludes 0 and the Holm-adjusted "
         f"p < {ALPHA:g}, else 'not resolved with N seeds'; no shape-bias verdict for an arm unless every seed's "
         f"shape-only accuracy has a 95% Wilson lower bound of at least {LEARNED_SHAPE_CHANCE_FACTOR:g}x chance")


def not_resolved(n_seeds: int) -> str:
    return f"not resolved with {n_seeds} seed{'s' if n_seeds != 1 else ''}"


def per_image_word(low: float, high: float, p: float) -> str:
    """The word for one seed's per-image test shown as secondary detail: inside the noise only when its
    interval covers 0."""
    if low <= 0.0 <= high:
        return INSIDE
    if p < PER_IMAGE_ALPHA:
        return f"significant (p < {PER_IMAGE_ALPHA:g})"
    return f"interval excludes 0, p >= {PER_IMAGE_ALPHA:g}"


def conditional_on_seed(seed: int) -> str:
    """The label of every per-image interval or test: it covers test images, not pretraining seeds."""
    return f"conditional on seed {seed}; says nothing about training seeds"


@dataclass(frozen=True)
class SeedResult:
    """One encoder (an arm at one seed index): its numbers on the shared test images."""

    linear_top1: float
    knn_top1: float
    shape_only_accuracy: float
    shape_only_images: int
    shape_bias: float

    def metric(self, name: str) -> float:
        return {"linear top-1": self.linear_top1, "k-NN top-1": self.knn_top1,
                "shape-only accuracy": self.shape_only_accuracy, "shape bias": self.shape_bias}[name]


@dataclass(frozen=True)
class ArmStage:
    """How far an arm's pretraining went (from its references' manifests; None for random init) and
    whether its probe reads shape."""

    arm: str
    seeds: tuple[int, ...]
    images_seen: tuple[int | None, ...]  # per seed
    final_loss: tuple[float | None, ...]  # per seed
    shape_only: Interval  # mean over seeds, t-interval (one seed: Wilson interval over its test images)
    shape_only_lowest_bound: float  # the smallest per-seed Wilson lower bound
    chance: float
    learned_shape: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape_only"] = {"value": self.shape_only.value, "low": self.shape_only.low, "high": self.shape_only.high,
                             "over": "seeds" if len(self.seeds) > 1 else "test images"}
        return out


def arm_stage(arm: str, per_seed: Mapping[int, SeedResult], chance: float,
              images_seen: Mapping[int, int | None] | None = None,
              final_loss: Mapping[int, float | None] | None = None) -> ArmStage:
    """The training stage of `arm` from its per-seed results (and its references' manifests)."""
    seeds = tuple(sorted(per_seed))
    accuracies = [per_seed[s].shape_only_accuracy for s in seeds]
    bounds = [wilson_interval(per_seed[s].shape_only_accuracy, per_seed[s].shape_only_images).low for s in seeds]
    if len(seeds) > 1:
        shape_only = t_interval(accuracies)
    else:
        only = per_seed[seeds[0]]
        shape_only = wilson_interval(only.shape_only_accuracy, only.shape_only_images)
    return ArmStage(arm, seeds, tuple((images_seen or {}).get(s) for s in seeds),
                    tuple((final_loss or {}).get(s) for s in seeds), shape_only, min(bounds), chance,
                    min(bounds) >= LEARNED_SHAPE_CHANCE_FACTOR * chance)


@dataclass(frozen=True)
class PerImageTest:
    """A per-image test of one pair at one seed (McNemar, a paired bootstrap): its difference, interval and p."""

    difference: float
    low: float
    high: float
    p: float
    test: str


@dataclass
class Verdict:
    """`first` against `second` on `metric` over their shared seed indices."""

    first: str
    second: str
    metric: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]  # per seed, first - second
    mean: float
    low: float | None
    high: float | None
    interval_over: str  # "seeds" (t-interval) or "test images" (one seed: its per-image interval)
    p: float | None  # paired t-test over seeds, or the per-image test with one seed; None: no test
    p_holm: float | None = None
    verdict: str = ""
    reason: str = ""  # why there is no verdict (shape bias not interpretable)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tested(self) -> bool:
        return self.p is not None

    @property
    def seed_level(self) -> bool:
        """Whether the verdict is a claim about pretraining seeds (not one seed's test images)."""
        return self.interval_over == "seeds"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interval_scope(v: Verdict) -> str:
    """What a verdict's interval covers, in words: seeds, or one seed's test images."""
    if v.seed_level:
        return f"95% t-interval over {len(v.seeds)} seeds"
    return (f"{conditional_on_seed(v.seeds[0])} (seed {v.seeds[0]} only: the interval covers test images only, not "
            "another pretraining seed)")


def pair_verdict(first: str, second: str, metric: str, a: Mapping[int, float], b: Mapping[int, float],
                 per_image: Mapping[int, PerImageTest] | None = None) -> Verdict | None:
    """The paired comparison of two arms on `metric` from their per-seed values (seed index -> value), over
    the seed indices both have (None: none shared). The verdict word is set by :func:`decide` once the
    whole family is known."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    diffs = tuple(a[s] - b[s] for s in seeds)
    mean = sum(diffs) / len(diffs)
    if len(seeds) > 1:
        interval = t_interval(diffs)
        assert interval is not None
        return Verdict(first, second, metric, seeds, diffs, mean, interval.low, interval.high, "seeds",
                       paired_t_test(diffs))
    test = (per_image or {}).get(seeds[0])
    if test is None:
        return Verdict(first, second, metric, seeds, diffs, mean, None, None, "test images", None)
    return Verdict(first, second, metric, seeds, diffs, test.difference, test.low, test.high, "test images", test.p)


def decide(verdicts: Sequence[Verdict], stages: Mapping[str, ArmStage]) -> list[Verdict]:
    """Set every verdict's Holm-adjusted p (family: every tested, interpretable verdict) and its word.

    A shape-bias verdict is withheld for a pair where either arm has not learned shape."""
    family = []
    for v in verdicts:
        v.stages = {name: stages[name].to_dict() for name in (v.first, v.second) if name in stages}
        unlearned = [name for name in (v.first, v.second) if name in stages and not stages[name].learned_shape]
        if v.metric == "shape bias" and unlearned:
            v.verdict = NOT_INTERPRETABLE
            v.reason = (f"{' and '.join(unlearned)} {'has' if len(unlearned) == 1 else 'have'} not learned shape "
                        "(shape-only accuracy not clearly above chance), so the 'shape' decisions on cue-conflict "
                        "images are chance hits")
            v.p = None
        elif v.tested and not math.isnan(float(v.p)):
            family.append(v)
        else:  # no test (one seed without its per-image test) or an undefined one (a nan shape bias)
            v.p = None
            v.verdict = not_resolved(len(v.seeds))
    for v, adjusted in zip(family, holm([float(v.p) for v in family])):
        v.p_holm = adjusted
        covers_zero = v.low is None or v.high is None or v.low <= 0.0 <= v.high
        if covers_zero:
            v.verdict = INSIDE
        elif adjusted < ALPHA:
            v.verdict = HIGHER if v.mean > 0 else LOWER
        else:
            v.verdict = not_resolved(len(v.seeds))
    return list(verdicts)
