"""The texture-shape cue-conflict stimuli of Geirhos et al. (ICLR 2019).

Layout (``stimuli/style-transfer-preprocessed-512`` of github.com/rgeirhos/texture-vs-shape)::

    <shape-category>/<shape-category><N>-<texture-category><M>.png      1,280 images, 224 x 224

Labels: the shape category's index among the 16 sorted categories; ``extra_labels["texture"]`` the
texture category's index; ``extra_labels["agree"]`` 1 for the 80 images whose two categories agree (they
are excluded from shape bias; ``keep_agreeing=False`` drops them). `load_category_mapping()` gives the
Tiny-ImageNet wnids of each category (package data).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from blockmae.data.cache import cached_image_dataset
from blockmae.data.download import RemoteFile
from blockmae.data.roots import resolve_root, split_cache_dir
from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # torch is imported only when a dataset is loaded
    from blockmae.data.base import ImageTensorDataset

CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog",
              "elephant", "keyboard", "knife", "oven", "truck")
# The repository archive: no published checksum (a branch archive is rebuilt by GitHub), so the download
# is checked by its contents instead (category folders and file names).
OFFICIAL_ARCHIVE = RemoteFile(url="https://github.com/rgeirhos/texture-vs-shape/archive/refs/heads/master.zip",
                              filename="texture-vs-shape-master.zip")
STIMULI_IN_ARCHIVE = "texture-vs-shape-master/stimuli/style-transfer-preprocessed-512/"
SPLITS = ("test", "all")  # one set of stimuli; both names mean all of it
LAYOUT = "<shape-category>/<shapeN>-<textureM>.png for the 16 categories"
_NAME = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.png$")


def load_category_mapping() -> dict[str, list[str]]:
    """category -> the Tiny-ImageNet wnids in it (11 of the 16 categories have some; 26 wnids in all)."""
    text = resources.files("blockmae").joinpath("resources", "tiny-imagenet-to-16-categories.tsv").read_text()
    mapping: dict[str, list[str]] = {}
    for line in text.splitlines()[1:]:  # header: category, tin_wnid, words
        if line.strip():
            category, wnid = line.split("\t")[:2]
            mapping.setdefault(category, []).append(wnid)
    return mapping


def find_data_dir(folder: Path) -> Path | None:
    """The stimuli folder: `folder` itself if it holds category folders, else the repository's stimuli path."""
    candidates = [folder, folder / "stimuli" / "style-transfer-preprocessed-512",
                  *sorted(folder.glob("*/stimuli/style-transfer-preprocessed-512"))]
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / c).is_dir() for c in CATEGORIES):
            return candidate
    return None


def list_items(data_dir: Path) -> tuple[list[tuple[Path, int]], list[int], list[int]]:
    """(image, shape index) pairs, texture indices and agree flags, sorted by file path."""
    index = {c: i for i, c in enumerate(CATEGORIES)}
    unknown = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name not in index)
    if unknown:
        raise BlockMAEError(f"{data_dir / unknown[0]} is not one of the 16 cue-conflict categories "
                            f"({', '.join(CATEGORIES)}); remove it or pass the stimuli folder itself")
    items, textures, agree = [], [], []
    for category in CATEGORIES:
        folder = data_dir / category
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.png")):
            match = _NAME.match(path.name)
            if match is None or match.group(1) != category or match.group(3) not in index:
                raise BlockMAEError(f"{path} is not named <{category}N>-<textureM>.png with a texture among the 16 "
                                    f"categories; rename or remove it")
            items.append((path, index[category]))
            textures.append(index[match.group(3)])
            agree.append(int(match.group(3) == category))
    if not items:
        raise BlockMAEError(f"no stimuli in {data_dir} (expected {LAYOUT})")
    return items, textures, agree


def load_cue_conflict(split: str = "test", root: str | os.PathLike | None = None, image_size: int = 64, *,
                      keep_agreeing: bool = True, cache_dir: str | os.PathLike | None = None,
                      resize: str = "center-crop", workers: int = 0, progress: bool = True) -> "ImageTensorDataset":
    """The cue-conflict stimuli at `image_size`, with shape labels and texture/agree extra labels."""
    if split not in SPLITS:
        raise BlockMAEError(f"cue-conflict has no split {split!r}; choose one of {', '.join(SPLITS)}")
    data_dir, cache_root = resolve_root("cue-conflict", root, find_data_dir, LAYOUT, cache_dir)
    items, textures, agree = list_items(data_dir)
    if not keep_agreeing:
        kept = [i for i, a in enumerate(agree) if not a]
        items, textures, agree = [items[i] for i in kept], [textures[i] for i in kept], [agree[i] for i in kept]
    variant = "" if keep_agreeing else "-conflicts"
    return cached_image_dataset(items, split_cache_dir(cache_root, "all", image_size, resize, variant), image_size,
                                list(CATEGORIES), name="cue-conflict", source=data_dir, resize=resize,
                                extra_labels={"texture": textures, "agree": agree}, workers=workers,
                                progress=progress)
