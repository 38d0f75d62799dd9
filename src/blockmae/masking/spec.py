"""A mask setting and its names: the one home of what a mask is called.

`MaskSpec` (family, block side, ratio, placement) gives every name the project prints: `label` ('random 75%',
'4x4 blocks 75%'), `name` (the same without the ratio, used by the figures), `arm_name` ('1x1 (MAE)', '2x2
blocks': the quickstart's arms, the reference encoders) and `phrase` ('4x4 block masking'). The figures'
standard masks (`STANDARD_MASKS`, `standard_masks`) are specs too, so a run's own mask is recognised by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from blockmae.errors import BlockMAEError
from blockmae.masking.generators import DEFAULT_ALIGN, Mask, MaskGenerator, canonical_mask


@dataclass(frozen=True)
class MaskSpec:
    """One mask setting; random masking has one spelling (family 'random', block 1) whichever is given."""

    family: str = "block"
    block: int = 2
    ratio: float = 0.75
    align: str = DEFAULT_ALIGN

    def __post_init__(self) -> None:
        family, block = canonical_mask(self.family, self.block)
        object.__setattr__(self, "family", family)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "align", self.align or DEFAULT_ALIGN)

    @classmethod
    def of(cls, setting: Any) -> MaskSpec:
        """The spec of anything with family, block, ratio and align (a config's `mask` section)."""
        return cls(setting.family, int(setting.block), float(setting.ratio), getattr(setting, "align", DEFAULT_ALIGN))

    @property
    def is_random(self) -> bool:
        return self.family == "random"

    @property
    def name(self) -> str:
        """'random', '4x4 blocks', '2x2 grid blocks', 'rects'; the placement only when it is not free."""
        if self.is_random:
            return "random"
        if self.family == "block":
            return f"{self.block}x{self.block} {'' if self.align == DEFAULT_ALIGN else self.align + ' '}blocks"
        return f"{self.family}s"

    @property
    def label(self) -> str:
        """The name and the ratio: 'random 75%', '4x4 blocks 75%', '2x2 grid blocks 60%', 'rects 50%'."""
        return f"{self.name} {self.ratio:.0%}"

    @property
    def arm_name(self) -> str:
        """'1x1 (MAE)' for random masking, else the name: the quickstart's arms and the reference encoders."""
        return "1x1 (MAE)" if self.is_random else self.name

    @property
    def phrase(self) -> str:
        """'random (1x1) masking', '4x4 block masking': the name in a sentence."""
        return "random (1x1) masking" if self.is_random else f"{self.name.removesuffix('s')} masking"

    def generator(self, grid: int | tuple[int, int]) -> MaskGenerator:
        return MaskGenerator(grid, self.ratio, family=self.family, block=self.block, align=self.align)


def mask_label(family: str, block: int, ratio: float, align: str | None = None) -> str:
    """MaskSpec(family, block, ratio, align).label."""
    return MaskSpec(family, block, ratio, align or DEFAULT_ALIGN).label


def block_spec(block: int) -> MaskSpec:
    """The b x b block setting at the default ratio (b = 1: random masking), as the quickstart's arms use."""
    return MaskSpec("block", block)


# The masks every reconstruction figure shows beside a run's own (those that fit the grid).
STANDARD_MASKS = (MaskSpec("random", 1), MaskSpec("block", 2), MaskSpec("block", 4))


def standard_masks(arch: Mapping[str, Any], count: int, seed: int = 0, ratio: float | None = None) -> dict[str, Mask]:
    """Random, 2x2-block and 4x4-block masks for `count` images at the model's mask ratio (fixed seed), by name.

    Block sizes the patch grid cannot hold (e.g. 4x4 blocks on a 4x4 grid) are left out."""
    grid = arch["img_size"] // arch["patch_size"]
    ratio = arch.get("mask_ratio", 0.75) if ratio is None else ratio
    masks = {}
    for spec in STANDARD_MASKS:
        try:
            generator = MaskGenerator(grid, ratio, family=spec.family, block=spec.block)
        except BlockMAEError:
            continue
        masks[spec.name] = generator(count, generator=torch.Generator().manual_seed(seed))
    return masks
