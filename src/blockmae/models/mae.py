"""Masked autoencoder with a ViT backbone (He et al., "Masked Autoencoders Are Scalable Vision Learners").

The forward pass follows the paper's method section:

1. *patchify*: the image is cut into non-overlapping p x p patches, each linearly embedded;
2. *mask*: a subset of patches is removed (random, or contiguous b x b blocks for Block-MAE); masks
   are drawn by `blockmae.masking` (the engine owns the generator) and passed in as a ``Mask``;
3. *encoder*: a ViT sees only the visible patches plus a cls token;
4. *decoder*: a lighter transformer gets the encoded tokens and a shared, learned mask token at every
   masked position, each with its position embedding, and predicts the pixels of every patch;
5. *loss*: mean squared error on the masked patches only, against per-patch normalised pixels
   (``norm_pix_loss``, on by default).

Blocks are timm's ``EvaBlock`` with ``AttentionRope``: the pre-norm ViT block of MAE (fused qkv with
bias, GELU MLP, ``F.scaled_dot_product_attention``) whose attention also accepts a rotary-embedding
tensor; parameter names are those of timm's ViT ``Block``, so official MAE checkpoints map one to one.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.eva import EvaBlock
from torch import Tensor, nn

from blockmae.errors import BlockMAEError
from blockmae.masking import DEFAULT_ALIGN, Mask, MaskGenerator, mask_from_noise, num_masked
from blockmae.models.pos_embed import build_rope, gather_rope, sincos_2d_table

POS_EMBEDS = ("sincos", "learned", "rope", "none")
POOLS = ("cls", "avg", "both")
NORM_PIX_EPS = 1e-6  # MAE's epsilon on the per-patch variance


@dataclass
class MAEOutput:
    """Result of one MAE forward pass."""

    loss: Tensor  # scalar, fp32: mean over masked patches of the per-patch MSE
    pred: Tensor  # (B, N, p*p*C) fp32 predicted pixels of every patch (normalised if norm_pix_loss)
    mask: Tensor  # (B, N) 1 = masked (loss computed here), 0 = visible
    ids_restore: Tensor  # (B, N) unshuffles [kept..., masked...] back to grid order


def _gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x[b, ids[b, i]] for every b, i: (B, N, D), (B, M) -> (B, M, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(
        EvaBlock(dim, num_heads, qkv_bias=True, qkv_fused=True, mlp_ratio=mlp_ratio, num_prefix_tokens=1,
                 attn_type="rope", norm_layer=norm_layer)
        for _ in range(depth)
    )


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder; the mask of each batch comes from the caller.

    ``mask_ratio``, ``mask_family``, ``mask_block`` and ``mask_align`` record the pretraining mask in
    ``arch`` (and so in every checkpoint); the model does not draw masks with them. ``forward`` takes a
    ``Mask`` (from ``blockmae.masking.MaskGenerator``) or MAE's ``noise`` (``mask_from_noise`` with
    ``num_keep`` patches kept, as in MAE and Hugging Face ViTMAE).

    ``pos_embed`` selects the encoder's position information: ``sincos`` (MAE's fixed 2-D table),
    ``learned`` (trained absolute table), ``rope`` (2-D rotary embeddings in every attention layer) or
    ``none``. The decoder always uses the fixed sin-cos table: without positions its mask tokens would be
    identical and it could not tell which patch to reconstruct.
    """

    def __init__(
        self,
        img_size: int = 64,
        patch_size: int = 8,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        decoder_embed_dim: int = 256,
        decoder_depth: int = 4,
        decoder_num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        norm_pix_loss: bool = True,
        mask_ratio: float = 0.75,
        mask_family: str = "block",
        mask_block: int = 2,
        mask_align: str = DEFAULT_ALIGN,
    ) -> None:
        super().__init__()
        self.arch: dict[str, Any] = {
            "img_size": img_size, "patch_size": patch_size, "in_chans": in_chans,
            "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
            "decoder_embed_dim": decoder_embed_dim, "decoder_depth": decoder_depth,
            "decoder_num_heads": decoder_num_heads, "mlp_ratio": mlp_ratio, "pos_embed": pos_embed,
            "norm_pix_loss": norm_pix_loss, "mask_ratio": mask_ratio, "mask_family": mask_family,
            "mask_block": mask_block, "mask_align": mask_align,
        }
        _validate_arch(self.arch)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed_type = pos_embed
        self.norm_pix_loss = norm_pix_loss
        MaskGenerator(self.grid_size, mask_ratio, family=mask_family, block=mask_block, align=mask_align)  # validates
        self.num_keep = self.num_patches - num_masked(mask_ratio, self.num_patches)  # for noise -> mask

        # Encoder.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed in ("sincos", "learned"):
            # Row 0 is the cls token's position (zero and frozen for sincos, as in MAE).
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim),
                                          requires_grad=pos_embed == "learned")
        else:
            self.pos_embed = None
        self.rope = build_rope(embed_dim // num_heads, self.grid_size) if pos_embed == "rope" else None
        self.blocks = _make_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        # Decoder.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = _make_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        self.initialize_weights()

    # ----------------------------------------------------------------------------------------- init
    def initialize_weights(self) -> None:
        """MAE's initialisation: sin-cos tables, xavier linears, patch embedding as a linear, N(0, .02) tokens."""
        if self.pos_embed_type == "sincos":
            self.pos_embed.data.copy_(sincos_2d_table(self.pos_embed.shape[-1], self.grid_size))
        self.decoder_pos_embed.data.copy_(sincos_2d_table(self.decoder_pos_embed.shape[-1], self.grid_size))
        proj = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)
        if self.pos_embed_type == "learned":
            trunc_normal_(self.pos_embed, std=0.02)

    # ------------------------------------------------------------------------------------ pixels
    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), pixels ordered (row, column, channel) within a patch as in MAE."""
        p, (gh, gw) = self.patch_size, self.grid_size
        x = imgs.reshape(imgs.shape[0], self.in_chans, gh, p, gw, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(imgs.shape[0], gh * gw, p * p * self.in_chans)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), the inverse of :meth:`patchify`."""
        p, (gh, gw) = self.patch_size, self.grid_size
        x = patches.reshape(patches.shape[0], gh, gw, p, p, self.in_chans)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], self.in_chans, gh * p, gw * p)

    def patch_targets(self, imgs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-patch regression targets in fp32 and the (mean, std) used to normalise them.

        With ``norm_pix_loss`` the targets are each patch's pixels minus its mean over its own pixels,
        divided by sqrt(var + 1e-6) (unbiased variance, as MAE); otherwise mean 0 and std 1.
        """
        target = self.patchify(imgs.float())
        if not self.norm_pix_loss:
            return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5
        return (target - mean) / std, mean, std

    # ------------------------------------------------------------------------------------- masks
    def mask_from_noise(self, noise: Tensor) -> Mask:
        """MAE's random mask from per-patch ``noise`` (B, N): keep the ``num_keep`` smallest (ViTMAE-compatible)."""
        if noise.dim() != 2 or noise.shape[1] != self.num_patches:
            raise BlockMAEError(f"noise has shape {tuple(noise.shape)}; expected (batch, {self.num_patches}) "
                                f"for the {self.grid_size[0]}x{self.grid_size[1]} patch grid")
        return mask_from_noise(noise, self.num_keep)

    # ----------------------------------------------------------------------------------- encoder
    def forward_encoder(self, imgs: Tensor, ids_keep: Tensor | None = None, depth: int | None = None) -> Tensor:
        """Encode the patches listed in ``ids_keep`` (all of them if None) plus the cls token.

        Returns (B, 1 + N_keep, D): the cls token first, then the kept patches in ``ids_keep`` order.
        ``depth`` runs only the first ``depth`` blocks; the final LayerNorm is applied either way.
        """
        x = self.patch_embed(imgs)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, 1:]
        rope = self.rope.get_embed() if self.rope is not None else None
        if ids_keep is not None:
            x = _gather_tokens(x, ids_keep)
            rope = gather_rope(rope, ids_keep) if rope is not None else None
        cls_token = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
        x = torch.cat([cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks[:depth]:
            x = block(x, rope=rope)  # the cls token (prefix) is never rotated
        return self.norm(x)

    # ----------------------------------------------------------------------------------- decoder
    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch's pixels from the encoded visible tokens: (B, 1 + N_keep, D) -> (B, N, p*p*C)."""
        x = self.decoder_embed(latent)
        num_masked = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.to(x.dtype).expand(x.shape[0], num_masked, -1)
        patches = _gather_tokens(torch.cat([x[:, 1:], mask_tokens], dim=1), ids_restore)  # grid order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over masked patches of the per-patch MSE, computed in fp32."""
        target, _, _ = self.patch_targets(imgs)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask: Mask | None = None, noise: Tensor | None = None) -> MAEOutput:
        """One MAE step with ``mask`` (a ``blockmae.masking.Mask``), or with the random mask of ``noise``."""
        self._check_images(imgs)
        if mask is None:
            if noise is None:
                raise BlockMAEError("MaskedAutoencoderViT needs a mask: pass mask= (blockmae.masking.MaskGenerator) "
                                    "or noise= (MAE's random masking)")
            if noise.shape[0] != imgs.shape[0]:
                raise BlockMAEError(f"noise has shape {tuple(noise.shape)}; expected ({imgs.shape[0]}, "
                                    f"{self.num_patches}) for {imgs.shape[0]} images")
            mask = self.mask_from_noise(noise)
        else:
            self._check_mask(mask, imgs.shape[0])
        latent = self.forward_encoder(imgs, mask.ids_keep)
        pred = self.forward_decoder(latent, mask.ids_restore).float()
        binary = mask.mask.to(pred.dtype)
        return MAEOutput(loss=self.forward_loss(imgs, pred, binary), pred=pred, mask=binary,
                         ids_restore=mask.ids_restore)

    # ------------------------------------------------------------------------- encoder API for probes
    def forward_features(self, imgs: Tensor, pool: str = "cls", layer: int | None = None) -> Tensor:
        """Encoder features of full, unmasked images.

        ``pool``: ``cls`` (cls token, B x D), ``avg`` (mean of the patch tokens, B x D) or ``both``
        (their concatenation, B x 2D). ``layer``: index of the encoder block whose output is used
        (0-based, negative counts from the end); None = the last. The encoder's final LayerNorm is
        applied to intermediate outputs too, so ``layer=-1`` equals the default.
        """
        check_pool(pool)
        self._check_images(imgs)
        depth = len(self.blocks)
        check_layer(layer, depth)
        return pool_tokens(self.forward_encoder(imgs, depth=None if layer is None else layer % depth + 1), pool)

    def capturing_attention(self) -> Any:
        """Capture the encoder's attention probabilities for the calls made inside this block only.

        Yields a list that every encoder forward inside the block extends with one (B, heads, T, T)
        tensor per block, in block order (T = 1 + visible patches, cls first). Inside, the blocks run
        timm's explicit (non-fused) attention and the probabilities are read where it hands them to its
        dropout; on leaving, hooks are removed and each block's fused setting restored, so every other
        call keeps ``F.scaled_dot_product_attention`` (a hook alone would capture nothing on that path).
        """
        return attention_capture(self.blocks)

    def attention_maps(self, imgs: Tensor) -> list[Tensor]:
        """Softmax attention probabilities of every encoder block on full images, each (B, heads, T, T).

        T = 1 + N (cls first). Uses :meth:`capturing_attention` for this call only; the default path
        stays fused.
        """
        self._check_images(imgs)
        with self.capturing_attention() as maps:
            self.forward_encoder(imgs)
        return maps

    @torch.no_grad()
    def reconstruct(self, imgs: Tensor, mask: Mask, paste_visible: bool = False) -> Tensor:
        """Reconstruct images from their visible patches, in the input's (normalised) pixel space.

        With ``norm_pix_loss`` the prediction lives in per-patch normalised space; it is mapped back with
        each true patch's own mean and std (as in MAE's visualisations, this uses statistics of the
        hidden patches). ``paste_visible`` copies the visible patches from the input.
        """
        out = self(imgs, mask=mask)
        _, mean, std = self.patch_targets(imgs)
        patches = out.pred * std + mean
        if paste_visible:
            patches = torch.where(out.mask.bool().unsqueeze(-1), patches, self.patchify(imgs.float()))
        return self.unpatchify(patches).to(imgs.dtype)

    # -------------------------------------------------------------------------------------- checks
    def _check_images(self, imgs: Tensor) -> None:
        expected = (self.in_chans, self.img_size, self.img_size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise BlockMAEError(f"images have shape {tuple(imgs.shape)}; this model expects (B, "
                                f"{expected[0]}, {expected[1]}, {expected[2]}) (resize or build it with img_size=...)")

    def _check_mask(self, mask: Mask, batch_size: int) -> None:
        expected = (batch_size, self.num_patches)
        if tuple(mask.ids_restore.shape) != expected:
            raise BlockMAEError(f"mask has shape {tuple(mask.ids_restore.shape)}; expected {expected} for the "
                                f"{self.grid_size[0]}x{self.grid_size[1]} patch grid")


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise BlockMAEError(f"pool={pool!r} is not one of {', '.join(POOLS)}")


def check_layer(layer: int | None, depth: int) -> None:
    """``layer`` must index one of `depth` blocks (0-based, negative from the end) or be None (the last)."""
    if layer is not None and not -depth <= layer < depth:
        raise BlockMAEError(f"layer={layer} is out of range for an encoder with {depth} blocks "
                            f"(use 0..{depth - 1} or -{depth}..-1)")


def pool_tokens(tokens: Tensor, pool: str, num_prefix_tokens: int = 1) -> Tensor:
    """(B, D) features of (B, prefix + N, D) tokens: ``cls`` the first token, ``avg`` the mean of the patch
    tokens, ``both`` the two concatenated (B, 2D)."""
    cls_feat, avg_feat = tokens[:, 0], tokens[:, num_prefix_tokens:].mean(dim=1)
    return cls_feat if pool == "cls" else avg_feat if pool == "avg" else torch.cat([cls_feat, avg_feat], dim=-1)


@contextmanager
def attention_capture(blocks: Any) -> Iterator[list[Tensor]]:
    """Inside the block, every block in ``blocks`` (timm ``Attention`` / ``AttentionRope``: ``attn.fused_attn``,
    ``attn.attn_drop``) runs the explicit attention path, and the yielded list collects the softmax
    probabilities each hands to its dropout, in block order; on leaving, the hooks are removed and the fused
    setting restored (a hook alone would capture nothing on the fused path)."""
    maps: list[Tensor] = []
    hooks = [block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0]))
             for block in blocks]
    fused = [block.attn.fused_attn for block in blocks]
    try:
        for block in blocks:
            block.attn.fused_attn = False
        yield maps
    finally:
        for hook in hooks:
            hook.remove()
        for block, was_fused in zip(blocks, fused):
            block.attn.fused_attn = was_fused


