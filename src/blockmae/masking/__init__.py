"""Patch masks for MAE pretraining: random, b x b blocks (free, grid-aligned or shifted), rectangles."""

from blockmae.masking.generators import (
    ALIGNS,
    DEFAULT_ALIGN,
    FAMILIES,
    Mask,
    MaskGenerator,
    canonical_mask,
    is_random_masking,
    largest_block,
    mask_from_bool,
    mask_from_noise,
    num_masked,
)
from blockmae.masking.spec import STANDARD_MASKS, MaskSpec, block_spec, mask_label, standard_masks

__all__ = ["ALIGNS", "DEFAULT_ALIGN", "FAMILIES", "STANDARD_MASKS", "Mask", "MaskGenerator", "MaskSpec", "block_spec",
           "canonical_mask", "is_random_masking", "largest_block", "mask_from_bool", "mask_from_noise", "mask_label",
           "num_masked", "standard_masks"]
