"""`blockmae masks`: inspect a mask setting as text grids ('#' masked, '.' visible), statistics or a PNG.

    blockmae masks --grid 8 --block 4 --ratio 0.75             # four masks as text
    blockmae masks --grid 8 --block 4 --ratio 0.75 --stats     # distinct masks, uniformity, compactness
    blockmae masks --grid 8 --block 4 --png masks.png          # the masks as a picture
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from tqdm import tqdm

from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_file
from blockmae.masking.generators import ALIGNS, DEFAULT_ALIGN, FAMILIES, MaskGenerator
from blockmae.masking.stats import CHUNK_ELEMENTS, MaskStats, mask_stats, max_draws
from blockmae.visualisation import save_figure

MASKED, VISIBLE = "#", "."
MAX_SIDE = 1024  # patches per grid side
MAX_PRINTED_CELLS = 2**20  # --count x patches printed as text or drawn
DEFAULT_DRAWS = 10_000


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW patches, got {text!r}")
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"a grid needs at least 1x1 patches, got {text!r}")
    return (sizes[0], sizes[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", type=_grid, default=(8, 8), help="patch grid, N or HxW (default 8: 64 px / patch 8)")
    parser.add_argument("--ratio", type=number(float, "(0..1)"), default=0.75, help="fraction of patches masked (default 0.75)")
    parser.add_argument("--family", choices=FAMILIES, default="block", help="mask family (default block)")
    parser.add_argument("--block", type=number(int, ">=1"),
                        default=1, help="block side b in patches (block family; default 1)")
    parser.add_argument("--align", choices=ALIGNS, default=DEFAULT_ALIGN,
                        help=f"block placement: free squares, tiles of a fixed grid, or shifted tiles "
                             f"(default {DEFAULT_ALIGN})")
    parser.add_argument("--count", type=number(int, ">=1"),
                        default=4, help="number of masks to print or draw (default 4)")
    parser.add_argument("--seed", type=number(int, ">=0"), default=0, help="random seed (default 0)")
    parser.add_argument("--stats", action="store_true",
                        help="print statistics of --draws masks instead of the masks (docs/masking.md)")
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                        help=f"masks drawn for --stats (default {DEFAULT_DRAWS})")
    parser.add_argument("--png", type=Path, default=None, metavar="FILE", help="also draw the --count masks to FILE")


def format_mask(mask_row: torch.Tensor, grid: tuple[int, int]) -> str:
    """One text line per patch row, one character per patch."""
    height, width = grid
    cells = mask_row.reshape(height, width).bool().tolist()
    return "\n".join("".join(MASKED if c else VISIBLE for c in row) for row in cells)


def format_stats(stats: MaskStats) -> str:
    """The `--stats` lines, one `key: value` each."""
    return "\n".join([
        f"draws: {stats.draws} (seed {stats.seed})",
        f"distinct_masks: {stats.distinct_masks}",
        f"frequency_range: {stats.frequency_min:.4f} {stats.frequency_max:.4f} (least and most often masked position)",
        f"mean_regions: {stats.mean_regions:.3f} (4-connected masked regions per mask)",
        f"avg_dist: {stats.avg_dist:.4f} (patches from a masked patch to the nearest visible one, SimMIM)",
        f"realised_ratio: {stats.ratio:.4f}",
    ])


def draw_masks(masks: torch.Tensor, grid: tuple[int, int], path: Path, title: str) -> Path:
    """The masks (B, N) side by side as a PNG: masked patches dark, visible light, patch borders drawn."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    height, width = grid
    count = masks.shape[0]
    columns = min(count, 8)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.4 * rows * height / width + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            ax.imshow(masks[index].view(height, width).float().numpy(), cmap="Greys", vmin=-0.15, vmax=1.15,
                      interpolation="nearest")
            ax.set_xticks([x - 0.5 for x in range(width + 1)], minor=True)
            ax.set_yticks([y - 0.5 for y in range(height + 1)], minor=True)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def _check_size(args: argparse.Namespace) -> None:
    height, width = args.grid
    if max(height, width) > MAX_SIDE:
        raise BlockMAEError(f"--grid {height}x{width} is too large to inspect: at most {MAX_SIDE} patches per side")
    if args.count < 1:
        raise BlockMAEError(f"--count must be >= 1, got {args.count}")
    if args.count * height * width > MAX_PRINTED_CELLS:
        raise BlockMAEError(f"--count {args.count} on the {height}x{width} grid shows {args.count * height * width} "
                            f"patches; at most {MAX_PRINTED_CELLS} (--count <= {max(1, MAX_PRINTED_CELLS // (height * width))}); "
                            f"use --stats for statistics of many masks")
    if args.stats and height * width * max(height, width) > CHUNK_ELEMENTS:
        raise BlockMAEError(f"--stats on the {height}x{width} grid is too large: at most "
                            f"{CHUNK_ELEMENTS} patches x side (e.g. 256x256)")
    if args.stats and not 1 <= args.draws <= max_draws(height * width):
        raise BlockMAEError(f"--draws must be in [1, {max_draws(height * width)}] on the {height}x{width} grid "
                            f"(memory for the distinct-mask count), got {args.draws}")


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def run(args: argparse.Namespace) -> int:
    _check_size(args)
    if args.png is not None:
        claim_output_file(args.png, FIGURE_SUFFIXES, option="--png", kind="masks")
    masks = MaskGenerator(args.grid, args.ratio, family=args.family, block=args.block, align=args.align)
    if args.stats:
        print(f"{masks.describe()}: statistics of {args.draws} masks")
        with tqdm(total=max(args.draws, 0), desc="masks", unit="mask", leave=False, disable=None) as bar:
            stats = mask_stats(masks, draws=args.draws, seed=args.seed, progress=bar.update)
        print(format_stats(stats))
    else:
        mask = masks(args.count, generator=torch.Generator().manual_seed(args.seed))
        print(f"{masks.describe()} ('{MASKED}' masked, '{VISIBLE}' visible)")
        for index in range(args.count):
            print(f"\nmask {index}: {int(mask.mask[index].sum())}/{masks.num_patches} masked")
            print(format_mask(mask.mask[index], masks.grid))
        print(f"\nrealised ratio: {mask.ratio:.4f} ({masks.num_masked} of {masks.num_patches} patches per mask)")
    if args.png is not None:
        mask = masks(args.count, generator=torch.Generator().manual_seed(args.seed))
        print(f"wrote {draw_masks(mask.mask, masks.grid, args.png, masks.describe())}")
    return 0
