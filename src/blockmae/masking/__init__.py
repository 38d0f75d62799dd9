"""Patch masks for MAE pretraining: random, b x b blocks (grid-aligned or shifted), rectangles."""

from blockmae.masking.generators import ALIGNS, FAMILIES, Mask, MaskGenerator, mask_from_bool, mask_from_noise

__all__ = ["ALIGNS", "FAMILIES", "Mask", "MaskGenerator", "mask_from_bool", "mask_from_noise"]
