"""Model weights on disk (safetensors + JSON architecture) and interop with Hugging Face ViTMAE.

File format: a plain safetensors file holding the model's state dict; its header metadata carries
``format`` = ``blockmae.mae``, ``arch`` (JSON of the constructor arguments, enough to rebuild the model)
and ``metadata`` (JSON of whatever the caller attached: epoch, config, metrics...). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path
from blockmae.models.mae import ARCH_KEYS, MaskedAutoencoderViT

FORMAT = "blockmae.mae"
WEIGHTS_NAME = "model.safetensors"


def save_mae(model: MaskedAutoencoderViT, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the model's weights and architecture to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BlockMAEError(f"model weights go to a .safetensors file, got {path}")
    try:
        header = {"format": FORMAT, "arch": json.dumps(model.arch), "metadata": json.dumps(metadata or {})}
    except TypeError as err:
        raise BlockMAEError(f"checkpoint metadata must be JSON-serialisable: {err}") from None
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return path


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """A .safetensors file, a directory with ``model.safetensors``, or a run dir (``checkpoints/last``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / WEIGHTS_NAME, path / "checkpoints" / "last" / WEIGHTS_NAME):
            if candidate.is_file():
                return candidate
        raise BlockMAEError(f"no {WEIGHTS_NAME} in {path} or {path / 'checkpoints' / 'last'}; pass a "
                            f".safetensors file, a checkpoint directory or a run directory")
    raise BlockMAEError(f"checkpoint {path} does not exist")


def load_mae(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MaskedAutoencoderViT, dict]:
    """Rebuild a model saved by :func:`save_mae`; returns (model, metadata)."""
    file = resolve_weights_path(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as err:
        raise BlockMAEError(f"{file} is not a readable safetensors file ({err})") from None
    if header.get("format") != FORMAT or "arch" not in header:
        raise BlockMAEError(f"{file} has no blockmae architecture in its header (was it written by save_mae?)")
    arch = json.loads(header["arch"])
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise BlockMAEError(f"{file} names unknown architecture keys {unknown}; valid keys: {list(ARCH_KEYS)}")
    model = MaskedAutoencoderViT(**arch)
    load_compatible_state(model, state, source=str(file))
    return model.to(device), json.loads(header.get("metadata", "{}"))


def load_compatible_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a one-line BlockMAEError naming any key or shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BlockMAEError(f"{source} does not match the model: missing {missing[:3]}"
                            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                            f"{'...' if len(unexpected) > 3 else ''}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise BlockMAEError(f"{source}: {name} has shape {tuple(state[name].shape)} but the model expects "
                                f"{tuple(tensor.shape)}")
        if state[name].is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            # else training or probing it fails later with a non-finite loss that blames the learning rate
            raise BlockMAEError(f"{source}: {name} holds NaN or infinite values (diverged or damaged weights); "
                                f"use another checkpoint")
    model.load_state_dict(state)


# ------------------------------------------------------------------------------- Hugging Face ViTMAE
# (pattern, replacement) on HF key names; both transformers >= 5 names (q_proj, o_proj, mlp.fc1) and
# the older ones used by the checkpoints on the Hub (attention.attention.query, intermediate.dense).
_HF_RENAMES: list[tuple[str, str]] = [
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^vit\.(?:layers|encoder\.layer)\.(\d+)\.", r"blocks.\1."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder_blocks.\1."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^decoder\.", ""),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.(?:q_proj|attention\.query)\.", ".attn.q."),
    (r"\.attention\.(?:k_proj|attention\.key)\.", ".attn.k."),
    (r"\.attention\.(?:v_proj|attention\.value)\.", ".attn.v."),
    (r"\.attention\.(?:o_proj|output\.dense)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def from_hf_vitmae_state_dict(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ``ViTMAEForPreTraining`` state dict onto :class:`MaskedAutoencoderViT` names (sincos model).

    Separate query/key/value projections are concatenated into timm's fused ``qkv``.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    fused: dict[str, torch.Tensor] = {}
    for key, tensor in renamed.items():
        match = re.fullmatch(r"(.*\.attn)\.([qkv])\.(weight|bias)", key)
        if match is None:
            fused[key] = tensor
        elif match.group(2) == "q":
            prefix, kind = match.group(1), match.group(3)
            parts = [renamed[f"{prefix}.{part}.{kind}"] for part in "qkv"]
            fused[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return fused


def build_hf_vitmae(arch: Mapping[str, Any]) -> torch.nn.Module:
    """transformers' ``ViTMAEForPreTraining`` with the same architecture as ``arch`` (an ``model.arch``).

    Used by the equivalence test and the benchmark; transformers is an optional dependency.
    """
    from blockmae.models.external import require_transformers

    require_transformers()
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    if arch["pos_embed"] != "sincos":
        raise BlockMAEError(f"ViTMAE only has sin-cos positions; cannot mirror pos_embed={arch['pos_embed']!r}")
    config = ViTMAEConfig(
        image_size=arch["img_size"], patch_size=arch["patch_size"], num_channels=arch["in_chans"],
        hidden_size=arch["embed_dim"], num_hidden_layers=arch["depth"], num_attention_heads=arch["num_heads"],
        intermediate_size=int(arch["embed_dim"] * arch["mlp_ratio"]),
        decoder_hidden_size=arch["decoder_embed_dim"], decoder_num_hidden_layers=arch["decoder_depth"],
        decoder_num_attention_heads=arch["decoder_num_heads"],
        decoder_intermediate_size=int(arch["decoder_embed_dim"] * arch["mlp_ratio"]),
        mask_ratio=arch["mask_ratio"], norm_pix_loss=arch["norm_pix_loss"],
        layer_norm_eps=1e-6,  # MAE's value; ViTMAEConfig defaults to 1e-12
        qkv_bias=True, hidden_act="gelu",
    )
    return ViTMAEForPreTraining(config)
