"""Reconstruction figures: original, masked input, reconstruction, reconstruction with visible patches.

Used by the pretraining engine at milestones and by `blockmae viz reconstructions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from blockmae.data.augment import denormalize
from blockmae.masking import Mask
from blockmae.visualisation import save_figure

MASKED_GREY = 0.5  # masked patches are drawn in mid grey in the "masked" panel


def mask_to_pixels(mask: torch.Tensor, image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, N) patch mask (1 = masked) -> (B, 1, H, W) pixel mask."""
    grid_h, grid_w = image_size[0] // patch_size, image_size[1] // patch_size
    grid = mask.float().reshape(-1, 1, grid_h, grid_w)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


@torch.no_grad()
def reconstruction_panels(model: torch.nn.Module, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
    """The panels of one mask as RGB in [0, 1] on the CPU, each (B, 3, H, W): masked, reconstruction, pasted.

    `images` are normalised (as the model is trained on); `mask` has one row per image.
    """
    was_training = model.training
    model.eval()
    try:
        recon = model.reconstruct(images, mask).float()
    finally:
        model.train(was_training)
    pixels = mask_to_pixels(mask.mask.to(images.device), images.shape[-2:], model.arch["patch_size"])
    original = denormalize(images.float())
    recon = denormalize(recon)
    return {
        "masked": (original * (1 - pixels) + MASKED_GREY * pixels).cpu(),
        "reconstruction": recon.cpu(),
        "visible + reconstruction": (original * (1 - pixels) + recon * pixels).cpu(),
    }


def reconstruction_figure(model: torch.nn.Module, images: torch.Tensor, masks: Mapping[str, Mask],
                          path: str | Path, title: str | None = None) -> Path:
    """One row per image: the original, then for each named mask its masked input, reconstruction, and
    reconstruction with the visible patches pasted back. Written atomically (PNG/PDF by suffix)."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    path = Path(path)
    original = denormalize(images.float()).cpu()
    columns: list[tuple[str, torch.Tensor]] = [("original", original)]
    for name, mask in masks.items():
        for panel, batch in reconstruction_panels(model, images, mask).items():
            columns.append((f"{name}\n{panel}", batch))
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.3 * rows + 0.6), squeeze=False)
    for col, (label, batch) in enumerate(columns):
        for row in range(rows):
            ax = axes[row][col]
            ax.imshow(batch[row].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(label, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
