"""Accuracy-versus-level curves: their summary numbers and their figures (shared by the sweeps).

A curve is a list of levels, ordered from the least to the most filtered, with an accuracy each; its
first level is its own reference ("clean": unfiltered, or greyscale-unfiltered in model-vs-human's
protocol). Summary numbers:

* ``auc``: area under accuracy against level position (levels equally spaced on [0, 1], trapezoids),
  so 1 = perfect at every level; position rather than sigma because the levels are ordinal (sigma jumps
  from 15 to 40). ``auc_normalised``: the same area of (acc - chance) / (clean - chance), 1 = no loss.
* ``half_level``: the level at which accuracy first falls to chance + (clean - chance) / 2, linearly
  interpolated between the two levels around the crossing (in level units when both are finite, else the
  finite one); nan when it never falls that far (``half_reached`` false) or clean is at chance.
* per level ``relative`` = acc / clean; ``mean_relative`` over the filtered levels.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from blockmae.report.stats import bootstrap


def normalised(accuracies: Sequence[float], clean: float, chance: float) -> list[float]:
    """(acc - chance) / (clean - chance): 1 at clean accuracy, 0 at chance (nan when clean <= chance)."""
    span = clean - chance
    return [(a - chance) / span if span > 0 else math.nan for a in accuracies]


def _area(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return float(v[0])
    return float(np.sum((v[1:] + v[:-1]) / 2) / (len(v) - 1))


def half_level(levels: Sequence[float], accuracies: Sequence[float], chance: float) -> tuple[float, float]:
    """(level, position) where accuracy first falls to halfway between clean and chance (nan, nan if never)."""
    clean = accuracies[0]
    if clean <= chance:
        return math.nan, math.nan
    target = chance + (clean - chance) / 2
    for i in range(1, len(accuracies)):
        a0, a1 = accuracies[i - 1], accuracies[i]
        if a1 <= target:  # first crossing: a0 > target here
            t = (a0 - target) / (a0 - a1)
            l0, l1 = float(levels[i - 1]), float(levels[i])
            if math.isfinite(l0) and math.isfinite(l1):
                level = l0 + t * (l1 - l0)
            else:
                level = l1 if math.isfinite(l1) else l0
            return level, (i - 1) + t
    return math.nan, math.nan


def curve_summary(levels: Sequence[float], accuracies: Sequence[float], chance: float) -> dict[str, Any]:
    """The summary numbers of one curve (see the module docstring)."""
    clean = float(accuracies[0])
    level, position = half_level(levels, accuracies, chance)
    relative = [a / clean if clean > 0 else math.nan for a in accuracies]
    return {
        "clean": clean, "chance": chance, "auc": _area(accuracies),
        "auc_normalised": _area(normalised(accuracies, clean, chance)),
        "half_level": level, "half_position": position, "half_reached": not math.isnan(level),
        "mean_relative": float(np.mean(relative[1:])) if len(relative) > 1 else math.nan,
        "last_relative": relative[-1],
    }


def _areas(accuracies: np.ndarray) -> np.ndarray:
    """Trapezoid area over equally spaced positions of each row of (rows, levels) accuracies."""
    if accuracies.shape[-1] == 1:
        return accuracies[..., 0]
    return ((accuracies[..., 1:] + accuracies[..., :-1]) / 2).sum(axis=-1) / (accuracies.shape[-1] - 1)


def auc_intervals(correct: np.ndarray, chance: float, seed: int = 0) -> dict[str, float]:
    """95% bootstrap intervals (over images) of a curve's auc and auc_normalised.

    `correct`: (images, levels) top-1 hits of the same images at every level; each resample draws images
    with replacement and keeps their whole row, so the levels stay paired."""
    hits = np.asarray(correct, dtype=np.float32)

    def auc(rows: np.ndarray) -> np.ndarray:
        return _areas(rows.mean(axis=1))

    def auc_norm(rows: np.ndarray) -> np.ndarray:
        acc = rows.mean(axis=1)
        span = acc[:, :1] - chance
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(span[:, 0] > 0, _areas((acc - chance) / np.where(span > 0, span, 1)), math.nan)

    out = {}
    for key, statistic in (("auc", auc), ("auc_normalised", auc_norm)):
        result = bootstrap(statistic, hits, num_samples=2000, seed=seed, vectorised=True)
        out[f"{key}_low"], out[f"{key}_high"] = result.interval.low, result.interval.high
    return out


def human_auc(rows: Sequence[Mapping[str, Any]], num_samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Humans' auc_normalised at the model's levels, with a 95% interval from resampling their trials
    (binomial per level: the shipped table holds trial and correct counts per level, not per image)."""
    trials = np.array([r["human_trials"] for r in rows])
    accuracy = np.array([r["human_accuracy"] for r in rows])
    chance = rows[0]["human_chance"]
    rng = np.random.default_rng(seed)
    draws = rng.binomial(trials, accuracy, size=(num_samples, len(rows))) / trials
    span = draws[:, :1] - chance
    values = _areas((draws - chance) / np.where(span > 0, span, math.nan))
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return {"human_auc_normalised": _area(normalised(list(accuracy), accuracy[0], chance)),
            "human_auc_normalised_low": float(low), "human_auc_normalised_high": float(high)}


def level_label(level: float) -> str:
    return "inf" if math.isinf(level) else f"{level:g}"


def accuracy_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], chance: float, title: str,
                    xlabel: str) -> Any:
    """Top-1 with its 95% Wilson band against level position, one line per curve; chance dashed."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in curves.items():
        x = np.arange(len(rows))
        ax.plot(x, [r["top1"] for r in rows], marker="o", label=name)
        ax.fill_between(x, [r["top1_low"] for r in rows], [r["top1_high"] for r in rows], alpha=0.2)
    first = next(iter(curves.values()))
    ax.set_xticks(np.arange(len(first)), [r.get("label", level_label(r["level"])) for r in first])
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance {chance:.3f}")
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (95% Wilson interval)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def human_comparison_figure(model_rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """Rows with fraction_of_side, model_normalised, human_normalised: both curves at the same levels."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(len(model_rows))
    ax.plot(x, [r["model_normalised"] for r in model_rows], marker="o", label="encoder + linear probe")
    ax.plot(x, [r["human_normalised"] for r in model_rows], marker="s", color="black", label="humans (16-class, 224 px)")
    ax.set_xticks(x, [level_label(r["fraction_of_side"]) if math.isinf(r["fraction_of_side"])
                      else f"{r['fraction_of_side']:.3f}" for r in model_rows])
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.axhline(1, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("sigma / image side")
    ax.set_ylabel("(acc - chance) / (clean acc - chance)")
    ax.set_title(title)
    fig.text(0.5, -0.01, "Normalised comparison: humans answered 16-way on ImageNet images at 224 px, the encoder\n"
             "its own dataset at its own size; levels are matched as sigma / image side.", ha="center", va="top",
             fontsize=8)
    ax.legend(fontsize=8)
    return fig
