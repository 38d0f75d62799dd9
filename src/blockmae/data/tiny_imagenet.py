"""Tiny-ImageNet-200 in its official layout.

Layout (as extracted from ``tiny-imagenet-200.zip``)::

    wnids.txt                       one WordNet id per line (200, or fewer in a subset)
    words.txt                       <wnid><TAB><comma-separated names>, for all of WordNet
    train/<wnid>/images/*.JPEG      500 per class
    val/images/*.JPEG               10,000 images in ONE folder (not ImageFolder layout) ...
    val/val_annotations.txt         ... labelled here: <file><TAB><wnid><TAB>x0<TAB>y0<TAB>x1<TAB>y1

Class index = position of the wnid in the *sorted* wnids of wnids.txt (the order torchvision's
ImageFolder would give train/). Class names are the first name of each wnid in words.txt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from blockmae.data.cache import cached_image_dataset
from blockmae.data.download import RemoteFile
from blockmae.data.roots import resolve_root, split_cache_dir
from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # torch is imported only when a dataset is loaded
    from blockmae.data.base import ImageTensorDataset

OFFICIAL_ZIP = RemoteFile(
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    filename="tiny-imagenet-200.zip",
    size=248_100_043,
    md5="90528d7ca1a48142e341f4ef8d21d0de",
)
SPLITS = ("train", "val")
LAYOUT = "wnids.txt, words.txt, train/<wnid>/images/ and val/val_annotations.txt"


def find_data_dir(folder: Path) -> Path | None:
    """The Tiny-ImageNet folder: `folder` itself or its `tiny-imagenet-200/` child, None if neither."""
    for candidate in (folder, folder / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def read_wnids(data_dir: Path) -> list[str]:
    """The wnids of wnids.txt, sorted: position = class index."""
    path = data_dir / "wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise BlockMAEError(f"{path} lists no classes; restore it from the official zip")
    if len(set(wnids)) != len(wnids):
        raise BlockMAEError(f"{path} lists a wnid twice; restore it from the official zip")
    return sorted(wnids)


def read_class_names(data_dir: Path, wnids: list[str]) -> list[str]:
    """First name of each wnid in words.txt (the wnid itself when absent; made unique with the wnid)."""
    words: dict[str, str] = {}
    path = data_dir / "words.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


def list_items(data_dir: Path, split: str, wnids: list[str]) -> list[tuple[Path, int]]:
    """(image file, class index) of one split, in a fixed order."""
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        items = []
        for wnid in wnids:
            folder = data_dir / "train" / wnid / "images"
            if not folder.is_dir():
                raise BlockMAEError(f"missing {folder} (class {wnid} of wnids.txt); Tiny-ImageNet expects "
                                    f"train/<wnid>/images/*.JPEG: re-extract the official zip")
            items += [(p, index[wnid]) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpeg", ".jpg")]
        return items
    if split == "val":
        annotations = data_dir / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise BlockMAEError(f"missing {annotations}; Tiny-ImageNet's val images are labelled by that file: "
                                f"re-extract the official zip")
        items = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise BlockMAEError(f"{annotations}:{number}: expected <file><TAB><wnid>..., got {line!r}")
            filename, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                raise BlockMAEError(f"{annotations}:{number}: class {wnid} is not in wnids.txt; "
                                    f"fix the line or add the class to wnids.txt")
            image = data_dir / "val" / "images" / filename
            if not image.is_file():
                raise BlockMAEError(f"{annotations}:{number}: image {image} does not exist; re-extract the official zip")
            items.append((image, index[wnid]))
        return items
    raise BlockMAEError(f"Tiny-ImageNet has no split {split!r}; choose one of {', '.join(SPLITS)}")


def load_tiny_imagenet(split: str, root: str | os.PathLike | None = None, image_size: int = 64, *,
                       cache_dir: str | os.PathLike | None = None, resize: str = "center-crop", workers: int = 0,
                       progress: bool = True) -> "ImageTensorDataset":
    """Tiny-ImageNet `split` ("train" or "val") at `image_size`, decoded once into a uint8 cache.

    `root`: a folder prepared by `blockmae data prepare tiny-imagenet`, or the extracted dataset folder.
    """
    if split not in SPLITS:
        raise BlockMAEError(f"Tiny-ImageNet has no split {split!r}; choose one of {', '.join(SPLITS)}")
    data_dir, cache_root = resolve_root("tiny-imagenet", root, find_data_dir, LAYOUT, cache_dir)
    wnids = read_wnids(data_dir)
    items = list_items(data_dir, split, wnids)
    return cached_image_dataset(items, split_cache_dir(cache_root, split, image_size, resize), image_size,
                                read_class_names(data_dir, wnids), name=f"tiny-imagenet-{split}", source=data_dir,
                                resize=resize, workers=workers, progress=progress)
