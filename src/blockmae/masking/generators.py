"""Patch masks for masked-autoencoder pretraining: random (MAE), b x b blocks, and rectangles.

Every generator returns a :class:`Mask` in MAE's layout and masks exactly the same number of
patches in every sample (MAE drops the masked tokens, so the kept sequences must have equal length):
``num_masked(ratio, N)``, the one rounding rule of the project (half-up).

Block family, in short (docs/masking.md has the details and pictures):

* ``align="free"`` (default): b x b squares at integer offsets (top, left) in
  [-(b-1), H-1] x [-(b-1), W-1], clipped by the border, overlaps allowed, drawn one after another
  until ``num_masked`` patches are covered; the newly covered patches of the last square are taken
  in raster order until the count is exact. The offsets are drawn from calibrated weights
  (:func:`calibrated_offset_weights`; uniform offsets would mask the border less often than the centre,
  because the stopping rule counts patches inside the grid), so every patch is masked equally often.
* ``align="grid"``: the patch grid is tiled by b x b blocks, visited in a random order per sample and
  masked whole while the running count stays <= ``num_masked``; the first block that would overshoot is
  masked partially (its first patches in raster order). Few distinct masks for large b (4 for 4x4 on 8x8
  at 75%): kept for the ablation.
* ``align="shifted"``: the grid-aligned mask rolled cyclically by a random per-sample offset in
  [0, b) x [0, b) (a torus: a block cut by the border continues on the opposite side). Needs a grid that
  is a multiple of b.
* With b = 1 every alignment is the random family, draw for draw (:func:`is_random_masking`).

The ``rect`` family paints rectangles of random area and aspect the same way as free squares (offsets
that let them hang over the border, clipped, drawn from calibrated weights per rectangle size), so it
masks every patch equally often too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from blockmae.errors import BlockMAEError

FAMILIES = ("random", "block", "rect")
ALIGNS = ("free", "grid", "shifted")
DEFAULT_ALIGN = "free"
SHAPES_PER_PASS = 62  # squares or rectangles painted per pass: one bit each in an int64 bit set


def num_masked(ratio: float, num_patches: int) -> int:
    """The number of masked patches: ``ratio * num_patches`` rounded half-up (0.5 -> 1, 2.5 -> 3).

    The one rounding rule of the project (generators, config validation, docs). The inner ``round``
    absorbs float noise such as 0.35 * 10 = 3.4999...
    """
    return int(math.floor(round(float(ratio) * num_patches, 9) + 0.5))


def is_random_masking(family: str, block: int) -> bool:
    """True for MAE's random masking in either spelling: ``family="random"``, or blocks of side 1."""
    return family == "random" or (family == "block" and block == 1)


def canonical_mask(family: str, block: int) -> tuple[str, int]:
    """``(family, block)`` with random masking spelled one way, ``("random", 1)``; others unchanged."""
    return ("random", 1) if is_random_masking(family, block) else (family, block)


def largest_block(grid: tuple[int, int]) -> int:
    """The largest block side a grid accepts: it must fit, and must not be the whole grid."""
    height, width = grid
    side = min(height, width)
    return side - 1 if height == width else side


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



def _span_bits(start: Tensor, length: Tensor | float, size: int, bit: Tensor) -> Tensor:
    """Bit sets of the shapes covering each row (or column): (B, size), bit k set where shape k spans it.

    Shape k spans [start_k, start_k + length_k) clipped to [0, size): its bit is added at the clipped start
    and removed at the clipped end of a difference array, whose running sum is the bit set (bits are
    distinct, so sums are exact ORs). O(B K + B size) instead of comparing every row with every shape.
    """
    first = start.clamp(0, size).long()
    end = (start + length).clamp(0, size).long()
    diff = torch.zeros(start.shape[0], size + 1, dtype=torch.int64, device=start.device)
    diff.scatter_add_(1, first, bit).scatter_add_(1, end, -bit)
    return diff.cumsum(1)[:, :size]


