"""Attention maths for the attention diagnostic: rollout, centre of mass, entropy, attention distance,
map similarity and figure mass. Pure, batched tensor functions (any device); no model, no I/O.

Conventions: raw attention of one layer is (B, heads, T, T) with T = 1 + N (cls token first), rows =
queries, each row a probability distribution over the keys. A *map* is (B, gh, gw), non-negative, one
distribution over the N = gh * gw patches per image (it sums to 1). Patch coordinates are (row,
column) of the patch's index on the grid, so patch (i, j) sits at (i, j).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from blockmae.errors import BlockMAEError

HEAD_FUSIONS = ("mean", "max", "min")
ROLLOUT_SOURCES = ("cls", "patches")  # which rows of the rollout are read as the map
SIMILARITIES = ("spearman", "pearson")
_EPS = 1e-12


def fuse_heads(attention: Tensor, fusion: str = "mean") -> Tensor:
    """One layer's attention (B, heads, T, T) fused over its heads into (B, T, T)."""
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    if fusion == "min":
        return attention.amin(dim=1)
    raise BlockMAEError(f"head fusion {fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")


def discard_weakest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the weakest `ratio` of the patch-to-patch weights of every image (B, T, T), independently
    per image; entries in the cls row or column are never dropped (the map is read from the cls row)."""
    if not 0.0 <= ratio < 1.0:
        raise BlockMAEError(f"discard ratio {ratio} must lie in [0, 1)")
    patches = fused[:, 1:, 1:].reshape(fused.shape[0], -1)
    count = int(patches.shape[1] * ratio)
    if count == 0:
        return fused
    weakest = patches.topk(count, dim=1, largest=False).indices  # per image: rows of the batch differ
    kept = patches.scatter(1, weakest, 0.0).view_as(fused[:, 1:, 1:])
    out = fused.clone()
    out[:, 1:, 1:] = kept
    return out


def rollout_matrix(attentions: Sequence[Tensor], fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of a stack of layers, first layer first: (B, T, T).

    Per layer: fuse the heads, optionally drop the weakest weights, add the identity for the residual
    path and renormalise every row (query) to sum to 1; then multiply the layers, the last layer leftmost
    (R = A_L ... A_1), so row t of R is how token t's output draws on the input tokens.
    """
    if len(attentions) == 0:
        raise BlockMAEError("attention rollout needs at least one layer")
    result = None
    for attention in attentions:
        fused = fuse_heads(attention.float(), fusion)
        if discard_ratio:
            fused = discard_weakest(fused, discard_ratio)
        eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        layer = fused + eye
        layer = layer / layer.sum(dim=-1, keepdim=True)  # each row, i.e. over keys (keepdim: not columns)
        result = layer if result is None else layer @ result
    return result


def rollout_maps(
    attentions: Sequence[Tensor], grid: tuple[int, int], fusion: str = "mean", discard_ratio: float = 0.0,
    source: str = "cls",
) -> Tensor:
    """Rollout maps (B, gh, gw), each a distribution over the patches.

    `source`: ``cls`` reads the cls row of the rollout (the map of a cls-token readout); ``patches`` the
    mean over the patch rows (the map of an average-pooled readout). The cls column is left out and the
    rest renormalised to sum to 1.
    """
    if source not in ROLLOUT_SOURCES:
        raise BlockMAEError(f"rollout source {source!r} is not one of {', '.join(ROLLOUT_SOURCES)}")
    rollout = rollout_matrix(attentions, fusion, discard_ratio)
    gh, gw = grid
    if rollout.shape[-1] != 1 + gh * gw:
        raise BlockMAEError(f"attention over {rollout.shape[-1]} tokens does not fit a {gh}x{gw} grid plus cls")
    rows = rollout[:, 0, 1:] if source == "cls" else rollout[:, 1:, 1:].mean(dim=1)
    return normalise_maps(rows.reshape(-1, gh, gw))


def normalise_maps(maps: Tensor) -> Tensor:
    """Maps (B, gh, gw) scaled to sum to 1 each (an all-zero map stays zero)."""
    total = maps.sum(dim=(-2, -1), keepdim=True)
    return maps / total.clamp(min=_EPS)


def centre_of_mass(maps: Tensor) -> Tensor:
    """Centre of mass (B, 2) of maps (B, gh, gw), as (row, column) in patch coordinates."""
    gh, gw = maps.shape[-2:]
    weights = normalise_maps(maps.float())
    rows = torch.arange(gh, device=maps.device, dtype=weights.dtype)
    cols = torch.arange(gw, device=maps.device, dtype=weights.dtype)
    return torch.stack([(weights.sum(-1) * rows).sum(-1), (weights.sum(-2) * cols).sum(-1)], dim=-1)


