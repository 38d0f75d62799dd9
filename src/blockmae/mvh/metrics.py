"""model-vs-human's metrics, computed from trial files with its conventions (docs/mvh.md has the formulas).

A dataset's trials are laid out as cells, one per condition: the images of that condition and every
decision maker's response to each (trials matched on `trials.image_id`). Every metric is a function of
per-image weights: the row of ones gives the estimate; rows of bootstrap counts (how often a resample draws
each image, drawn independently in each cell) give its 95% percentile interval. Observers are kept fixed;
the images are what is resampled.

- accuracy (16-class): the fraction of trials whose response is the true category ("na" counts as wrong);
- OOD accuracy: a decision maker's accuracy pooled over a dataset's benchmark conditions, averaged over
  datasets (humans: pooled over all observers);
- with each human observer, per condition: accuracy difference (p_model - p_human)^2, observed
  consistency c_obs (the fraction of images both get right or both get wrong) and error consistency,
  Cohen's kappa (c_obs - c_exp) / (1 - c_exp) with c_exp = p_m p_h + (1 - p_m)(1 - p_h) (1 where c_obs = 1);
  averaged over conditions, then over observers, then over datasets. Humans: every pair of observers;
- shape bias on cue-conflict: shape / (shape + texture decisions) over the images whose shape and texture
  categories differ, pooled over a decision maker's trials (humans: over all observers), overall and per
  shape category.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from blockmae.errors import BlockMAEError
from blockmae.mvh.conditions import BENCHMARK_DATASETS, LEVELS, canonical_condition
from blockmae.mvh.trials import Trial, is_human
from blockmae.report.stats import wilson_interval

HUMANS = "humans"  # the row of all human observers together
PAIR_METRICS = ("accuracy_difference", "observed_consistency", "error_consistency")
METRICS = ("ood_accuracy", *PAIR_METRICS)
LABELS = {"ood_accuracy": "OOD accuracy", "accuracy_difference": "accuracy difference",
          "observed_consistency": "observed consistency", "error_consistency": "error consistency",
          "shape_bias": "shape bias"}
LEVEL = 0.95
SHAPE_BIAS_DATASET = "cue-conflict"

Series = np.ndarray  # one value per weight row: [estimate, resample 1, ..., resample B]


@dataclass
class Cell:
    """One condition of one dataset: its images (sorted ids) and each decision maker's response to each."""

    condition: str
    images: tuple[str, ...]
    categories: np.ndarray  # (n,) the true category of each image
    responses: dict[str, np.ndarray]  # decision maker -> (n,) its responses

    def correct(self, maker: str) -> np.ndarray:
        return self.responses[maker] == self.categories


def _condition_order(dataset: str, conditions: set[str]) -> list[str]:
    if dataset in LEVELS:
        return [c for c in LEVELS[dataset].conditions if c in conditions]

    def key(c: str) -> tuple[int, float, str]:
        try:
            return (0, float(c), c)
        except ValueError:
            return (1, 0.0, c)

    return sorted(conditions, key=key)