def _offset_cdf(weights: Tensor, device: torch.device) -> Tensor:
    """The offset distributions of all shape sizes as one ascending sequence (float64 on ``device``).

    Row r (size (h, w) = divmod(r, max_w) + 1) is its cumulative distribution plus r, so one
    ``searchsorted`` of ``u + r`` inverts the row of each shape without gathering rows. Built on the CPU,
    so every device compares the same uniforms against the same thresholds."""
    flat = weights.flatten(2).flatten(0, 1)
    cdf = flat.cumsum(1) / flat.sum(1, keepdim=True).clamp(min=1e-300)
    cdf[:, -1] = 1.0
    return (cdf + torch.arange(cdf.shape[0], dtype=torch.float64).unsqueeze(1)).flatten().to(device)


def _offset_grid(max_h: int, max_w: int, height: int, width: int) -> tuple[Tensor, ...]:
    """Broadcastable (side_h, side_w, top, left) index grids of the offset tables."""
    side_h = torch.arange(1, max_h + 1).view(-1, 1, 1, 1)
    side_w = torch.arange(1, max_w + 1).view(1, -1, 1, 1)
    top = (torch.arange(height + max_h - 1) - (max_h - 1)).view(1, 1, -1, 1)
    left = (torch.arange(width + max_w - 1) - (max_w - 1)).view(1, 1, 1, -1)
    return side_h, side_w, top, left


def _allowed_offsets(max_h: int, max_w: int, height: int, width: int) -> Tensor:
    """Uniform weights (max_h, max_w, H + max_h - 1, W + max_w - 1): entry [h-1, w-1, t + max_h-1, l + max_w-1]
    is 1 where an h x w shape may sit at (t, l), i.e. t in [-(h-1), H-1] and l in [-(w-1), W-1]."""
    side_h, side_w, top, left = _offset_grid(max_h, max_w, height, width)
    return ((top >= 1 - side_h) & (left >= 1 - side_w)).to(torch.float64)


def _reweighted(weights: Tensor, frequency: Tensor, step: float) -> Tensor:
    """One calibration step: offsets whose shape covers patches masked less often than the target
    (``frequency`` < 1, an (H, W) map relative to the ratio) are drawn more often, and vice versa.

    The weights are then made symmetric under both mirror flips of the grid (offset t of a side-h shape
    mirrors to H - h - t) and normalised to mean 1 over each size's allowed offsets."""
    max_h, max_w, rows, columns = weights.shape
    height, width = rows - max_h + 1, columns - max_w + 1
    side_h, side_w, top, left = _offset_grid(max_h, max_w, height, width)
    integral = torch.nn.functional.pad(frequency.cumsum(0).cumsum(1), (1, 0, 1, 0))
    t0, t1 = top.clamp(0, height), (top + side_h).clamp(0, height)
    l0, l1 = left.clamp(0, width), (left + side_w).clamp(0, width)
    covered_sum = integral[t1, l1] - integral[t0, l1] - integral[t1, l0] + integral[t0, l0]
    covered_mean = covered_sum / ((t1 - t0) * (l1 - l0)).clamp(min=1)
    allowed = weights > 0
    log_w = torch.where(allowed, torch.log(weights.clamp(min=1e-300)) - step * torch.log(covered_mean.clamp(min=1e-6)),
                        0.0)
    mirror_t = (height - side_h - top + max_h - 1).clamp(0, rows - 1).expand_as(weights)
    mirror_l = (width - side_w - left + max_w - 1).clamp(0, columns - 1).expand_as(weights)
    flipped_t = log_w.gather(2, mirror_t)
    log_w = (log_w + flipped_t + log_w.gather(3, mirror_l) + flipped_t.gather(3, mirror_l)) / 4
    weights = torch.where(allowed, torch.exp(log_w), 0.0)
    count = allowed.sum((2, 3), keepdim=True).clamp(min=1)
    return weights * count / weights.sum((2, 3), keepdim=True).clamp(min=1e-300)


