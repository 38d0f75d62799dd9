"""`blockmae viz reconstructions --checkpoint PATH [PATH ...] --out FILE.png [--data shapetex]`.

One checkpoint: the engine's reconstruction figure (original; masked input, reconstruction and
reconstruction with visible patches pasted, for random masking and 2x2 and 4x4 blocks).
Several checkpoints (e.g. epochs 20/50/200/400/800 of one run): the same images and the same masks
for every checkpoint, one row per checkpoint, so that only the weights change from row to row.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from blockmae.data import load_dataset
from blockmae.data.augment import denormalize, resize_normalize
from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.masking import Mask, standard_masks
from blockmae.fileio import claim_output_file
from blockmae.models.factory import load_encoder
from blockmae.visualisation import save_figure
from blockmae.visualisation.reconstructions import reconstruction_figure, reconstruction_panels

def checkpoint_label(path: str, metadata: Mapping[str, Any]) -> str:
    epoch = metadata.get("epoch")
    if epoch is None:
        match = re.search(r"epoch_(\d+)", str(path))
        epoch = int(match.group(1)) if match else None
    return f"epoch {epoch}" if epoch is not None else Path(path).name


def sample_images(data: str, root: str | None, image_size: int, count: int, seed: int) -> torch.Tensor:
    """`count` normalised evaluation images of `data` (shapetex val by default), picked with `seed`."""
    split = {"shapetex": "val", "tiny-imagenet": "val", "cifar10": "test", "cifar100": "test", "dtd": "test",
             "cue-conflict": "test", "folder": "train"}.get(data, "val")
    options = {"num_images": max(count, 64)} if data == "shapetex" else {}
    ds = load_dataset(data, split, root=root, image_size=image_size, **options)
    if len(ds) < count:
        raise BlockMAEError(f"{data} {split} has {len(ds)} images, fewer than --images {count}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:count]
    return resize_normalize(ds.images[idx], image_size)


def epochs_figure(models: Sequence[tuple[str, torch.nn.Module]], images: torch.Tensor, masks: Mapping[str, Mask],
                  path: str | Path) -> Path:
    """Rows: originals, masked inputs, then one row per checkpoint (visible + reconstruction);
    columns: each mask, then each image."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    count = images.shape[0]
    panels = {label: {name: reconstruction_panels(model, images, m) for name, m in masks.items()}
              for label, model in models}
    first = panels[models[0][0]]
    original = denormalize(images.float()).cpu()
    rows: list[tuple[str, dict[str, torch.Tensor]]] = [("original", {n: original for n in masks}),
                                                       ("masked", {n: first[n]["masked"] for n in masks})]
    rows += [(label, {n: panels[label][n]["visible + reconstruction"] for n in masks}) for label, _ in models]
    cols = len(masks) * count
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.1 * len(rows) + 0.5), squeeze=False)
    for r, (label, by_mask) in enumerate(rows):
        for m, name in enumerate(masks):
            for i in range(count):
                ax = axes[r][m * count + i]
                ax.imshow(by_mask[name][i].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and i == 0:
                    ax.set_title(name, fontsize=7, loc="left")
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle("same images and masks for every checkpoint; checkpoint rows: visible patches + reconstruction",
                 fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def draw_reconstructions(checkpoints: Sequence[str], out: str | Path, data: str = "shapetex", root: str | None = None,
                         count: int = 4, seed: int = 0, ratio: float | None = None) -> Path:
    encoders = [load_encoder(path) for path in checkpoints]
    loaded = [(path, encoder.mae, encoder.metadata) for path, encoder in zip(checkpoints, encoders)]
    arch = loaded[0][1].arch
    for path, model, _ in loaded[1:]:
        if (model.arch["img_size"], model.arch["patch_size"]) != (arch["img_size"], arch["patch_size"]):
            raise BlockMAEError(f"{path} has image/patch size {model.arch['img_size']}/{model.arch['patch_size']}, "
                                f"{checkpoints[0]} has {arch['img_size']}/{arch['patch_size']}; "
                                "compare checkpoints of one run")
    images = sample_images(data, root, arch["img_size"], count, seed)
    masks = standard_masks(arch, count, seed, ratio)
    if len(loaded) == 1:
        path, model, meta = loaded[0]
        return reconstruction_figure(model, images, masks, out, title=f"{path} ({checkpoint_label(path, meta)})")
    models = [(checkpoint_label(path, meta), model) for path, model, meta in loaded]
    return epochs_figure(models, images, masks, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s): .safetensors, checkpoint dir or run dir; several = one row each")
    parser.add_argument("--out", required=True, help="output figure (.png or .pdf)")
    parser.add_argument("--data", default="shapetex", help="dataset the images come from (default: shapetex val)")
    parser.add_argument("--root", help="dataset root (not needed for shapetex)")
    parser.add_argument("--images", type=number(int, ">=1"), default=4, help="number of images (default 4)")
    parser.add_argument("--ratio", type=number(float, "(0..1)"), help="mask ratio (default: the model's)")
    parser.add_argument("--seed", type=number(int, ">=0"), default=0, help="seed of the image choice and the masks")


def run(args: argparse.Namespace) -> int:
    claim_output_file(args.out, (".png", ".pdf", ".svg"), kind="viz")
    path = draw_reconstructions(args.checkpoint, args.out, args.data, args.root, args.images, args.seed, args.ratio)
    print(f"wrote {path}")
    return 0
