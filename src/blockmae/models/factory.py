"""Every encoder blockmae takes, from one function: :func:`load_encoder` (spec -> :class:`Encoder`).

Specs: a blockmae run dir, checkpoint dir or ``.safetensors`` file (``models.io.save_mae``'s; the shipped
references too): the :class:`MaskedAutoencoderViT`, decoder included (``Encoder.mae``). ``timm:NAME:FILE``, an
official MAE ``.pth`` (``mae:FILE``), a Hugging Face ViT / ViTMAE directory (``hf:DIR``) or a timm export
directory: a ``ForeignViT`` (models/external.py; HF in models/hf.py). ``random``: an untrained MAE seeded with
``seed``, of architecture ``arch``, else the checkpoint ``arch_from``'s, else ``preset`` at ``img_size``/``patch_size``.

Which function is for what: ``load_encoder`` is the one way to a model that evaluations, diagnostics,
fine-tuning, export and figures read (frozen, with its weights hash, input size and normalisation);
``models.presets.build_mae`` builds a fresh trainable MAE from a config (pretraining); ``MaskedAutoencoderViT``
is the class; ``models.io.save_mae`` writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockmae.errors import BlockMAEError
from blockmae.models.external import (
    ForeignViT, hf_config, load_official_mae, load_timm, load_timm_dir, parse_timm_spec,
)
from blockmae.models.hf import load_hf
from blockmae.models.io import FORMAT, load_compatible_state, read_safetensors
from blockmae.models.mae import ARCH_KEYS, MaskedAutoencoderViT
from blockmae.models.presets import build_mae
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD

RANDOM = "random"


@dataclass
class Encoder:
    """A frozen encoder plus what identifies it (for caches, head metadata and the registry)."""

    model: nn.Module
    checkpoint: str  # the spec as given, or "random"
    weights_hash: str
    arch: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.arch.get("img_size", 64))

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) its weights were trained with: a foreign model's own (in its arch), else ImageNet's.
        The evaluation pipelines always hand ImageNet-normalised images; a foreign model converts them."""
        return tuple(self.arch.get("mean", IMAGENET_MEAN)), tuple(self.arch.get("std", IMAGENET_STD))

    @property
    def mae(self) -> MaskedAutoencoderViT:
        """The whole blockmae MAE (decoder included): what reconstructions, export and fine-tuning need."""
        if not isinstance(self.model, MaskedAutoencoderViT):
            raise BlockMAEError(f"{self.checkpoint} is not a blockmae checkpoint (a run dir, checkpoint dir or "
                                f".safetensors file written by blockmae); this needs one")
        return self.model


def weights_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): identifies the weights wherever they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def is_foreign(spec: str) -> bool:
    """Whether ``spec`` names a foreign model rather than a blockmae checkpoint (or ``random``)."""
    if spec.startswith(("timm:", "hf:", "mae:")):
        return True
    path = Path(spec)
    return (path.suffix in (".pth", ".pt") and path.is_file()) or hf_config(path) is not None


def canonical_spec(spec: str) -> str:
    """``spec`` with its file made absolute (what a probe head or a registry row records to find it again)."""
    if spec == RANDOM:
        return RANDOM
    if spec.startswith("timm:"):
        name, file = parse_timm_spec(spec)
        return f"timm:{name}:{file.resolve()}" if file else spec
    for prefix in ("hf:", "mae:"):
        if spec.startswith(prefix):
            return f"{prefix}{Path(spec[len(prefix):]).resolve()}"
    return str(Path(spec).resolve())


def checkpoint_stem(spec: str) -> str:
    """A short file-name-safe name of a checkpoint: its run folder's name (or 'random')."""
    if spec != RANDOM:
        parts = [p for p in Path(spec).parts if p not in ("checkpoints", "last", "model.safetensors")]
        spec = Path(parts[-1]).stem if parts else Path(spec).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def load_encoder(
    spec: str | os.PathLike, device: str | torch.device = "cpu", *, seed: int = 0,
    arch: dict[str, Any] | None = None, arch_from: str | None = None, preset: str = "vit_micro",
    img_size: int = 32, patch_size: int = 4,
) -> Encoder:
    """The frozen encoder (eval mode, no gradients) that ``spec`` names, on ``device`` (see the module
    docstring); ``seed``, ``arch``, ``arch_from``, ``preset``, ``img_size`` and ``patch_size`` are read
    for ``random`` only."""
    spec = str(spec)
    if spec == RANDOM:
        if arch is None and arch_from:
            arch = _load_blockmae(arch_from)[0].arch
        torch.manual_seed(seed)
        model = MaskedAutoencoderViT(**arch) if arch is not None else build_mae(preset, img_size=img_size,
                                                                                patch_size=patch_size)
        metadata: dict[str, Any] = {"seed": seed, **({} if arch is not None else {"preset": preset})}
    elif is_foreign(spec):
        model, metadata = _load_foreign(spec), {"foreign": canonical_spec(spec)}
    else:
        model, metadata = _load_blockmae(spec)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return Encoder(model, spec, weights_hash(model), dict(model.arch), dict(metadata))


def _load_foreign(spec: str) -> ForeignViT:
    if spec.startswith("timm:"):
        name, file = parse_timm_spec(spec)
        if file is None:
            raise BlockMAEError(f"'{spec}': write timm:<model_name>:<weights file> (no downloads: the weights "
                                f"file is required)")
        return load_timm(name, file)
    if spec.startswith("mae:") or (Path(spec).suffix in (".pth", ".pt") and not spec.startswith("hf:")):
        return load_official_mae(Path(spec.removeprefix("mae:")))
    path = Path(spec.removeprefix("hf:"))
    config = hf_config(path)
    if config is None:
        raise BlockMAEError(f"{path} is not a model directory (no config.json)")
    return load_timm_dir(path, config) if "architecture" in config else load_hf(path, config)


def _load_blockmae(path: str) -> tuple[MaskedAutoencoderViT, dict[str, Any]]:
    """The model a file written by ``models.io.save_mae`` holds (its architecture is in the header) and the
    metadata saved with it."""
    file, header, state = read_safetensors(path)
    if header.get("format") != FORMAT or "arch" not in header:
        raise BlockMAEError(f"{file} has no blockmae architecture in its header (was it written by save_mae?)")
    arch = json.loads(header["arch"])
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise BlockMAEError(f"{file} names unknown architecture keys {unknown}; valid keys: {list(ARCH_KEYS)}")
    model = MaskedAutoencoderViT(**arch)
    load_compatible_state(model, state, source=str(file))
    return model, json.loads(header.get("metadata", "{}"))