CALIBRATION_SEED = 0x5EED
CALIBRATION_ROUNDS = 8
CALIBRATION_GAIN = 3.0  # a 1% weight change moves the frequencies by only about 0.3%
CALIBRATION_PATCH_DRAWS = 2**20  # masked-or-not decisions per round: 16,384 masks on an 8x8 grid


@functools.lru_cache(maxsize=64)
def calibrated_offset_weights(family: str, grid: tuple[int, int], block: int, ratio: float) -> Tensor:
    """Offset weights per shape size under which free shapes mask every patch equally often.

    Uniform offsets give every patch the same number of covering offsets, but the stopping rule counts
    patches *inside* the grid, so shapes clipped by the border are cheap and a sample stops later in the
    centre: 4x4 squares on 8x8 at 75% masked the corners 72.6% of the time and the centre 77.3%. A fixed,
    seeded calibration on the CPU undoes that (the same weights on every machine and device, computed once
    per process and setting, about a second on an 8x8 grid): draw masks, measure how often each patch is
    masked relative to the ratio, and scale the weight of each offset by the inverse of the mean over the
    patches its shape covers, with a step that shrinks over the rounds so the Monte-Carlo noise averages
    out (Robbins-Monro). The log-weights are rounded to 1e-3, so floating-point differences between CPUs
    cannot change them. Masks stay exact unions of clipped shapes: only where the shapes land changes.
    """
    masks = MaskGenerator(grid, ratio, family=family, block=block, align="free")
    height, width = masks.grid
    weights = _allowed_offsets(*masks._max_sides(), height, width)
    draws = max(1024, CALIBRATION_PATCH_DRAWS // masks.num_patches)
    target = masks.num_masked / masks.num_patches
    rng = torch.Generator().manual_seed(CALIBRATION_SEED)
    for round_index in range(CALIBRATION_ROUNDS):
        painted = masks._painted(draws, torch.device("cpu"), rng, weights).view(draws, height, width)
        frequency = painted.to(torch.float64).mean(0) / target
        weights = _reweighted(weights, frequency, CALIBRATION_GAIN / max(1, round_index - 2))
    return torch.where(weights > 0, torch.exp(torch.round(torch.log(weights.clamp(min=1e-300)), decimals=3)), 0.0)


class MaskGenerator:
    """Draws batches of masks with exactly ``num_masked(ratio, N)`` masked patches per sample.

    ``family``: "random" (independent patches; ``block`` is ignored), "block" (b x b squares, see the
    module docstring), "rect" (BEiT-style rectangles of random area and aspect; ``block`` is ignored).
    ``align``: "free" (default), "grid" or "shifted" (block family only).
    Calls take ``(batch_size, device=None, generator=None)``; random numbers are drawn on the
    generator's device (CPU when no generator is given) and the mask is moved to ``device``.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        ratio: float,
        family: str = "block",
        block: int = 1,
        align: str = DEFAULT_ALIGN,
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
        self.num_masked = num_masked(ratio, self.num_patches)
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
                raise BlockMAEError(f"a {b}x{b} mask block does not fit in the {grid_name}; "
                                    f"use a block <= {largest_block(self.grid)}")
            if b == height and b == width:
                raise BlockMAEError(
                    f"a {b}x{b} mask block is the whole {grid_name}; use a block <= {largest_block(self.grid)} "
                    "(or smaller patches, which give a larger grid)"
                )
            if align == "shifted" and (height % b or width % b):
                raise BlockMAEError(
                    f"shifted {b}x{b} blocks wrap around the border and need a grid that is a multiple of {b}, "
                    f"but the grid is the {grid_name}; use align='free' or another block"
                )
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}

    @property
    def is_random(self) -> bool:
        return is_random_masking(self.family, self.block)

    def __repr__(self) -> str:
        h, w = self.grid
        return (
            f"MaskGenerator(grid={h}x{w}, ratio={self.ratio}, family={self.family!r}, block={self.block}, "
            f"align={self.align!r}, masked={self.num_masked}/{self.num_patches})"
        )

    def describe(self) -> str:
        """One line for humans: 'block masks (4x4, free placement) on the 8x8 patch grid, ratio 0.75'."""
        height, width = self.grid
        shape = ""
        if self.family == "block" and not self.is_random:
            placement = "free placement" if self.align == "free" else f"{self.align} alignment"
            shape = f" ({self.block}x{self.block}, {placement})"
        family = "random" if self.is_random else self.family
        return f"{family} masks{shape} on the {height}x{width} patch grid, ratio {self.ratio}"

    # ------------------------------------------------------------------ block tables
    def _block_tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Lookup tables of the grid-aligned tiling, built once per device on the CPU.

        ``block_of_patch`` and ``rank_in_block`` (S, N): each patch's block and its raster rank inside
        the block, for each of the S = b*b cyclic shifts (row s = dy*b + dx; S = 1 in grid mode);
        ``block_area`` (M,).
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
            tables = (block_of_patch[source], rank_in_block[source], block_area)
            self._tables[device] = tuple(t.to(device) for t in tables)
        return self._tables[device]

    # ------------------------------------------------------------------ families
    def _random(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Mask:
        noise = torch.rand(batch_size, self.num_patches, device=device, generator=generator)
        return mask_from_noise(noise, self.num_keep)

    def _blocks(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """Grid-aligned (or shifted) tiles taken in a random order; see the module docstring."""
        block_of_patch, rank_in_block, block_area = self._block_tables(device)
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

    def _square_sizes(self, u: Tensor) -> tuple[float, float]:
        return float(self.block), float(self.block)

    def _rect_sizes(self, u: Tensor) -> tuple[Tensor, Tensor]:  # u: (2, B, K) uniforms
        """BEiT-style sizes: area uniform in [max(2, N/16), num_masked/2], log-uniform aspect in [0.3, 1/0.3]."""
        height, width = self.grid
        min_area, max_area = self._rect_areas()
        area = min_area + u[0] * (max_area - min_area)
        aspect = torch.exp(math.log(0.3) + u[1] * (2 * math.log(1 / 0.3)))
        return torch.sqrt(area * aspect).round().clamp(1, height), torch.sqrt(area / aspect).round().clamp(1, width)

    def _rect_areas(self) -> tuple[int, int]:
        min_area = max(2, self.num_patches // 16)
        return min_area, max(min_area, self.num_masked // 2)

    def _expected_shapes(self) -> float:
        """Roughly how many shapes cover ``num_masked`` patches (each covers a patch w.p. ~area / offsets)."""
        height, width = self.grid
        if self.family == "block":
            side_h = side_w = float(self.block)
        else:
            side = math.sqrt(sum(self._rect_areas()) / 2)
            side_h, side_w = min(side, height), min(side, width)
        cover = side_h * side_w / ((height + side_h - 1) * (width + side_w - 1))
        return math.log(self.num_keep / self.num_patches) / math.log1p(-min(cover, 0.999))

    def _max_sides(self) -> tuple[int, int]:
        """The largest shape height and width this generator paints."""
        if self.family == "block":
            return self.block, self.block
        return self.grid

    def _offset_weights(self) -> Tensor:
        """Calibrated sampling weights of the shapes' offsets (:func:`calibrated_offset_weights`)."""
        return calibrated_offset_weights(self.family, self.grid, self.block, self.ratio)

    def _painted(
        self,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator | None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Free squares or rectangles painted in draw order until ``num_masked`` patches are covered.

        Each pass draws ``SHAPES_PER_PASS`` shapes per sample, with offsets (top, left) in
        [-(h-1), H-1] x [-(w-1), W-1] so that shapes hang over the border and are clipped; offsets are
        drawn jointly from the calibrated ``weights`` (:meth:`_offset_weights`) so that every patch is masked
        equally often. A patch's priority is (index of the first shape covering it, its raster index),
        and the ``num_masked`` lowest priorities are masked: shapes are taken whole in order and the last
        one is cut, its new patches in raster order (from a random corner). Passes repeat (tensorised
        over the batch) until every sample is covered enough; patches still missing after a generous
        bound (about 4x the expected number of shapes; practically never reached) are drawn at random.
        """
        height, width = self.grid
        n, expected = self.num_patches, self._expected_shapes()
        # About twice the expected number of shapes per pass: most batches need one pass, and the
        # per-pass work O(B (H + W) K) stays small; more passes follow only for the unlucky samples.
        per_pass = min(SHAPES_PER_PASS, max(8, math.ceil(2 * expected)))
        sizes = self._square_sizes if self.family == "block" else self._rect_sizes
        max_passes = max(2, math.ceil((4 * expected + per_pass) / per_pass))
        none = max_passes * per_pass  # "not covered" priority class, after every shape
        max_h, max_w = self._max_sides()
        cdf = _offset_cdf(weights if weights is not None else self._offset_weights(), device)
        offsets_w = width + max_w - 1
        offsets_per_size = (height + max_h - 1) * offsets_w
        bit = torch.ones(per_pass, dtype=torch.int64, device=device) << torch.arange(per_pass, device=device)
        bit = bit.expand(batch_size, per_pass)
        first = torch.full((batch_size, n), none, dtype=torch.int64, device=device)
        for index in range(max_passes):
            u = torch.rand(1 if self.family == "block" else 3, batch_size, per_pass, device=device,
                           generator=generator)
            shape_h, shape_w = sizes(u[1:])
            # The offset (top, left) is drawn jointly from the calibrated table of the shape's size.
            if self.family == "block":
                size_row = torch.full_like(u[0], max_h * max_w - 1, dtype=torch.int64)  # the b x b row
            else:
                size_row = (shape_h.long() - 1) * max_w + shape_w.long() - 1
            position = torch.searchsorted(cdf, u[0].to(torch.float64) + size_row, right=True)
            offset = (position - size_row * offsets_per_size).clamp_(0, offsets_per_size - 1)
            top = torch.div(offset, offsets_w, rounding_mode="floor").to(u.dtype) - (max_h - 1)
            left = (offset % offsets_w).to(u.dtype) - (max_w - 1)
            # Coverage as bit sets (bit k = shape k of this pass): a patch is covered where its row AND its
            # column are; the lowest set bit is its first shape. O(B K + B N) instead of O(B N K).
            row_bits = _span_bits(top, shape_h, height, bit)  # (B, H)
            col_bits = _span_bits(left, shape_w, width, bit)  # (B, W)
            covered = (row_bits.unsqueeze(2) & col_bits.unsqueeze(1)).view(batch_size, n)
            lowest = (covered & -covered).to(torch.float32)  # a power of two: exact in float32
            shape_index = torch.log2(lowest).round_().long() + index * per_pass
            first = torch.where((covered != 0) & (first == none), shape_index, first)
            if device.type == "meta" or bool(((first < none).sum(1) >= self.num_masked).all()):
                break  # (meta tensors have shapes only: one pass)
        else:
            noise = torch.rand(batch_size, n, device=device, generator=generator)
            missing_order = torch.argsort(torch.argsort(noise, dim=1), dim=1)
            first = torch.where(first == none, none + missing_order, first)
        # The cut shape keeps its new patches in raster order, read from one of the four corners (two
        # random bits per sample): a fixed corner would favour the top-left of the grid.
        flip = torch.rand(2, batch_size, 1, device=device, generator=generator) < 0.5
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        raster = torch.where(flip[0], height - 1 - rows, rows) * width + torch.where(flip[1], width - 1 - cols, cols)
        priority = first * n + raster
        chosen = torch.topk(priority, self.num_masked, dim=1, largest=False, sorted=False).indices
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
        if self.is_random:
            mask = self._random(batch_size, draw_on, generator)  # 1x1 blocks: same masks, no table work
        elif self.family == "block" and self.align != "free":
            mask = mask_from_bool(self._blocks(batch_size, draw_on, generator), self.num_keep)
        else:
            mask = mask_from_bool(self._painted(batch_size, draw_on, generator), self.num_keep)
        if target is not None and target != draw_on:
            mask = mask.to(target)
        return mask
