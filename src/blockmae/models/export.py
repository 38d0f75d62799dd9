"""blockmae encoders as timm VisionTransformers and Hugging Face ViTMAE / ViT models.

The encoder's parameter names already are timm ``VisionTransformer`` names (see models/mae.py), so the
timm model is the encoder's state dict without the decoder and mask token. Hugging Face names come from
the one mapping in models/io.py (``_HF_RENAMES``), read backwards here: each HF key is renamed forwards
and takes the blockmae tensor of that name (split into q/k/v where HF keeps them apart).

Position variants: ``sincos`` and ``learned`` are an absolute table (timm's ``pos_embed``), ``none`` is
timm's ``pos_embed='none'``; ``rope`` goes to timm's Eva (same RoPE, same block: equal to float precision);
Hugging Face's ViT has no RoPE, so ``rope`` (and ``none``) are refused there.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import save_for_hf
from torch import nn

from blockmae.errors import BlockMAEError
from blockmae.fileio import claim_output_dir, mark_output, staged_dir
from blockmae.lock import output_lock
from blockmae.models.hf import _HF_RENAMES, build_hf_vitmae, quiet_transformers, require_transformers
from blockmae.models.factory import load_encoder
from blockmae.models.mae import MaskedAutoencoderViT
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD

# timm names with the standard widths; other sizes use the first name with every size argument given.
_TIMM_NAMES = {(192, 12, 3): "vit_tiny_patch16_224", (384, 12, 6): "vit_small_patch16_224",
               (768, 12, 12): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224"}
TIMM_GLOBAL_POOL = {"cls": "token", "avg": "avg"}
FORMATS = ("timm", "hf")
EXPORT_KIND = "export"


ROPE_TIMM_NAME = "vit_small_patch16_rope_224"  # timm's Eva with axial RoPE; sizes given in the model args


def _refuse_rope(arch: dict[str, Any], target: str) -> None:
    if arch["pos_embed"] == "rope":
        raise BlockMAEError(f"pos_embed='rope' cannot be exported to {target}: its ViT has absolute positions "
                            f"only; use --format timm (timm's Eva with RoPE)")


def timm_model_name(arch: dict[str, Any]) -> str:
    if arch["pos_embed"] == "rope":
        return ROPE_TIMM_NAME
    return _TIMM_NAMES.get((arch["embed_dim"], arch["depth"], arch["num_heads"]), "vit_tiny_patch16_224")


def timm_model_args(arch: dict[str, Any], pool: str = "cls", fc_norm: bool = False) -> dict[str, Any]:
    """`timm.create_model(timm_model_name(arch), **args)` builds the encoder (no head).

    ``pool=avg`` uses timm's ``global_pool='avg'``; without ``fc_norm`` the final norm acts on every token
    before the mean, as blockmae's ``forward_features(pool='avg')``; with it (MAE's fine-tuning) a norm after
    the mean replaces it. ``rope``: timm's Eva with the same axial RoPE (EVA-02 'cat' bands, temperature
    1e4, 'ij' grid, integer patch coordinates) and blockmae's attention block (``attn_type='rope'``)."""
    if pool not in TIMM_GLOBAL_POOL:
        raise BlockMAEError(f"pool={pool!r}: timm exports pool by cls or avg")
    args = {"img_size": arch["img_size"], "patch_size": arch["patch_size"], "in_chans": arch["in_chans"],
            "embed_dim": arch["embed_dim"], "depth": arch["depth"], "num_heads": arch["num_heads"],
            "mlp_ratio": arch["mlp_ratio"], "qkv_bias": True, "class_token": True,
            "global_pool": TIMM_GLOBAL_POOL[pool]}
    if arch["pos_embed"] == "rope":
        return {**args, "qkv_fused": True, "attn_type": "rope", "use_abs_pos_emb": False, "use_rot_pos_emb": True,
                "rope_type": "cat", "rope_temperature": 10000.0, "rope_grid_indexing": "ij", "num_reg_tokens": 0,
                "use_fc_norm": fc_norm}
    return {**args, "pos_embed": "none" if arch["pos_embed"] == "none" else "learn", "fc_norm": fc_norm}


def encoder_state_dict(model: MaskedAutoencoderViT) -> dict[str, torch.Tensor]:
    """The encoder's tensors under timm ViT names (decoder and mask token left out)."""
    skip = ("decoder", "mask_token")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(skip)}
    if model.pos_embed is None:
        state.pop("pos_embed", None)
    return state


