"""`blockmae masks`: print masks as text grids ('#' masked, '.' visible) to inspect a configuration."""

from __future__ import annotations

import argparse

import torch

from blockmae.errors import BlockMAEError
from blockmae.masking.generators import ALIGNS, DEFAULT_ALIGN, FAMILIES, MaskGenerator

MASKED, VISIBLE = "#", "."


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW patches, got {text!r}")
    return (sizes[0], sizes[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", type=_grid, default=(8, 8), help="patch grid, N or HxW (default 8: 64 px / patch 8)")
    parser.add_argument("--ratio", type=float, default=0.75, help="fraction of patches masked (default 0.75)")
    parser.add_argument("--family", choices=FAMILIES, default="block", help="mask family (default block)")
    parser.add_argument("--block", type=int, default=1, help="block side b in patches (block family; default 1)")
    parser.add_argument("--align", choices=ALIGNS, default=DEFAULT_ALIGN,
                        help=f"block placement: free squares, tiles of a fixed grid, or shifted tiles (default {DEFAULT_ALIGN})")
    parser.add_argument("--count", type=int, default=4, help="number of masks to print (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def format_mask(mask_row: torch.Tensor, grid: tuple[int, int]) -> str:
    """One text line per patch row, one character per patch."""
    height, width = grid
    cells = mask_row.reshape(height, width).bool().tolist()
    return "\n".join("".join(MASKED if c else VISIBLE for c in row) for row in cells)


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise BlockMAEError(f"--count must be >= 1, got {args.count}")
    masks = MaskGenerator(args.grid, args.ratio, family=args.family, block=args.block, align=args.align)
    mask = masks(args.count, generator=torch.Generator().manual_seed(args.seed))
    print(f"{masks.describe()} ('{MASKED}' masked, '{VISIBLE}' visible)")
    for index in range(args.count):
        print(f"\nmask {index}: {int(mask.mask[index].sum())}/{masks.num_patches} masked")
        print(format_mask(mask.mask[index], masks.grid))
    print(f"\nrealised ratio: {mask.ratio:.4f} ({masks.num_masked} of {masks.num_patches} patches per mask)")
    return 0
