"""Named model sizes. Encoder sizes follow DeiT/ViT; decoders follow MAE's "light decoder" proportions."""

from __future__ import annotations

from typing import Any

from blockmae.errors import BlockMAEError
from blockmae.models.mae import ARCH_KEYS, MaskedAutoencoderViT

PRESETS: dict[str, dict[str, Any]] = {
    # CPU sizes for tests, the quickstart and ablation sweeps on a laptop.
    "vit_nano": dict(embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2),
    "vit_micro": dict(embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                      decoder_num_heads=4),
    # Standard ViT encoders.
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=256, decoder_depth=4,
                     decoder_num_heads=8),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4,
                      decoder_num_heads=8),
    # MAE's ViT-B configuration (512-wide, 8-deep decoder).
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                     decoder_num_heads=16),
}


def build_mae(preset: str = "vit_small", **overrides: Any) -> MaskedAutoencoderViT:
    """A :class:`MaskedAutoencoderViT` of a named size; any constructor argument can be overridden."""
    if preset not in PRESETS:
        raise BlockMAEError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(ARCH_KEYS))
    if unknown:
        raise BlockMAEError(f"unknown model argument(s) {unknown}; valid: {', '.join(ARCH_KEYS)}")
    return MaskedAutoencoderViT(**{**PRESETS[preset], **overrides})