def to_timm_vit(model: MaskedAutoencoderViT, pool: str = "cls", num_classes: int = 0, fc_norm: bool = False,
                **overrides: Any) -> nn.Module:
    """A timm VisionTransformer (Eva for RoPE) holding the encoder's weights (a fresh head when
    ``num_classes`` > 0). ``overrides`` go to ``timm.create_model`` (``drop_path_rate``...)."""
    args = {**timm_model_args(model.arch, pool, fc_norm), **overrides}
    vit = timm.create_model(timm_model_name(model.arch), pretrained=False, num_classes=num_classes, **args)
    state = encoder_state_dict(model)
    if isinstance(vit.norm, nn.Identity):  # fc_norm after pooling replaces the final norm (MAE's fine-tuning)
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    # timm's RoPE ViTs always build layer scale (create_model drops init_values=None): gamma = 1 is the
    # identity, exactly, in any precision.
    state.update({k: torch.ones_like(v) for k, v in vit.state_dict().items() if re.search(r"\.gamma_[12]$", k)})
    missing, unexpected = vit.load_state_dict(state, strict=False)
    # A head, and fc_norm when fine-tuning with avg pooling (MAE starts it fresh), are the only new tensors.
    new = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    if new or unexpected:
        raise BlockMAEError(f"the encoder does not fit timm's ViT: missing {new[:3]}, unexpected {unexpected[:3]}")
    return vit