def dataset_cells(dataset: str, trials_by_maker: dict[str, list[Trial]], common: bool = False) -> list[Cell]:
    """The cells of one dataset. Every decision maker must have seen the same images in each condition, once
    each (as in model-vs-human's files); anything else is a BlockMAEError that says what differs.

    `common`: keep, in each condition, only the images every decision maker saw (a probe covering some of
    the 16 categories beside humans who saw them all); a condition without such an image is an error."""
    seen: dict[str, dict[str, dict[str, Trial]]] = {}  # condition -> maker -> image id -> trial
    for maker, trials in trials_by_maker.items():
        for t in trials:
            by_image = seen.setdefault(canonical_condition(dataset, t.condition), {}).setdefault(maker, {})
            if t.image_id in by_image:
                raise BlockMAEError(f"{dataset}: {maker} has two trials on image {t.image_id} in condition "
                                    f"{t.condition!r}; a trial file holds one trial per image and condition")
            by_image[t.image_id] = t
    cells = []
    for condition in _condition_order(dataset, set(seen)):
        makers = seen[condition]
        first = next(iter(makers))
        images = tuple(sorted(makers[first]))
        if common:
            shared = set(images).intersection(*(set(makers.get(m, {})) for m in trials_by_maker))
            if not shared:
                raise BlockMAEError(f"{dataset}, condition {condition or 'all'}: no image was seen by every decision "
                                    f"maker ({', '.join(trials_by_maker)})")
            images = tuple(sorted(shared))
            makers = {m: {i: t for i, t in by_image.items() if i in shared} for m, by_image in makers.items()}
        for maker in trials_by_maker:
            have = set(makers.get(maker, {}))
            if have != set(images):
                raise BlockMAEError(
                    f"{dataset}, condition {condition or 'all'}: {maker} has {len(have - set(images))} images that "
                    f"{first} lacks and lacks {len(set(images) - have)} of its {len(images)}; every decision maker "
                    f"of a dataset must have seen the same images (--common-images compares them on those all saw)")
        categories = np.array([makers[first][i].category for i in images])
        for maker, by_image in makers.items():
            if any(by_image[i].category != c for i, c in zip(images, categories)):
                raise BlockMAEError(f"{dataset}: {maker} and {first} disagree on an image's true category")
        responses = {m: np.array([makers[m][i].object_response for i in images]) for m in trials_by_maker}
        cells.append(Cell(condition, images, categories, responses))
    return cells


def resample_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(1 + resamples, n): a row of ones (every image once: the estimate), then per bootstrap resample how
    often it draws each of the n images (n draws with replacement)."""
    counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples)
    return np.vstack([np.ones((1, n)), counts]).astype(float)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> Series:
    return weights @ values.astype(float) / weights.sum(axis=1)


def kappa(observed: Series, expected: Series) -> Series:
    """Cohen's kappa; 1 where the observed consistency is 1 (model-vs-human's rule, also for c_exp = 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (observed - expected) / (1 - expected)
    return np.where(observed == 1, 1.0, value)


def pair_metrics(a_correct: np.ndarray, b_correct: np.ndarray, weights: np.ndarray) -> dict[str, Series]:
    """Accuracy difference, observed and error consistency of two decision makers on the same images."""
    p_a, p_b = weighted_mean(a_correct, weights), weighted_mean(b_correct, weights)
    observed = weighted_mean(a_correct == b_correct, weights)
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return {"accuracy_difference": (p_a - p_b) ** 2, "observed_consistency": observed,
            "error_consistency": kappa(observed, expected)}


def pooled_accuracy(cells: list[Cell], weights: list[np.ndarray], makers: list[str]) -> Series:
    """Correct trials / trials over `cells` and all of `makers` (one maker: its accuracy)."""
    correct = sum(w @ cell.correct(m).astype(float) for cell, w in zip(cells, weights) for m in makers)
    trials = sum(w.sum(axis=1) for w in weights) * len(makers)
    return correct / trials


def _mean(series: list[dict[str, Series]]) -> dict[str, Series]:
    return {k: np.mean([s[k] for s in series], axis=0) for k in series[0]}


def _pair_over_conditions(cells: list[Cell], weights: list[np.ndarray], a: str, b: str) -> dict[str, Series]:
    return _mean([pair_metrics(cell.correct(a), cell.correct(b), w) for cell, w in zip(cells, weights)])


def dataset_metrics(cells: list[Cell], weights: list[np.ndarray], models: list[str],
                    humans: list[str]) -> dict[str, dict[str, Series]]:
    """decision maker (and HUMANS) -> metric -> Series, on one dataset's `cells`. Pair metrics need
    observers: each model against each observer; HUMANS: every pair of observers."""
    out: dict[str, dict[str, Series]] = {}
    for model in models:
        out[model] = {"ood_accuracy": pooled_accuracy(cells, weights, [model])}
        if humans:
            out[model].update(_mean([_pair_over_conditions(cells, weights, model, h) for h in humans]))
    if humans:
        out[HUMANS] = {"ood_accuracy": pooled_accuracy(cells, weights, humans)}
        pairs = list(itertools.combinations(humans, 2))
        if pairs:
            out[HUMANS].update(_mean([_pair_over_conditions(cells, weights, a, b) for a, b in pairs]))
    return out