# The constructor arguments, i.e. the keys of ``model.arch`` (what a checkpoint needs to rebuild a model).
ARCH_KEYS: tuple[str, ...] = tuple(inspect.signature(MaskedAutoencoderViT.__init__).parameters)[1:]


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _validate_arch(arch: dict[str, Any]) -> None:
    """Reject impossible geometry with one-line errors (mask geometry is checked by MaskGenerator)."""
    img, patch = arch["img_size"], arch["patch_size"]
    if patch < 1 or img < patch or img % patch:
        raise BlockMAEError(f"img_size={img} is not a multiple of patch_size={patch}; choose sizes with "
                            f"img_size % patch_size == 0")
    if arch["pos_embed"] not in POS_EMBEDS:
        raise BlockMAEError(f"pos_embed={arch['pos_embed']!r} is not one of {', '.join(POS_EMBEDS)}")
    for width_key, heads_key in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        width, heads = arch[width_key], arch[heads_key]
        if heads < 1 or width % heads:
            raise BlockMAEError(f"{width_key}={width} is not divisible by {heads_key}={heads}")
    if arch["decoder_embed_dim"] % 4:
        raise BlockMAEError(f"decoder_embed_dim={arch['decoder_embed_dim']} must be divisible by 4 "
                            f"(2-D sin-cos positions)")
    if arch["pos_embed"] == "sincos" and arch["embed_dim"] % 4:
        raise BlockMAEError(f"embed_dim={arch['embed_dim']} must be divisible by 4 for pos_embed='sincos'")
    if arch["pos_embed"] == "rope" and (arch["embed_dim"] // arch["num_heads"]) % 4:
        raise BlockMAEError(f"pos_embed='rope' needs a head width (embed_dim / num_heads = "
                            f"{arch['embed_dim'] // arch['num_heads']}) divisible by 4")
    if not 0.0 < arch["mask_ratio"] < 1.0:
        raise BlockMAEError(f"mask_ratio={arch['mask_ratio']} must be strictly between 0 and 1")