def export_timm(model: MaskedAutoencoderViT, out_dir: str | Path, pool: str = "cls") -> Path:
    """timm's own layout (``save_for_hf``: model.safetensors + config.json with architecture and model_args),
    so both ``timm.create_model('local-dir:DIR', pretrained=True)`` and the model name + ``model_args`` +
    ``pretrained_cfg_overlay=dict(file=DIR/model.safetensors)`` load it."""
    vit = to_timm_vit(model, pool)
    out_dir = Path(out_dir)
    size = model.arch["img_size"]
    # On the model's own pretrained_cfg, which every timm >= 1.0 writes to config.json (save_for_hf's
    # `data_config` and its merging of model_config's pretrained_cfg are newer than the declared floor).
    vit.pretrained_cfg = {**vit.pretrained_cfg, "tag": "blockmae", "input_size": (model.arch["in_chans"], size, size),
                          "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 1.0}
    with staged_dir(out_dir) as tmp:
        save_for_hf(vit, str(tmp), model_args=timm_model_args(model.arch, pool), safe_serialization=True)
        mark_output(tmp, EXPORT_KIND)
    return out_dir


def timm_load_kwargs(out_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """(name, kwargs) for ``timm.create_model`` on an export: the issue's `pretrained_cfg_overlay` form."""
    config = json.loads((Path(out_dir) / "config.json").read_text())
    overlay = {"file": str(Path(out_dir) / "model.safetensors"), "custom_load": False, "num_classes": 0}
    return config["architecture"], {**config["model_args"], "num_classes": 0, "pretrained": True,
                                    "pretrained_cfg_overlay": overlay}


# ------------------------------------------------------------------------------------ Hugging Face
def _hf_state_from(model: MaskedAutoencoderViT, hf_keys: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """Fill ``hf_keys`` from blockmae tensors by the forward mapping (``prefix`` makes ViTModel keys look
    like ViTMAE's ``vit.`` ones for it)."""
    ours = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key in hf_keys:
        name = prefix + key
        for pattern, replacement in _HF_RENAMES:
            name = re.sub(pattern, replacement, name)
        split = re.fullmatch(r"(.*\.attn)\.([qkv])\.(weight|bias)", name)
        if split:
            fused = ours[f"{split.group(1)}.qkv.{split.group(3)}"]
            state[key] = fused.chunk(3, dim=0)["qkv".index(split.group(2))].clone()
        elif name in ours:
            state[key] = ours[name].detach().clone()
    return state


def to_hf(model: MaskedAutoencoderViT) -> nn.Module:
    """``ViTMAEForPreTraining`` (sin-cos positions: the whole MAE, decoder included) or ``ViTModel``
    (learned positions: the encoder, whose table ViTMAE would not keep)."""
    arch = model.arch
    _refuse_rope(arch, "Hugging Face")
    if arch["pos_embed"] == "none":
        raise BlockMAEError("pos_embed='none' cannot be exported to Hugging Face: ViT and ViTMAE always add a "
                            "position table; use --format timm")
    if arch["pos_embed"] == "sincos":
        hf, prefix = build_hf_vitmae(arch), ""
    else:
        require_transformers()
        from transformers import ViTConfig, ViTModel  # optional: Hugging Face export only

        hf = ViTModel(ViTConfig(
            image_size=arch["img_size"], patch_size=arch["patch_size"], num_channels=arch["in_chans"],
            hidden_size=arch["embed_dim"], num_hidden_layers=arch["depth"], num_attention_heads=arch["num_heads"],
            intermediate_size=int(arch["embed_dim"] * arch["mlp_ratio"]), layer_norm_eps=1e-6, qkv_bias=True,
            hidden_act="gelu"), add_pooling_layer=False)
        prefix = "vit."
    wanted = list(hf.state_dict())
    state = _hf_state_from(model, wanted, prefix)
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise BlockMAEError(f"no blockmae tensor for Hugging Face keys {missing[:3]}")
    hf.load_state_dict(state)
    return hf


def export_hf(model: MaskedAutoencoderViT, out_dir: str | Path) -> Path:
    hf = to_hf(model)
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp, quiet_transformers():
        hf.save_pretrained(str(tmp), safe_serialization=True)
        mark_output(tmp, EXPORT_KIND)
    return out_dir


# ------------------------------------------------------------------------------------------ command
@torch.no_grad()
def largest_difference(model: MaskedAutoencoderViT, out_dir: Path, fmt: str, pool: str, seed: int = 0) -> float:
    """Max |exported - blockmae| over the tokens and pooled features of 4 random images."""
    gen = torch.Generator().manual_seed(seed)
    size = model.arch["img_size"]
    imgs = torch.randn(4, model.arch["in_chans"], size, size, generator=gen)
    model = model.eval()
    tokens = model.forward_encoder(imgs)
    if fmt == "timm":
        name, kwargs = timm_load_kwargs(out_dir)
        vit = timm.create_model(name, **kwargs).eval()
        theirs = vit.forward_features(imgs)
        pooled = (vit.forward_head(theirs, pre_logits=True) - model.forward_features(imgs, pool=pool)).abs().max()
        return max(float((theirs - tokens).abs().max()), float(pooled))

    require_transformers()
    from transformers import AutoModel  # optional: Hugging Face export only

    with quiet_transformers():  # a ViTMAEModel read from a ViTMAEForPreTraining dir reports the decoder unused
        hf = AutoModel.from_pretrained(str(out_dir)).eval()
    if hf.config.model_type == "vit_mae":  # ViTMAEModel masks: keep every patch, in grid order
        hf.config.mask_ratio = 0.0
        noise = torch.arange(model.num_patches, dtype=torch.float32).expand(imgs.shape[0], -1)
        theirs = hf(pixel_values=imgs, noise=noise).last_hidden_state
    else:
        theirs = hf(pixel_values=imgs).last_hidden_state
    return float((theirs - tokens).abs().max())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a blockmae encoder: --format timm writes a timm VisionTransformer (Eva for RoPE; "
                          "model.safetensors + config.json; timm.create_model('local-dir:DIR', pretrained=True) "
                          "loads it); --format hf "
                          "a transformers ViTMAEForPreTraining (sin-cos positions) or ViTModel (learned) directory. "
                          "Prints the largest difference between the exported model's features and blockmae's.")
    parser.add_argument("checkpoint", help="a .safetensors file, a checkpoint dir or a run dir (its checkpoints/last)")
    parser.add_argument("--format", choices=FORMATS, required=True, dest="fmt")
    parser.add_argument("--out", required=True,
                        help="output directory: new, empty or an earlier export (replaced whole); never a run dir")
    parser.add_argument("--force", action="store_true",
                        help="replace a non-empty --out that is not an earlier export (its contents are deleted)")
    parser.add_argument("--pool", choices=tuple(TIMM_GLOBAL_POOL), default="cls",
                        help="timm: the global_pool the exported model is configured with (default cls)")


def run(args: argparse.Namespace) -> int:
    claim_output_dir(args.out, EXPORT_KIND, force=args.force)
    model = load_encoder(args.checkpoint).mae
    with output_lock(args.out):
        claim_output_dir(args.out, EXPORT_KIND, force=args.force)  # again: another writer may have come first
        out = export_timm(model, args.out, args.pool) if args.fmt == "timm" else export_hf(model, args.out)
    diff = largest_difference(model, out, args.fmt, args.pool)
    print(f"exported {args.checkpoint} -> {out} ({args.fmt}); largest |difference| vs blockmae features: {diff:.2e}")
    if diff > 1e-5:
        raise BlockMAEError(f"the exported model's features differ from blockmae's by {diff:.2e} (> 1e-5)")
    return 0
