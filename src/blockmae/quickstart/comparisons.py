"""Paired comparisons of encoders evaluated on the same test images.

Accuracies (linear and k-NN top-1, shape-only accuracy): the exact McNemar test on the images one
encoder gets right and the other wrong, with a 95% interval of the paired accuracy difference. Shape
bias: a paired bootstrap over the cue-conflict images (each resample draws the same images for both
encoders). The per-image outputs come from the probe runs (predictions.json) and the shape-bias runs
(decisions.json). Each test is conditional on the two trained encoders: it covers the sampling of test
images, not another pretraining seed (blockmae.report.decisions compares arms over seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blockmae.errors import BlockMAEError
from blockmae.evaluation.cli_probe import read_predictions
from blockmae.evaluation.cli_shape_bias import read_decisions
from blockmae.report.decisions import PER_IMAGE_ALPHA
from blockmae.report.stats import (
    accuracy_difference_interval, cue_outcomes, mcnemar_test, paired_bootstrap, shape_bias_of_outcomes,
)



@dataclass(frozen=True)
class Comparison:
    """`first` minus `second` on one metric, over the same images."""

    first: str
    second: str
    metric: str  # "linear top-1", "k-NN top-1", "shape-only accuracy", "shape bias"
    difference: float
    low: float
    high: float
    p: float
    test: str
    n: int
    seed: int | None = None  # the seed index of both encoders (the answer's per-seed tests)

    @property
    def significant(self) -> bool:
        return self.p < PER_IMAGE_ALPHA

    @property
    def interval_holds_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


@dataclass(frozen=True)
class PerImage:
    """An encoder's per-image outcomes: probe correctness on the probe's eval images, cue-conflict
    outcome codes (1 shape, 2 texture, 0 neither) on the shape-bias images and, on ShapeTex, the linear
    probe's correctness on the shape-only images."""

    name: str
    labels: np.ndarray
    linear_correct: np.ndarray
    knn_correct: np.ndarray
    cue_outcomes: np.ndarray
    shape_only_labels: np.ndarray | None = None
    shape_only_correct: np.ndarray | None = None


def per_image(name: str, linear_dir: Path, knn_dir: Path, shape_bias_dir: Path) -> PerImage:
    """Read one encoder's per-image outputs from its probe and shape-bias run folders."""
    linear, knn = read_predictions(linear_dir), read_predictions(knn_dir)
    labels = np.asarray(linear["labels"])
    if not np.array_equal(labels, np.asarray(knn["labels"])):
        raise BlockMAEError(f"{name}: the linear and k-NN probes were scored on different images")
    decisions = read_decisions(shape_bias_dir)
    cc, shape_only = decisions["cue_conflict"], decisions.get("shape_only")
    so_labels = None if shape_only is None else np.asarray(shape_only["labels"])
    return PerImage(
        name=name,
        labels=labels,
        linear_correct=np.asarray(linear["linear"]) == labels,
        knn_correct=np.asarray(knn["knn"]) == np.asarray(knn["labels"]),
        cue_outcomes=np.asarray(cue_outcomes(cc["decisions"], cc["shape"], cc["texture"])),
        shape_only_labels=so_labels,
        shape_only_correct=None if shape_only is None else np.asarray(shape_only["decisions"]) == so_labels,
    )


def compare(first: PerImage, second: PerImage, seed: int = 0, seed_index: int | None = None) -> list[Comparison]:
    """`first` against `second` on linear top-1, k-NN top-1, shape-only accuracy when both have it
    (McNemar) and shape bias (paired bootstrap seeded by `seed`); `seed_index` labels the comparisons."""
    if not np.array_equal(first.labels, second.labels) or len(first.cue_outcomes) != len(second.cue_outcomes):
        raise BlockMAEError(f"{first.name} and {second.name} were evaluated on different images; "
                            "a paired comparison needs the same ones")
    accuracies = [("linear top-1", first.linear_correct, second.linear_correct),
                  ("k-NN top-1", first.knn_correct, second.knn_correct)]
    if first.shape_only_correct is not None and second.shape_only_correct is not None:
        if not np.array_equal(first.shape_only_labels, second.shape_only_labels):
            raise BlockMAEError(f"{first.name} and {second.name} were scored on different shape-only images")
        accuracies.append(("shape-only accuracy", first.shape_only_correct, second.shape_only_correct))
    out = []
    for metric, a, b in accuracies:
        test = mcnemar_test(list(map(bool, a)), list(map(bool, b)))
        interval = accuracy_difference_interval(list(map(bool, a)), list(map(bool, b)))
        out.append(Comparison(first.name, second.name, metric, float(a.mean() - b.mean()), interval.low,
                              interval.high, test.p, "exact McNemar", len(a), seed_index))
    boot = paired_bootstrap(shape_bias_of_outcomes, first.cue_outcomes, second.cue_outcomes, seed=seed,
                            vectorised=True)
    out.append(Comparison(first.name, second.name, "shape bias", boot.difference, boot.interval.low,
                          boot.interval.high, boot.p, f"paired bootstrap ({boot.num_samples:,} resamples)", boot.n,
                          seed_index))
    return out
