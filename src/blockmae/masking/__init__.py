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
    mask_label,
    num_masked,
)

__all__ = ["ALIGNS", "DEFAULT_ALIGN", "FAMILIES", "Mask", "MaskGenerator", "canonical_mask", "is_random_masking",
           "largest_block", "mask_from_bool", "mask_from_noise", "mask_label", "num_masked"]
