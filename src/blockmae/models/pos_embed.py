"""Position information for the MAE encoder and decoder: MAE's fixed 2-D sin-cos table and 2-D RoPE.

Both come from timm; this module only fixes the layouts MAE checkpoints expect and the gathering of
rotary embeddings for the tokens that survive masking.
"""

from __future__ import annotations

import torch
from timm.layers import RotaryEmbeddingCat, apply_keep_indices_nlc, build_sincos2d_pos_embed


def sincos_2d_table(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table, shape (1, [1 +] H*W, embed_dim), row-major patches.

    Laid out as [sin(x) | cos(x) | sin(y) | cos(y)] (x = column, y = row), the order of the official MAE
    code and therefore of every released MAE / ViTMAE checkpoint. The cls row is zero.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sin-cos position table needs a width divisible by 4, got {embed_dim}")
    # timm gives [sin(y) | sin(x) | cos(y) | cos(x)] in quarter-width chunks; reorder to MAE's layout.
    table = build_sincos2d_pos_embed(list(grid_size), dim=embed_dim)
    sin_y, sin_x, cos_y, cos_x = table.chunk(4, dim=-1)
    table = torch.cat([sin_x, cos_x, sin_y, cos_y], dim=-1)
    if cls_token:
        table = torch.cat([table.new_zeros(1, embed_dim), table], dim=0)
    return table.unsqueeze(0)


def build_rope(head_dim: int, grid_size: tuple[int, int]) -> RotaryEmbeddingCat:
    """2-D axial RoPE over the patch grid (integer patch coordinates, EVA-02 style bands).

    Its table, shape (H*W, 2 * head_dim) = [sin | cos], is a non-persistent buffer: it is rebuilt at
    construction and never stored in checkpoints.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    return RotaryEmbeddingCat(head_dim, in_pixels=False, feat_shape=list(grid_size))


def gather_rope(table: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings of the kept patches: (N, 2*hd) -> (B, 1, N_keep, 2*hd), broadcast over heads.

    Rotations depend on each token's own grid position, so dropping and reordering tokens keeps every
    pairwise relative offset intact (this is why RoPE works with MAE's token dropping).
    """
    return apply_keep_indices_nlc(ids_keep, table, ids_keep).unsqueeze(1)
