"""Shape bias: on cue-conflict images, the share of shape decisions among shape-or-texture decisions.

shape bias = #(decision == shape class) / (#(decision == shape class) + #(decision == texture class)),
as in Geirhos et al. (ICLR 2019); decisions that are neither are reported as their own fraction.

Two variants:
- ShapeTex (`shapetex_shape_bias`): a probe trained on ShapeTex train (shape labels) decides on the
  `cue_conflict` split (shape i in texture j != i). Under the train correlation mapping, shape class
  k's canonical texture is texture k, so "texture decision" = predicted class == texture index.
  Also: accuracy on `shape_only` (shape labels), and on `texture_only` the fraction of images
  classified as the shape class whose canonical texture is shown (k <-> k): how much the probe
  reads texture as evidence for a shape.
- Geirhos cue-conflict (`cue_conflict_shape_bias`): a Tiny-ImageNet probe's softmax probabilities
  are averaged over each of the 16 categories' Tiny-ImageNet classes (the model-vs-human toolbox
  convention: mean), decisions are the argmax among the 11 categories that have classes, on the
  images whose shape and texture categories are both among the 11 and differ (550 of the 1,200).

Intervals: bootstrap over images (percentile, 95%). The statistic only depends on the counts of
shape/texture/neither decisions, so resampling images with replacement is exactly a multinomial
draw of those counts, which is what is sampled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

HUMAN_SHAPE_BIAS = 0.958  # 10 observers, full cue-conflict set (Geirhos et al. 2019)
HUMAN_SHAPE_BIAS_TIN_SUBSET = 0.950  # the 550 images of the Tiny-ImageNet-compatible subset


@dataclass
class ShapeBias:
    shape_bias: float  # nan when no decision is shape or texture
    low: float  # bootstrap 95% interval
    high: float
    n_images: int
    n_shape: int
    n_texture: int
    n_neither: int

    @property
    def frac_shape(self) -> float:
        return self.n_shape / max(self.n_images, 1)

    @property
    def frac_texture(self) -> float:
        return self.n_texture / max(self.n_images, 1)

    @property
    def frac_neither(self) -> float:
        return self.n_neither / max(self.n_images, 1)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        d = asdict(self)
        out = {f"{prefix}shape_bias": d["shape_bias"], f"{prefix}shape_bias_low": d["low"],
               f"{prefix}shape_bias_high": d["high"]}
        out.update({f"{prefix}{k}": d[k] for k in ("n_images", "n_shape", "n_texture", "n_neither")})
        out.update({f"{prefix}frac_shape": self.frac_shape, f"{prefix}frac_texture": self.frac_texture,
                    f"{prefix}frac_neither": self.frac_neither})
        return out

    def __str__(self) -> str:
        return (f"shape bias {self.shape_bias:.3f} [95% CI {self.low:.3f}, {self.high:.3f}] on {self.n_images} images "
                f"(shape {self.n_shape}, texture {self.n_texture}, neither {self.n_neither})")


def bootstrap_interval(
    n_shape: int, n_texture: int, n_neither: int, num_samples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of shape/(shape+texture), resampling images with replacement."""
    n = n_shape + n_texture + n_neither
    if n == 0 or n_shape + n_texture == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.array([n_shape, n_texture, n_neither]) / n, size=num_samples)
    decided = counts[:, 0] + counts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = counts[:, 0] / decided
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def shape_bias_from_decisions(
    decisions: torch.Tensor, shape_labels: torch.Tensor, texture_labels: torch.Tensor,
    num_samples: int = 10_000, seed: int = 0,
) -> ShapeBias:
    """Shape bias of class decisions on cue-conflict images (shape != texture on every image)."""
    decisions, shape_labels, texture_labels = (t.detach().cpu().long() for t in (decisions, shape_labels, texture_labels))
    if bool((shape_labels == texture_labels).any()):
        raise ValueError("shape bias needs conflicting images: drop those whose shape and texture labels agree")
    is_shape = decisions == shape_labels
    is_texture = decisions == texture_labels
    n_shape, n_texture = int(is_shape.sum()), int(is_texture.sum())
    n = int(decisions.shape[0])
    n_neither = n - n_shape - n_texture
    bias = n_shape / (n_shape + n_texture) if n_shape + n_texture else math.nan
    low, high = bootstrap_interval(n_shape, n_texture, n_neither, num_samples, seed=seed)
    return ShapeBias(bias, low, high, n, n_shape, n_texture, n_neither)


