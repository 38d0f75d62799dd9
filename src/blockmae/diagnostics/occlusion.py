"""Occluders on the patch grid: sliding b x b blocks and random patch drop (PatchDrop, Naseer et al.,
NeurIPS 2021), and how they are painted into (normalised) images. Pure tensor functions.

An occluder is a boolean patch mask (gh, gw) or (B, gh, gw), True = occluded. Painting fills the
occluded patches' pixels with a colour (the dataset mean) or with noise of the dataset's statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from blockmae.errors import BlockMAEError

FILLS = ("mean", "noise")


def sliding_block_masks(grid: tuple[int, int], block: int) -> tuple[Tensor, Tensor]:
    """Every placement of a block x block occluder that fits the grid, stride one patch.

    Returns the masks (P, gh, gw) and the top-left corner (P, 2) (row, column) of each, P = (gh-b+1)(gw-b+1),
    in row-major order of the corner.
    """
    gh, gw = grid
    if not 1 <= block <= min(gh, gw):
        raise BlockMAEError(f"occluder block {block} does not fit the {gh}x{gw} patch grid (use 1..{min(gh, gw)})")
    rows, cols = torch.meshgrid(torch.arange(gh - block + 1), torch.arange(gw - block + 1), indexing="ij")
    corners = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    r = torch.arange(gh)[None, :, None]
    c = torch.arange(gw)[None, None, :]
    top, left = corners[:, 0, None, None], corners[:, 1, None, None]
    masks = (r >= top) & (r < top + block) & (c >= left) & (c < left + block)
    return masks, corners


def block_centres(corners: Tensor, block: int) -> Tensor:
    """Centres (P, 2) of block occluders given their corners, in patch coordinates."""
    return corners.float() + (block - 1) / 2


def patch_drop_masks(count: int, grid: tuple[int, int], fraction: float, generator: torch.Generator) -> Tensor:
    """`count` masks (count, gh, gw), each dropping round(fraction * N) patches drawn uniformly without
    replacement (the same number in every mask, so accuracies are at one known fraction)."""
    if not 0.0 < fraction < 1.0:
        raise BlockMAEError(f"patch-drop fraction {fraction} must lie strictly between 0 and 1")
    gh, gw = grid
    n = gh * gw
    dropped = max(1, round(fraction * n))
    noise = torch.rand(count, n, generator=generator)
    order = noise.argsort(dim=1)
    masks = torch.zeros(count, n, dtype=torch.bool)
    masks.scatter_(1, order[:, :dropped], True)
    return masks.view(count, gh, gw)


def occlude(images: Tensor, masks: Tensor, patch_size: int, fill: str = "mean", mean: Tensor | None = None,
            std: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Images (B, C, H, W) with the patches of `masks` ((B, gh, gw) or one (gh, gw) for all) filled.

    ``mean``: every occluded pixel takes `mean` (C,); ``noise``: Gaussian noise of per-channel `mean`
    and `std` (C,), drawn from `generator` (on the images' device). Both in the images' own (normalised)
    space.
    """
    if fill not in FILLS:
        raise BlockMAEError(f"occluder fill {fill!r} is not one of {', '.join(FILLS)}")
    b, c, h, w = images.shape
    masks = masks.to(images.device)
    if masks.dim() == 2:
        masks = masks.expand(b, -1, -1)
    if masks.shape[-2] * patch_size != h or masks.shape[-1] * patch_size != w:
        raise BlockMAEError(f"a {masks.shape[-2]}x{masks.shape[-1]} patch mask of {patch_size} px patches "
                            f"does not cover {h}x{w} images")
    pixels = masks.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1).unsqueeze(1)
    mean = torch.zeros(c) if mean is None else mean
    mean = mean.to(images).view(1, c, 1, 1)
    if fill == "mean":
        filler = mean.expand_as(images)
    else:
        std = torch.ones(c) if std is None else std
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        filler = mean + noise * std.to(images).view(1, c, 1, 1)
    return torch.where(pixels, filler, images)
