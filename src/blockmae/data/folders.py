"""Any class-folder tree (``<class>/<image>``), e.g. Stylized-ImageNet or a user's own set.

Classes are the sorted sub-folder names (torchvision's ImageFolder convention), unless a mapping file
relabels them: one ``<folder><TAB><wnid>`` line per folder (``#`` comments allowed), so that e.g.
Stylized-ImageNet's ImageNet folders are labelled in a Tiny-ImageNet model's class space. Mapped labels
index the sorted target wnids (Tiny-ImageNet's convention): those of `target_wnids` (a list, or a
wnids.txt file or a folder holding one) or else the mapped wnids themselves. The original folder index
is kept in ``extra_labels["folder"]``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from blockmae.data.cache import cached_image_dataset
from blockmae.data.roots import resolve_root, split_cache_dir
from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # torch is imported only when a dataset is loaded
    from blockmae.data.base import ImageTensorDataset

LAYOUT = "one sub-folder of images per class"


def read_mapping(path: str | os.PathLike) -> dict[str, str]:
    """folder name -> wnid from a two-column mapping file."""
    path = Path(path)
    if not path.is_file():
        raise BlockMAEError(f"mapping file {path} does not exist; pass a file of <folder><TAB><wnid> lines")
    mapping: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise BlockMAEError(f"{path}:{number}: expected <folder><TAB><wnid>, got {line!r}")
        if fields[0] in mapping and mapping[fields[0]] != fields[1]:
            raise BlockMAEError(f"{path}:{number}: folder {fields[0]} is mapped twice; keep one line for it")
        mapping[fields[0]] = fields[1]
    return mapping


def _read_target_wnids(target: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        path = path / "wnids.txt" if path.is_dir() else path
        if not path.is_file():
            raise BlockMAEError(f"target wnids {path} do not exist; pass a wnids.txt (e.g. Tiny-ImageNet's) or a list")
        return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    return sorted(set(target))


def list_items(tree: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image file, folder index) pairs and the sorted folder names, as torchvision's ImageFolder finds them."""
    try:
        folders, folder_index = find_classes(str(tree))
        samples = make_dataset(str(tree), folder_index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise BlockMAEError(f"{tree} is not a class-folder tree ({err}); expected {LAYOUT}") from None
    return [(Path(path), index) for path, index in samples], folders


def load_folder(root: str | os.PathLike, split: str | None = None, image_size: int = 64, *,
                mapping: str | os.PathLike | None = None,
                target_wnids: str | os.PathLike | Sequence[str] | None = None, skip_unmapped: bool = False,
                cache_dir: str | os.PathLike | None = None, resize: str = "center-crop", workers: int = 0,
                progress: bool = True) -> "ImageTensorDataset":
    """The class-folder tree at `root` (or at `root/split` when that folder exists), decoded once into a cache."""
    if root is None:
        raise BlockMAEError("the folder dataset needs root=<a folder of class sub-folders>")
    root = Path(root)
    if not root.is_dir():
        raise BlockMAEError(f"image folder {root} does not exist; pass a folder with {LAYOUT}")
    tree = root / split if split and (root / split).is_dir() else root
    if split and tree == root and split != "all":
        raise BlockMAEError(f"{root} has no sub-folder {split!r}; pass split='all' to read {root} itself")
    _, cache_root = resolve_root("folder", tree, lambda f: f if f.is_dir() else None, LAYOUT, cache_dir)
    items, folders = list_items(tree)
    class_names = folders
    extra = {}
    variant = ""
    if mapping is not None:
        folder_to_wnid = read_mapping(mapping)
        unmapped = [f for f in folders if f not in folder_to_wnid]
        if unmapped and not skip_unmapped:
            raise BlockMAEError(f"{len(unmapped)} folders of {tree} are not in {mapping} (e.g. {unmapped[0]}); "
                                f"add them or pass skip_unmapped=True")
        class_names = _read_target_wnids(target_wnids) if target_wnids is not None else sorted(set(folder_to_wnid.values()))
        wnid_index = {w: i for i, w in enumerate(class_names)}
        outside = sorted({w for f, w in folder_to_wnid.items() if f in folders and w not in wnid_index})
        if outside:
            raise BlockMAEError(f"{mapping} maps folders to {outside[0]}, which is not among the target wnids; "
                                f"fix the mapping or the target wnids")
        kept = [(path, index) for path, index in items if folders[index] in folder_to_wnid]
        extra["folder"] = [index for _, index in kept]
        items = [(path, wnid_index[folder_to_wnid[folders[index]]]) for path, index in kept]
        variant = "-mapped-" + hashlib.sha1(repr((sorted(folder_to_wnid.items()), class_names)).encode()).hexdigest()[:8]
    name = f"folder-{tree.name}"
    return cached_image_dataset(items, split_cache_dir(cache_root, split or "all", image_size, resize, variant), image_size,
                                class_names, name=name, source=tree, resize=resize, extra_labels=extra,
                                workers=workers, progress=progress)
