"""The in-memory form every dataset is served in: a uint8 image tensor plus integer labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ImageTensorDataset:
    """Images as uint8 (N, 3, H, W) (possibly memory-mapped), labels as int64 (N,).

    `extra_labels` holds further per-image integer tensors, first axis N: labels (N,) (e.g. ShapeTex's
    "texture") or masks (N, H, W) (ShapeTex's "figure", with `figure_masks=True`); and
    `class_names` the names of `labels`' classes, index = class id.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    extra_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def default_cache_root() -> Path:
    """Where decoded datasets are cached: $BLOCKMAE_CACHE_DIR, else ~/.cache/blockmae."""
    return Path(os.environ.get("BLOCKMAE_CACHE_DIR", Path.home() / ".cache" / "blockmae"))