def texture_category(image: str) -> str:
    """The texture category a cue-conflict image name ends with: '..._dog10-bird2.png' -> 'bird'."""
    stem = image.split("_")[-1].split(".")[0]
    return "".join(ch for ch in stem.split("-")[-1] if not ch.isdigit())


def shape_texture_counts(cell: Cell, weights: np.ndarray, makers: list[str]) -> tuple[Series, Series]:
    """Weighted counts of shape and of texture decisions of `makers` on the images whose shape and texture
    categories differ."""
    texture = np.array([texture_category(i) for i in cell.images])
    conflict = cell.categories != texture
    shape_hits = sum(weights @ (conflict & (cell.responses[m] == cell.categories)) for m in makers)
    texture_hits = sum(weights @ (conflict & (cell.responses[m] == texture)) for m in makers)
    return shape_hits, texture_hits


def shape_bias(cell: Cell, weights: np.ndarray, makers: list[str]) -> dict[str, Any]:
    """Shape bias overall and per shape category (Series), and the unweighted decision counts."""
    def ratio(w: np.ndarray) -> Series:
        shape, texture = shape_texture_counts(cell, w, makers)
        with np.errstate(divide="ignore", invalid="ignore"):
            return shape / (shape + texture)

    shape, texture = shape_texture_counts(cell, weights[:1], makers)
    per_category = {str(c): ratio(weights * (cell.categories == c)) for c in sorted(set(cell.categories))}
    return {"shape_bias": ratio(weights), "per_category": per_category,
            "shape_decisions": int(shape[0]), "texture_decisions": int(texture[0])}


def interval(series: Series) -> dict[str, float | None]:
    """The estimate (first value) and the central 95% of the resampled values; None where undefined (no
    resamples; a shape bias without shape or texture decisions)."""
    resampled = series[1:][~np.isnan(series[1:])]
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail]) if len(resampled) else (None, None)
    return {"value": None if math.isnan(series[0]) else float(series[0]),
            "low": None if low is None else float(low), "high": None if high is None else float(high)}