# -- ShapeTex --------------------------------------------------------------------------------------


@dataclass
class ShapeTexReport:
    cue_conflict: ShapeBias
    shape_only_acc: float  # shape probe names the silhouette's shape
    texture_only_as_shape: float  # shape probe names class k on texture k alone (train correlation mapping)

    def metrics(self) -> dict[str, float]:
        return {**self.cue_conflict.metrics(), "shape_only_acc": self.shape_only_acc,
                "texture_only_as_shape": self.texture_only_as_shape}


def shapetex_shape_bias(
    cue_conflict_decisions: torch.Tensor, cue_conflict_shape: torch.Tensor, cue_conflict_texture: torch.Tensor,
    shape_only_decisions: torch.Tensor, shape_only_labels: torch.Tensor,
    texture_only_decisions: torch.Tensor, texture_only_textures: torch.Tensor,
    num_samples: int = 10_000, seed: int = 0,
) -> ShapeTexReport:
    """ShapeTex report from a shape probe's decisions on the three test splits (see module docstring)."""
    bias = shape_bias_from_decisions(cue_conflict_decisions, cue_conflict_shape, cue_conflict_texture, num_samples, seed)
    shape_acc = float((shape_only_decisions.cpu() == shape_only_labels.cpu()).float().mean())
    tex_as_shape = float((texture_only_decisions.cpu() == texture_only_textures.cpu()).float().mean())
    return ShapeTexReport(bias, shape_acc, tex_as_shape)


# -- Geirhos cue-conflict with a Tiny-ImageNet probe ------------------------------------------------


def category_probabilities(
    probs: torch.Tensor, class_ids: Sequence[str], category_classes: Mapping[str, Sequence[str]]
) -> tuple[torch.Tensor, list[str]]:
    """Mean of softmax probabilities over each category's classes -> (N, C) for the covered categories.

    `class_ids`: the probe's class identifiers (Tiny-ImageNet wnids), index = class;
    `category_classes`: category -> wnids. Categories with none of their classes among `class_ids`
    are left out; returns (probabilities, covered category names in the mapping's order).
    """
    index = {c: i for i, c in enumerate(class_ids)}
    columns, covered = [], []
    for category, wnids in category_classes.items():
        idx = [index[w] for w in wnids if w in index]
        if idx:
            columns.append(probs[:, idx].mean(dim=1))
            covered.append(category)
    if not covered:
        raise ValueError("none of the probe's classes belongs to a cue-conflict category")
    return torch.stack(columns, dim=1), covered


def category_decisions(
    probs: torch.Tensor, class_ids: Sequence[str], category_classes: Mapping[str, Sequence[str]],
    image_categories: Sequence[str],
) -> tuple[torch.Tensor, list[str]]:
    """The decided category of every image, as an index into `image_categories` (the dataset's 16): the
    covered category with the highest mean probability (:func:`category_probabilities`). Returns
    (decisions (N,), covered category names)."""
    cat_probs, covered = category_probabilities(probs, class_ids, category_classes)
    names = list(image_categories)
    # A covered category the dataset does not name (never with the shipped mapping) is no image's label.
    to_image = torch.tensor([names.index(c) if c in names else -1 for c in covered])
    return to_image[cat_probs.argmax(dim=1).cpu()], covered


def cue_conflict_shape_bias(
    probs: torch.Tensor, class_ids: Sequence[str], category_classes: Mapping[str, Sequence[str]],
    image_categories: Sequence[str], shape_labels: torch.Tensor, texture_labels: torch.Tensor,
    num_samples: int = 10_000, seed: int = 0,
) -> tuple[ShapeBias, torch.Tensor, list[str]]:
    """Shape bias of a probe on Geirhos cue-conflict images.

    `probs` (N, num_probe_classes) softmax outputs; `image_categories` the names indexed by
    `shape_labels`/`texture_labels` (the dataset's 16 categories). Uses only images whose shape and
    texture categories are both covered and differ. Returns (result, mask of used images, covered).
    """
    decisions, covered = category_decisions(probs, class_ids, category_classes, image_categories)
    shape, texture = shape_labels.cpu().long(), texture_labels.cpu().long()
    is_covered = torch.tensor([c in covered for c in image_categories])
    used = is_covered[shape] & is_covered[texture] & (shape != texture)
    result = shape_bias_from_decisions(decisions[used], shape[used], texture[used], num_samples, seed)
    return result, used, covered
