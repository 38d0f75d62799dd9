"""`blockmae data preview`: a labelled grid of a dataset's images, written as a PNG."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from blockmae.config import number
from blockmae.data.base import ImageTensorDataset
from blockmae.data import load_dataset
from blockmae.data.shapetex import TEXTURE_CLASSES
from blockmae.errors import BlockMAEError
from blockmae.visualisation import save_figure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset name, e.g. shapetex")
    parser.add_argument("--split", default="train", help="split to draw from (shapetex: train, val, cue_conflict, "
                        "shape_only, texture_only; default: train)")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--count", type=number(int, ">=1"), default=32, help="number of images (default: 32)")
    parser.add_argument("--image-size", type=number(int, ">=1"), default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--seed", type=number(int, ">=0"), default=0, help="dataset seed (default: 0)")
    parser.add_argument("--root", type=Path, default=None, help="dataset root, for datasets read from disk")


def _load(args: argparse.Namespace) -> ImageTensorDataset:
    options = {"seed": args.seed} if args.dataset == "shapetex" else {}
    return load_dataset(args.dataset, args.split, root=args.root, image_size=args.image_size, **options)


def _captions(data: ImageTensorDataset, index: torch.Tensor) -> list[str]:
    texture = data.extra_labels.get("texture")
    texture_names = None
    if texture is not None:
        texture_names = TEXTURE_CLASSES if data.name == "shapetex" else data.class_names
    captions = []
    for i in index.tolist():
        label = int(data.labels[i])
        lines = [data.class_names[label] if 0 <= label < len(data.class_names) else str(label)]
        if texture is not None and int(texture[i]) >= 0 and texture_names is not None:
            name = texture_names[int(texture[i])]
            if name != lines[0]:
                lines.append(f"tex: {name}")
        captions.append("\n".join(lines))
    return captions


def preview_figure(data: ImageTensorDataset, path: Path, count: int = 32, seed: int = 0, title: str = "") -> Path:
    """Draw `count` images picked at random (fixed by `seed`) with their labels; write `path` atomically."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    count = min(count, len(data))
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    captions = _captions(data, index)
    cols = min(8, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, caption in zip(axes.flat, index.tolist(), captions):
        ax.imshow(data.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise BlockMAEError(f"--count must be at least 1, got {args.count}")
    if args.out.suffix.lower() != ".png":
        raise BlockMAEError(f"--out must name a .png file, got {args.out}")
    data = _load(args)
    title = f"{args.dataset} / {args.split} ({data.image_size} px, seed {args.seed})"
    preview_figure(data, args.out, args.count, args.seed, title)
    print(f"wrote {args.out} ({min(args.count, len(data))} images of {len(data)})")
    return 0