def _accuracy_rows(dataset: str, cells: list[Cell], makers: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per decision maker, accuracy per condition with its Wilson interval over trials (all conditions)."""
    labels = dict(zip(LEVELS[dataset].conditions, LEVELS[dataset].labels)) if dataset in LEVELS else {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, group in makers.items():
        for cell in cells:
            correct = int(sum(cell.correct(m).sum() for m in group))
            trials = len(cell.images) * len(group)
            ci = wilson_interval(correct / trials, trials)
            rows.setdefault(name, []).append({"condition": cell.condition,
                                              "label": labels.get(cell.condition, cell.condition),
                                              "accuracy": ci.value, "low": ci.low, "high": ci.high, "trials": trials})
    return rows


def benchmark(raw: dict[str, dict[str, list[Trial]]], models: list[str] | None = None, resamples: int = 1000,
              seed: int = 0, progress: Callable[[list[str]], Iterable[str]] = iter,
              common_images: bool = False) -> dict[str, Any]:
    """model-vs-human's benchmark on `raw` (`trials.read_raw_data`): the results.json record (see docs/mvh.md).

    `models`: the models to include (default: every non-human decision maker); an unknown name is a
    BlockMAEError. Intervals: `resamples` bootstrap resamples of the images, seeded per dataset by `seed`.
    `progress` wraps the list of datasets (e.g. tqdm). `common_images`: every metric on the images all
    decision makers of a dataset saw (`dataset_cells`); the record says how many each dataset kept."""
    found = sorted({m for makers in raw.values() for m in makers if not is_human(m)})
    if models is None:
        models = found
    else:
        models = [m.replace("_", "-") for m in models]
        unknown = [m for m in models if m not in found]
        if unknown:
            raise BlockMAEError(f"no trial files of model {unknown[0]!r} in the raw data; models there: "
                                f"{', '.join(found) or 'none'}")
    per_dataset: dict[str, dict[str, dict[str, Series]]] = {}
    record: dict[str, Any] = {"benchmark": {}, "shape_bias": {}, "resamples": resamples, "seed": seed,
                              "datasets": {}, "per_dataset": {}, "accuracy_by_condition": {}}
    ordered = [d for d in BENCHMARK_DATASETS if d in raw] + sorted(d for d in raw if d not in BENCHMARK_DATASETS)
    for dataset in progress(ordered):
        humans = [m for m in raw[dataset] if is_human(m)]
        here = [m for m in models if m in raw[dataset]]
        if not here and not humans:
            continue
        cells = dataset_cells(dataset, {m: raw[dataset][m] for m in [*here, *humans]}, common=common_images)
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
        weights = [resample_weights(len(c.images), resamples, rng) for c in cells]
        excluded = LEVELS[dataset].excluded if dataset in LEVELS else ()
        kept = [i for i, c in enumerate(cells) if c.condition not in excluded]
        # a dataset holding only left-out conditions (say, just the undistorted control) enters no mean
        values = dataset_metrics([cells[i] for i in kept], [weights[i] for i in kept], here, humans) if kept else {}
        per_dataset[dataset] = values
        record["datasets"][dataset] = {"conditions": [c.condition for c in cells], "excluded": list(excluded),
                                       "images": sum(len(c.images) for c in cells), "models": here,
                                       "humans": humans, "common_images_only": common_images}
        record["per_dataset"][dataset] = {m: {k: interval(s) for k, s in v.items()} for m, v in values.items()}
        groups = {m: [m] for m in here} | ({HUMANS: humans} if humans else {})
        record["accuracy_by_condition"][dataset] = _accuracy_rows(dataset, cells, groups)
        if dataset == SHAPE_BIAS_DATASET:
            record["shape_bias"] = _shape_bias_record(cells[0], weights[0], groups, humans)
    record["benchmark"] = _over_datasets(per_dataset)
    return record


def _shape_bias_record(cell: Cell, weights: np.ndarray, groups: dict[str, list[str]],
                       humans: list[str]) -> dict[str, Any]:
    out = {}
    for name, group in groups.items():
        result = shape_bias(cell, weights, group)
        out[name] = {"shape_bias": interval(result["shape_bias"]),
                     "per_category": {c: interval(s) for c, s in result["per_category"].items()},
                     "shape_decisions": result["shape_decisions"], "texture_decisions": result["texture_decisions"]}
    if humans:
        observers = {h: interval(shape_bias(cell, weights[:1], [h])["shape_bias"])["value"] for h in humans}
        defined = [v for v in observers.values() if v is not None]
        out[HUMANS] |= {"observers": observers, "observers_mean": sum(defined) / len(defined) if defined else None}
    return out


def _over_datasets(per_dataset: dict[str, dict[str, dict[str, Series]]]) -> dict[str, dict[str, Any]]:
    """Each decision maker's metrics averaged over the datasets it has them on (model-vs-human averages over
    its 17; `datasets` says how many went into each mean)."""
    makers = sorted({m for values in per_dataset.values() for m in values}, key=lambda m: (m == HUMANS, m))
    out: dict[str, dict[str, Any]] = {}
    for maker in makers:
        out[maker] = {}
        for metric in METRICS:
            series = [v[maker][metric] for v in per_dataset.values() if metric in v.get(maker, {})]
            if series:
                out[maker][metric] = interval(np.mean(series, axis=0)) | {"datasets": len(series)}
    return out
