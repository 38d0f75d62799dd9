"""Features of a frozen encoder (models.factory.load_encoder) over an ImageTensorDataset, with an optional
on-disk cache.

Images go through the pipeline's evaluation path (TensorBatchLoader without augmentation: antialiased
resize to the encoder's input when sizes differ, ImageNet normalisation) and are encoded under no_grad
in batches (bf16 autocast on request). The cache key is (weights hash, dataset name, size and content
fingerprint, pool, layer, image size, autocast), so features of another checkpoint, split or pooling
are never served by mistake.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from blockmae.data.loader import TensorBatchLoader
from blockmae.engine.distributed import resolve_device as engine_resolve_device
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path
from blockmae.models.factory import Encoder
from blockmae.progress import ImageProgress


def resolve_device(device: str) -> torch.device:
    """The probes' `device` setting: the engine's rule (auto = cuda, then mps, then cpu)."""
    return engine_resolve_device(device, key="device")


@torch.no_grad()
def encode_batch(
    model: nn.Module, images: torch.Tensor, pool: str = "cls", layer: int | None = None, autocast: bool = False
) -> torch.Tensor:
    """Features (B, D) of normalised float images; float32 whatever the autocast precision."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        feats = model.forward_features(images, pool=pool, layer=layer)
    return feats.float()


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Any, pool: str = "cls", layer: int | None = None, batch_size: int = 256,
    device: str | torch.device = "cpu", autocast: bool = False, image_size: int | None = None,
    desc: str = "features", progress: bool = True,
) -> torch.Tensor:
    """Features (N, D) of every image of `dataset` in order (no augmentation), on the CPU; `progress`: a bar
    on a terminal, plain lines in a log file (off where another bar runs, e.g. the online monitor inside
    pretraining)."""
    if len(dataset) == 0:
        raise BlockMAEError(f"dataset '{dataset.name}' is empty: nothing to extract features from")
    loader = TensorBatchLoader(dataset, batch_size, device, augment=None, shuffle=False, drop_last=False,
                               image_size=image_size)
    model.eval()
    out = []
    with ImageProgress(len(dataset), desc, enabled=progress) as bar:
        for images, _ in loader:
            out.append(encode_batch(model, images, pool, layer, autocast).cpu())
            bar.update(images.shape[0])
    return torch.cat(out)


def dataset_fingerprint(dataset: Any) -> str:
    """Hash of the labels and of every n-th image (64 at most): tells apart same-sized sets of other content."""
    digest = hashlib.sha256(dataset.labels.cpu().numpy().tobytes())
    step = max(1, len(dataset) // 64)
    digest.update(dataset.images[::step].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def feature_cache_path(
    cache_dir: str | Path, encoder: Encoder, dataset: Any, pool: str, layer: int | None, autocast: bool = False
) -> Path:
    key = hashlib.sha256(
        f"{encoder.weights_hash}|{dataset.name}|{len(dataset)}|{dataset_fingerprint(dataset)}|{pool}|{layer}|{encoder.image_size}|{autocast}".encode()
    ).hexdigest()[:20]
    return Path(cache_dir) / f"{dataset.name}-{pool}-{key}.safetensors"


def encoder_features(
    encoder: Encoder, dataset: Any, pool: str = "cls", layer: int | None = None, batch_size: int = 256,
    device: str | torch.device = "cpu", autocast: bool = False, cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """`extract_features` at the encoder's input size, read from / written to `cache_dir` when given."""
    path = feature_cache_path(cache_dir, encoder, dataset, pool, layer, autocast) if cache_dir is not None else None
    if path is not None and path.is_file():
        cached = load_file(str(path))["features"]
        if cached.shape[0] == len(dataset):
            return cached
    feats = extract_features(encoder.model, dataset, pool, layer, batch_size, device, autocast,
                             image_size=encoder.image_size, desc=f"features {dataset.name}")
    if path is not None:
        with atomic_path(path) as tmp:  # unique temp name: concurrent probes may fill one cache
            save_file({"features": feats.contiguous()}, str(tmp), metadata={"dataset": dataset.name, "pool": pool})
    return feats
