"""Statistics of a mask setting: how diverse, how uniform and how compact its masks are.

``mask_stats(generator, draws)`` draws masks in chunks (memory stays bounded whatever ``draws`` is) and
reports the number of distinct masks, the range of per-position masking frequencies, the mean number of
4-connected masked regions, SimMIM's AvgDist (mean Euclidean distance, in patches, from a masked patch
to the nearest visible one) and the realised ratio. `blockmae masks --stats` prints them and every
pretraining run records them in env.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from blockmae.errors import BlockMAEError
from blockmae.masking.generators import MaskGenerator

CHUNK_ELEMENTS = 2**24  # largest intermediate tensor per chunk (elements)
MAX_DISTINCT_BYTES = 2**30  # the exact distinct-mask count keeps every mask packed in bits


@dataclass(frozen=True)
class MaskStats:
    draws: int
    seed: int
    distinct_masks: int
    frequency_min: float  # least often masked position: fraction of the draws
    frequency_max: float  # most often masked position
    mean_regions: float  # 4-connected masked regions per mask
    avg_dist: float  # SimMIM's AvgDist, in patches
    ratio: float  # realised masked fraction


def connected_regions(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Number of 4-connected masked regions of each mask (B, N) -> (B,), by label propagation.

    Every masked patch starts with its own label (index + 1; 0 = visible). Each step takes the maximum
    over itself and its masked 4-neighbours, then jumps: a patch takes the label now held by the patch
    its label names (same region, never smaller), which shortens long chains. At the fixed point every
    region carries the label of its largest index, and is counted once, at that patch.
    """
    height, width = grid
    batch = masks.shape[0]
    masked = masks.bool().view(batch, height, width)
    own = torch.arange(1, height * width + 1, device=masks.device).view(1, height, width)
    labels = torch.where(masked, own, 0)
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        spread = torch.stack([labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                              padded[:, 1:-1, 2:]]).amax(0)
        spread = torch.where(masked, spread, 0).view(batch, -1)
        holder = torch.cat([torch.zeros(batch, 1, dtype=spread.dtype, device=spread.device), spread], 1)
        spread = holder.gather(1, spread).view(batch, height, width)  # label of the patch my label names
        if torch.equal(spread, labels):
            return (masked & (labels == own)).flatten(1).sum(1)
        labels = spread


def nearest_visible_distance(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Euclidean distance (in patches) from each patch to the nearest visible patch (B, N); 0 if visible.

    Exact and separable: first the distance along each column to the nearest visible patch, then the
    minimum over columns of (column offset)^2 + (that distance)^2. O(B N (H + W)) instead of O(B N^2).
    """
    height, width = grid
    visible = ~masks.bool().view(-1, height, width)
    inf = float(height**2 + width**2 + 1)
    y = torch.arange(height, device=masks.device, dtype=torch.float32)
    x = torch.arange(width, device=masks.device, dtype=torch.float32)
    # (B, H, H', W): vertical offset to row y' when (y', x) is visible.
    vertical = torch.where(visible.unsqueeze(1), (y.view(height, 1, 1) - y.view(1, height, 1)).abs(), inf)
    column = vertical.amin(2)  # (B, H, W)
    # (B, H, W, W'): squared horizontal offset plus the squared vertical distance in column x'.
    squared = (x.view(width, 1) - x.view(1, width)).pow(2) + column.pow(2).unsqueeze(2)
    return squared.amin(3).sqrt().flatten(1)


def _packed(masks: Tensor) -> Tensor:
    """Masks (B, N) as rows of int64 words, 62 bits each: equal rows iff equal masks."""
    batch, n = masks.shape
    words = -(-n // 62)
    bits = torch.zeros(batch, words * 62, dtype=torch.int64, device=masks.device)
    bits[:, :n] = masks.to(torch.int64)
    weights = torch.ones(62, dtype=torch.int64, device=masks.device) << torch.arange(62, device=masks.device)
    return (bits.view(batch, words, 62) * weights).sum(2)


def max_draws(num_patches: int) -> int:
    """The most draws whose packed masks fit the distinct-count memory bound."""
    return MAX_DISTINCT_BYTES // (8 * -(-num_patches // 62))


def mask_stats(generator: MaskGenerator, draws: int = 10_000, seed: int = 0, progress=None) -> MaskStats:
    """Statistics of ``draws`` masks of ``generator`` drawn from a CPU generator seeded with ``seed``.

    ``progress``: an optional callable taking the number of masks just drawn (e.g. tqdm's ``update``).
    """
    n = generator.num_patches
    if draws < 1:
        raise BlockMAEError(f"the statistics need at least 1 draw, got {draws}")
    if draws > max_draws(n):
        raise BlockMAEError(f"{draws} draws of {n}-patch masks need more than {MAX_DISTINCT_BYTES // 2**20} MiB to "
                            f"count distinct masks; use at most {max_draws(n)} draws")
    height, width = generator.grid
    chunk = max(1, min(4096, CHUNK_ELEMENTS // (n * max(height, width))))
    rng = torch.Generator().manual_seed(seed)
    packed, frequency = [], torch.zeros(n, dtype=torch.float64)
    regions = distance = 0.0
    done = 0
    while done < draws:
        rows = min(chunk, draws - done)
        masks = generator(rows, generator=rng).mask.bool()
        packed.append(_packed(masks))
        frequency += masks.sum(0, dtype=torch.float64)
        regions += float(connected_regions(masks, generator.grid).sum())
        distance += float(nearest_visible_distance(masks, generator.grid)[masks].double().sum())
        done += rows
        if progress is not None:
            progress(rows)
    frequency /= draws
    distinct = torch.unique(torch.cat(packed), dim=0).shape[0]
    return MaskStats(draws=draws, seed=seed, distinct_masks=int(distinct), frequency_min=float(frequency.min()),
                     frequency_max=float(frequency.max()), mean_regions=regions / draws,
                     avg_dist=distance / (draws * generator.num_masked), ratio=float(frequency.mean()))
