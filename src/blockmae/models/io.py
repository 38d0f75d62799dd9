"""Model weights on disk: safetensors + JSON architecture (read back by ``models.factory.load_encoder``).

File format: a plain safetensors file holding the model's state dict; its header metadata carries
``format`` = ``blockmae.mae``, ``arch`` (JSON of the constructor arguments, enough to rebuild the model)
and ``metadata`` (JSON of whatever the caller attached: epoch, config, metrics...). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path
from blockmae.models.mae import MaskedAutoencoderViT

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


def read_safetensors(path: str | os.PathLike) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    """(file, header metadata, state dict) of a weights file, checkpoint dir or run dir (resolve_weights_path)."""
    file = resolve_weights_path(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            header = handle.metadata() or {}
        return file, header, load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise BlockMAEError(f"{file} is not a readable safetensors file ({err})") from None


def load_compatible_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                          ignore: tuple[str, ...] = ()) -> None:
    """``model.load_state_dict(state)`` with a one-line BlockMAEError naming any key or shape mismatch or
    non-finite weight; keys starting with an `ignore` prefix are left out (a decoder, a head)."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
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
