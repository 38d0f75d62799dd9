"""DTD (Describable Textures Dataset) in its official release layout.

Layout (``dtd-r1.0.1.tar.gz`` extracts to ``dtd/``; torchvision's DTD keeps it at ``<root>/dtd/dtd/``)::

    dtd/images/<class>/<class>_<nnnn>.jpg
    dtd/labels/{train,val,test}<N>.txt      N = partition 1..10; each line <class>/<file>.jpg

Class index = position of the class in the sorted names of ``images/`` (47 in the full release; same as
torchvision's DTD when every class appears in the split). Images of varying size become
`image_size` squares: shorter side scaled to `image_size`, centre crop.
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

OFFICIAL_ARCHIVE = RemoteFile(
    url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
    filename="dtd-r1.0.1.tar.gz",
    md5="fff73e5086ae6bdbea199a49dfb8a4c1",
)
SPLITS = ("train", "val", "test")
PARTITIONS = range(1, 11)
LAYOUT = "images/<class>/ and labels/{train,val,test}<N>.txt"


def find_data_dir(folder: Path) -> Path | None:
    """The DTD folder (with images/ and labels/): `folder`, `folder/dtd` or torchvision's `folder/dtd/dtd`."""
    for candidate in (folder, folder / "dtd", folder / "dtd" / "dtd"):
        if (candidate / "images").is_dir() and (candidate / "labels").is_dir():
            return candidate
    return None


def list_items(data_dir: Path, split: str, partition: int) -> tuple[list[tuple[Path, int]], list[str]]:
    """((image file, class index) in split-file order, sorted class names)."""
    if split not in SPLITS:
        raise BlockMAEError(f"DTD has no split {split!r}; choose one of {', '.join(SPLITS)}")
    if partition not in PARTITIONS:
        raise BlockMAEError(f"DTD partition must be 1 to 10, got {partition}")
    classes = sorted(p.name for p in (data_dir / "images").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    split_file = data_dir / "labels" / f"{split}{partition}.txt"
    if not split_file.is_file():
        raise BlockMAEError(f"missing {split_file}; DTD expects labels/{{train,val,test}}1..10.txt: "
                            f"re-extract the official release or choose another partition")
    items = []
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        class_name, _, filename = entry.partition("/")
        if class_name not in index or not filename:
            raise BlockMAEError(f"{split_file}:{number}: {entry!r} is not <class>/<file> with a class of "
                                f"{data_dir / 'images'}; fix the line or restore the class folder")
        image = data_dir / "images" / class_name / filename
        if not image.is_file():
            raise BlockMAEError(f"{split_file}:{number}: image {image} does not exist; re-extract the official release")
        items.append((image, index[class_name]))
    return items, classes


def load_dtd(split: str, root: str | os.PathLike | None = None, image_size: int = 64, *, partition: int = 1,
             cache_dir: str | os.PathLike | None = None, resize: str = "center-crop", workers: int = 0,
             progress: bool = True) -> "ImageTensorDataset":
    """DTD `split` of `partition` at `image_size`, decoded once into a uint8 cache."""
    data_dir, cache_root = resolve_root("dtd", root, find_data_dir, LAYOUT, cache_dir)
    items, classes = list_items(data_dir, split, partition)
    return cached_image_dataset(items, split_cache_dir(cache_root, split, image_size, resize, variant=str(partition)),
                                image_size, classes, name=f"dtd-{split}{partition}", source=data_dir, resize=resize,
                                workers=workers, progress=progress)
