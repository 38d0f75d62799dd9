"""CIFAR-10 and CIFAR-100 through torchvision's datasets, served as ImageTensorDataset.

Files: the official python-pickle release, ``<root>/cifar-10-batches-py/`` and ``<root>/cifar-100-python/``
(as torchvision expects them; torchvision checks their md5). The archives are downloaded with
blockmae's verified, resumable download (torchvision's URL and md5) only when asked (`download=True`
or `blockmae data prepare`), and only if the files are missing. Class index = the release's label (fine labels for CIFAR-100), names from its meta file.
The arrays are already uint8, so there is no disk cache: images other than 32 px are resized in memory
(bicubic, antialiased).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100

from blockmae.data.base import ImageTensorDataset
from blockmae.data.download import RemoteFile
from blockmae.data.roots import obtain, resolve_root
from blockmae.errors import BlockMAEError

SPLITS = ("train", "test")
VARIANTS = ("cifar10", "cifar100")


def _dataset_class(variant: str):
    if variant not in VARIANTS:
        raise BlockMAEError(f"unknown CIFAR variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return CIFAR10 if variant == "cifar10" else CIFAR100


def official_archive(variant: str):
    """The RemoteFile of the official archive (torchvision's URL and md5)."""
    cls = _dataset_class(variant)
    return RemoteFile(url=cls.url, filename=cls.filename, md5=cls.tgz_md5)


def layout(variant: str) -> str:
    return f"{_dataset_class(variant).base_folder}/ of the python release"


def find_data_dir(variant: str, folder: Path) -> Path | None:
    """The folder holding `<base_folder>/`: `folder` itself, or its parent when given the batch folder."""
    base = _dataset_class(variant).base_folder
    for candidate in (folder, folder.parent):
        if (candidate / base).is_dir():
            return candidate
    return None


def load_cifar(variant: str, split: str, root: str | os.PathLike | None = None, image_size: int = 32, *,
               download: bool = False, progress: bool = True) -> "ImageTensorDataset":
    """CIFAR-10/100 `split` ("train" or "test") as uint8 tensors, resized to `image_size` if not 32."""
    if split not in SPLITS:
        raise BlockMAEError(f"{variant} has no split {split!r}; choose one of {', '.join(SPLITS)}")
    find = partial(find_data_dir, variant)
    expected = layout(variant)
    if download:  # only fetches what is missing
        try:
            resolve_root(variant, root, find, expected)
        except BlockMAEError:
            obtain(variant, root, None, find, expected, official=official_archive(variant), progress=progress)
    data_root, _ = resolve_root(variant, root, find, expected)
    try:
        # torchvision verifies every batch file's md5 against the official release here.
        ds = _dataset_class(variant)(str(data_root), train=split == "train", download=False)
    except RuntimeError as err:
        raise BlockMAEError(f"{variant} in {data_root / _dataset_class(variant).base_folder} is incomplete or "
                            f"corrupted ({err}); delete that folder and rerun `blockmae data prepare {variant} "
                            f"--root {root}`") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    if image_size != images.shape[-1]:
        chunks = []
        for batch in images.split(4096):
            resized = F.interpolate(batch.float(), size=(image_size, image_size), mode="bicubic", antialias=True,
                                    align_corners=False)
            chunks.append(resized.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(chunks)
    return ImageTensorDataset(images=images, labels=torch.as_tensor(ds.targets, dtype=torch.int64),
                              class_names=list(ds.classes), name=f"{variant}-{split}")
