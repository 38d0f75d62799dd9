"""Patch masks for masked-autoencoder pretraining: random (MAE), b x b blocks, and rectangles.

Every generator returns a :class:`Mask` in MAE's layout and masks exactly the same number of
patches in every sample (MAE drops the masked tokens, so the kept sequences must have equal length).

Block family, in short (docs/masking.md has the details):

* The patch grid is tiled by b x b blocks. Blocks are visited in a random order per sample and
  masked whole while the running patch count stays <= ``num_masked``; the first block that would
  overshoot is masked partially (its first patches in raster order), so each sample has at most one
  partial block and exactly ``num_masked`` masked patches.
* ``align="grid"``: the tiling is fixed. If the grid is not a multiple of b, the last block row and
  column are cut by the border (truncated blocks count as whole blocks).
* ``align="shifted"``: the grid-aligned mask is rolled cyclically by a random per-sample offset in
  [0, b) x [0, b), so a block cut by the border continues on the opposite side (a torus). This keeps
  the count exact and makes every patch position masked with the same probability. It needs a grid
  that is a multiple of b (otherwise the wrapped blocks would not be b x b).
* With b = 1 the blocks are single patches and the masks are the random family's masks, draw for draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from blockmae.errors import BlockMAEError

FAMILIES = ("random", "block", "rect")
ALIGNS = ("grid", "shifted")


@dataclass(frozen=True)
class Mask:
    """A batch of masks in MAE's layout.

    ``ids_keep`` (B, N_keep) are the visible patch indices, ``ids_restore`` (B, N) unshuffles a sequence
    laid out as [kept..., masked...] with ``torch.gather``, ``mask`` (B, N) is 1 for masked, 0 for visible.
    """

    ids_keep: Tensor
    ids_restore: Tensor
    mask: Tensor

    @property
    def ratio(self) -> float:
        """Realised masked fraction over the batch."""
        return float(self.mask.float().mean())

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]

    def to(self, device: torch.device | str) -> "Mask":
        return Mask(self.ids_keep.to(device), self.ids_restore.to(device), self.mask.to(device))


def _invert_permutation(perm: Tensor) -> Tensor:
    """argsort of a batch of permutations, by a scatter instead of a second sort."""
    positions = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(1, perm, positions)


def mask_from_noise(noise: Tensor, num_keep: int) -> Mask:
    """MAE's random masking: keep the ``num_keep`` patches with the smallest noise.

    Same algorithm and outputs as facebookresearch/mae and HF ``ViTMAEEmbeddings.random_masking``:
    ids_shuffle = argsort(noise), ids_keep = ids_shuffle[:, :num_keep], ids_restore = argsort(ids_shuffle).
    """
    if noise.dim() != 2:
        raise BlockMAEError(f"mask noise must have shape (batch, num_patches), got {tuple(noise.shape)}")
    num_patches = noise.shape[1]
    if not 0 < num_keep < num_patches:
        raise BlockMAEError(f"num_keep must be in [1, {num_patches - 1}] for {num_patches} patches, got {num_keep}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = _invert_permutation(ids_shuffle)
    ids_keep = ids_shuffle[:, :num_keep]
    mask = (ids_restore >= num_keep).to(torch.float32)
    return Mask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def mask_from_bool(masked: Tensor, num_keep: int) -> Mask:
    """MAE layout for boolean masks (B, N) with ``num_keep`` False per row; kept and masked ids ascend."""
    # A cumsum gives each patch its slot in [kept..., masked...]; cheaper than a stable sort on CPU.
    masked_before = masked.cumsum(1)
    position = torch.arange(masked.shape[1], device=masked.device)
    ids_restore = torch.where(masked, num_keep - 1 + masked_before, position - masked_before)
    ids_shuffle = _invert_permutation(ids_restore)
    return Mask(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore, mask=masked.to(torch.float32))


def _parse_grid(grid_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(grid_size, int) and not isinstance(grid_size, bool):
        grid = (grid_size, grid_size)
    elif isinstance(grid_size, (tuple, list)) and len(grid_size) == 2 and all(isinstance(s, int) for s in grid_size):
        grid = (int(grid_size[0]), int(grid_size[1]))
    else:
        raise BlockMAEError(f"grid_size must be an int or (height, width) in patches, got {grid_size!r}")
    if min(grid) < 1 or grid[0] * grid[1] < 2:
        raise BlockMAEError(f"the {grid[0]}x{grid[1]} patch grid is too small to mask: it needs at least 2 patches")
    return grid


class MaskGenerator:
    """Draws batches of masks with exactly ``num_masked = round(ratio * N)`` masked patches per sample.

    ``family``: "random" (independent patches; ``block`` is ignored), "block" (b x b squares, see the
    module docstring), "rect" (BEiT-style rectangles of random area and aspect; ``block`` is ignored).
    ``align``: "grid" or "shifted" (block family only; the others are translation-invariant already).
    Calls take ``(batch_size, device=None, generator=None)``; random numbers are drawn on the
    generator's device (CPU when no generator is given) and the mask is moved to ``device``.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        ratio: float,
        family: str = "block",
        block: int = 1,
        align: str = "grid",
    ) -> None:
        self.grid = _parse_grid(grid_size)
        height, width = self.grid
        grid_name = f"{height}x{width} patch grid"
        if family not in FAMILIES:
            raise BlockMAEError(f"unknown mask family {family!r}; choose one of {', '.join(FAMILIES)}")
        if align not in ALIGNS:
            raise BlockMAEError(f"unknown mask alignment {align!r}; choose one of {', '.join(ALIGNS)}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise BlockMAEError(f"mask block size must be a positive integer, got {block!r}")
        ratio = float(ratio)
        if not 0.0 < ratio < 1.0:
            raise BlockMAEError(f"mask ratio must be in (0, 1), got {ratio} (on the {grid_name})")
        self.family, self.align, self.ratio = family, align, ratio
        self.block = block if family == "block" else 1
        self.num_patches = height * width
        # Half-up rounding; the small round() absorbs float noise such as 0.35 * 10 = 3.4999...
        self.num_masked = int(math.floor(round(ratio * self.num_patches, 9) + 0.5))
        self.num_keep = self.num_patches - self.num_masked
        if self.num_masked == 0:
            raise BlockMAEError(
                f"mask ratio {ratio} masks no patch of the {grid_name} ({self.num_patches} patches); raise the ratio"
            )
        if self.num_keep == 0:
            raise BlockMAEError(
                f"mask ratio {ratio} leaves no visible patch on the {grid_name} ({self.num_patches} patches); "
                "lower the ratio"
            )
        b = self.block
        if family == "block":
            if b > height or b > width:
                raise BlockMAEError(f"a {b}x{b} mask block does not fit in the {grid_name}; use a block <= {min(height, width)}")
            if b == height and b == width:
                raise BlockMAEError(
                    f"a {b}x{b} mask block is the whole {grid_name}; use a smaller block "
                    "(or smaller patches, which give a larger grid)"
                )
            if align == "shifted" and (height % b or width % b):
                raise BlockMAEError(
                    f"shifted {b}x{b} blocks wrap around the border and need a grid that is a multiple of {b}, "
                    f"but the grid is the {grid_name}; use align='grid' (border blocks are truncated) or another block"
                )
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}

    def __repr__(self) -> str:
        h, w = self.grid
        return (
            f"MaskGenerator(grid={h}x{w}, ratio={self.ratio}, family={self.family!r}, block={self.block}, "
            f"align={self.align!r}, masked={self.num_masked}/{self.num_patches})"
        )

    # ------------------------------------------------------------------ block tables
    def _block_tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Lookup tables, built once per device on the CPU.

        ``block_of_patch`` and ``rank_in_block`` (S, N): each patch's block and its raster rank inside
        the block, for each of the S = b*b cyclic shifts (row s = dy*b + dx; S = 1 in grid mode);
        ``block_area`` (M,); ``rows``, ``cols`` (N,): the patch coordinates.
        """
        if device not in self._tables:
            height, width = self.grid
            b = self.block
            rows = torch.arange(height).repeat_interleave(width)
            cols = torch.arange(width).repeat(height)
            blocks_per_row = -(-width // b)
            block_of_patch = (rows // b) * blocks_per_row + cols // b
            block_width = torch.clamp(width - (cols // b) * b, max=b)  # narrower in a truncated last column
            rank_in_block = (rows % b) * block_width + cols % b
            block_area = torch.bincount(block_of_patch)
            shifts = range(b) if self.align == "shifted" else range(1)
            # Patch (i, j) of a mask rolled by (dy, dx) is patch (i - dy, j - dx) of the unrolled one.
            source = torch.stack(
                [((rows - dy) % height) * width + (cols - dx) % width for dy in shifts for dx in shifts]
            )
            tables = (block_of_patch[source], rank_in_block[source], block_area, rows, cols)
            self._tables[device] = tuple(t.to(device) for t in tables)
        return self._tables[device]

    # ------------------------------------------------------------------ families
    def _random(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Mask:
        noise = torch.rand(batch_size, self.num_patches, device=device, generator=generator)
        return mask_from_noise(noise, self.num_keep)

    def _blocks(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        block_of_patch, rank_in_block, block_area, _, _ = self._block_tables(device)
        num_blocks = block_area.shape[0]
        noise = torch.rand(batch_size, num_blocks, device=device, generator=generator)
        # Blocks with the largest noise are masked first: with b = 1 this is exactly mask_from_noise.
        order = torch.argsort(noise, dim=1, descending=True)
        area = block_area.expand_as(order).gather(1, order)  # gather/index_select: faster than [] on CPU
        before = area.cumsum(1) - area
        taken_sorted = (self.num_masked - before).clamp_(min=0).minimum(area)
        taken = torch.empty_like(taken_sorted).scatter_(1, order, taken_sorted)  # patches masked per block
        if self.align == "shifted":
            shift = torch.randint(0, self.block**2, (batch_size,), device=device, generator=generator)
            block_of_patch = block_of_patch.index_select(0, shift)
            rank_in_block = rank_in_block.index_select(0, shift)
            return rank_in_block < taken.gather(1, block_of_patch)
        return rank_in_block < taken.index_select(1, block_of_patch[0])

    def _rects(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """BEiT-style rectangles, painted in a random order; the first ``num_masked`` painted patches are kept.

        Each sample draws K rectangles (area uniform in [min_area, max_area], log-uniform aspect in
        [0.3, 1/0.3], position uniform inside the grid). A patch's priority is the index of the first
        rectangle covering it, so rectangles are taken whole in order and the last one is cut
        (raster order inside it). K is chosen so the rectangles almost surely cover ``num_masked``
        patches; patches left over in the rare case they do not are drawn at random.
        """
        height, width = self.grid
        n = self.num_patches
        min_area = max(2, n // 16)
        max_area = max(min_area, self.num_masked // 2)
        num_rects = min(62, 4 * math.ceil(self.num_masked / ((min_area + max_area) / 2)) + 4)  # bits of an int64
        u = torch.rand(4, batch_size, 1, num_rects, device=device, generator=generator)
        area = min_area + u[0] * (max_area - min_area)
        log_aspect = math.log(0.3) + u[1] * (2 * math.log(1 / 0.3))
        rect_h = torch.sqrt(area * torch.exp(log_aspect)).round().clamp(1, height)
        rect_w = torch.sqrt(area / torch.exp(log_aspect)).round().clamp(1, width)
        top = torch.floor(u[2] * (height - rect_h + 1))
        left = torch.floor(u[3] * (width - rect_w + 1))
        # Coverage as bit sets (bit k = rectangle k): a patch is covered where its row AND its column are,
        # and the lowest set bit is its first rectangle. O(B (H + W) K + B N) instead of O(B N K).
        bit = torch.ones(num_rects, dtype=torch.int64, device=device) << torch.arange(num_rects, device=device)
        row = torch.arange(height, device=device).view(height, 1)
        col = torch.arange(width, device=device).view(width, 1)
        row_bits = (((row >= top) & (row < top + rect_h)) * bit).sum(2)  # (B, H)
        col_bits = (((col >= left) & (col < left + rect_w)) * bit).sum(2)  # (B, W)
        covered = (row_bits.unsqueeze(2) & col_bits.unsqueeze(1)).view(batch_size, n)
        lowest = (covered & -covered).to(torch.float64)  # exact powers of two
        first = torch.where(covered != 0, torch.log2(lowest).round_().long(), num_rects)  # (B, N)
        _, _, _, rows, cols = self._block_tables(device)
        fallback = torch.rand(batch_size, n, device=device, generator=generator)
        priority = first.to(torch.float32) + torch.where(first < num_rects, rows * width + cols, fallback * n) / (n + 1)
        chosen = torch.topk(priority, self.num_masked, dim=1, largest=False).indices
        return torch.zeros(batch_size, n, dtype=torch.bool, device=device).scatter_(1, chosen, True)

    # ------------------------------------------------------------------ entry point
    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Mask:
        if batch_size < 1:
            raise BlockMAEError(f"batch_size must be >= 1, got {batch_size}")
        target = torch.device(device) if device is not None else None
        draw_on = generator.device if generator is not None else (target or torch.device("cpu"))
        if self.family == "random" or self.block == 1 and self.family == "block":
            mask = self._random(batch_size, draw_on, generator)  # 1x1 blocks: same masks, no table work
        elif self.family == "block":
            mask = mask_from_bool(self._blocks(batch_size, draw_on, generator), self.num_keep)
        else:
            mask = mask_from_bool(self._rects(batch_size, draw_on, generator), self.num_keep)
        if target is not None and target != draw_on:
            mask = mask.to(target)
        return mask