def _entropy(probabilities: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last axis, with 0 log 0 = 0."""
    p = probabilities.float()
    return -(p * torch.log(p.clamp(min=_EPS))).sum(dim=-1)


def map_entropy(maps: Tensor) -> Tensor:
    """Entropy (B,) of maps (B, gh, gw) normalised by log N: 0 = all mass on one patch, 1 = uniform."""
    n = maps.shape[-2] * maps.shape[-1]
    if n < 2:
        raise BlockMAEError("map entropy needs at least two patches")
    return _entropy(normalise_maps(maps).flatten(-2)) / math.log(n)


def attention_entropy(attention: Tensor) -> Tensor:
    """Mean entropy per head (B, heads) of raw attention (B, heads, T, T): every query row is a
    distribution over the T keys; its entropy normalised by log T, averaged over the queries."""
    return _entropy(attention).mean(dim=-1) / math.log(attention.shape[-1])


def patch_distances(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """Euclidean distance (N, N) between the patch centres of a grid, in patches."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32, device=device),
                                torch.arange(gw, dtype=torch.float32, device=device), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    return torch.cdist(coords, coords)


def mean_attention_distance(attention: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean attention distance per head (B, heads), in patches (ViT, Dosovitskiy et al. 2021, D.7).

    For every patch query, the attention-weighted mean distance to the patch keys; the cls token is left
    out as query and as key, and each query's weights over the patches are renormalised to sum to 1 (a
    weighted mean, not deflated by the mass on cls). Averaged over the queries.
    """
    n = grid[0] * grid[1]
    if attention.shape[-1] != n + 1:
        raise BlockMAEError(f"attention over {attention.shape[-1]} tokens does not fit a {grid[0]}x{grid[1]} grid plus cls")
    patches = attention[..., 1:, 1:].float()
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp(min=_EPS)
    distance = patch_distances(grid, attention.device)
    return (patches * distance).sum(dim=-1).mean(dim=-1)


def _ranks(values: Tensor) -> Tensor:
    """0-based ranks along the last axis, tied values sharing their mean rank (as scipy's rankdata)."""
    order = values.argsort(dim=-1)
    ordered = values.gather(-1, order)
    # Runs of equal values in sorted order: each run gets the mean of the positions it spans.
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run = starts.long().cumsum(dim=-1) - 1
    position = torch.arange(values.shape[-1], device=values.device, dtype=torch.float64).expand_as(ordered)
    total = torch.zeros_like(position).scatter_add_(-1, run, position)
    count = torch.zeros_like(position).scatter_add_(-1, run, torch.ones_like(position))
    mean_rank = (total / count.clamp(min=1)).gather(-1, run)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank).to(torch.float32)


def map_similarity(clean: Tensor, occluded: Tensor, keep: Tensor | None = None, method: str = "spearman") -> Tensor:
    """Correlation (B,) between two batches of maps (B, gh, gw) over the patches where `keep` is True.

    ``spearman``: Pearson correlation of the ranks of the kept patches; ``pearson``: of the maps, each
    renormalised over the kept patches (Pearson is scale free, so this equals the raw correlation). A map
    constant over the kept patches has no defined correlation: NaN.
    """
    if method not in SIMILARITIES:
        raise BlockMAEError(f"similarity {method!r} is not one of {', '.join(SIMILARITIES)}")
    a, b = clean.flatten(1).float(), occluded.flatten(1).float()
    keep = torch.ones_like(a, dtype=torch.bool) if keep is None else keep.flatten(1).to(a.device)
    if method == "spearman":
        # Dropped patches are sent past the end, so the kept ones hold ranks 0 .. k-1 among themselves.
        a, b = (_ranks(torch.where(keep, x, torch.inf)) for x in (a, b))
    weight = keep.to(a.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp(min=1)
    a = torch.where(keep, a, 0.0)
    b = torch.where(keep, b, 0.0)
    a = (a - (a * weight).sum(1, keepdim=True) / count) * weight
    b = (b - (b * weight).sum(1, keepdim=True) / count) * weight
    denominator = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return torch.where(denominator > _EPS, (a * b).sum(1) / denominator.clamp(min=_EPS), torch.nan)


def region_mass(maps: Tensor, region: Tensor) -> Tensor:
    """Share (B,) of each map's mass on a region (B, gh, gw) given as per-patch coverage in [0, 1]."""
    weights = normalise_maps(maps.float())
    return (weights * region.to(weights)).sum(dim=(-2, -1))


def patch_coverage(masks: Tensor, patch_size: int) -> Tensor:
    """Pixel masks (B, H, W) in [0, 1] as the covered fraction of every patch: (B, H/p, W/p)."""
    return torch.nn.functional.avg_pool2d(masks.float().unsqueeze(1), patch_size).squeeze(1)


def displacement(clean: Tensor, occluded: Tensor) -> Tensor:
    """Euclidean distance, in patches, between centres of mass (..., 2) (broadcast over the leading axes)."""
    return torch.linalg.vector_norm(occluded.float() - clean.float(), dim=-1)


def displacement_summary(distances: Tensor, side: int) -> dict[str, float]:
    """Mean, median and 90th percentile of displacements (in patches), also as fractions of the grid side."""
    values = distances.flatten().float()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        raise BlockMAEError("no displacement to summarise")
    stats = {"mean": values.mean().item(), "median": values.median().item(),
             "p90": torch.quantile(values, 0.9).item()}
    return {**{f"{k}_patches": v for k, v in stats.items()}, **{f"{k}_fraction_of_side": v / side for k, v in stats.items()}}


def stability_per_image(similarity: Tensor) -> Tensor:
    """Per-image stability (n_images,) from similarities (n_images, n_occluders): the mean over the
    occluders of the clean-vs-occluded map correlation outside the occluded patches (NaNs skipped)."""
    return similarity.nanmean(dim=-1)
