"""Datasets, caches and the batched on-device input pipeline.

`load_dataset(name, split, root, image_size, **options)` is the one entry point; each dataset lives in
its own module, imported only when asked for (this package stays light to import).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

import torch
from blockmae.data.mvh import DATASETS as MVH_DATASETS, PREFIX as MVH_PREFIX

from blockmae.data.base import ImageTensorDataset
from blockmae.errors import BlockMAEError

# name -> (module, loader function); modules are imported only when their dataset is asked for.
_LOADERS = {
    "shapetex": ("blockmae.data.shapetex", "load_shapetex"),
    "tiny-imagenet": ("blockmae.data.tiny_imagenet", "load_tiny_imagenet"),
    "cifar10": ("blockmae.data.cifar", "load_cifar"),
    "cifar100": ("blockmae.data.cifar", "load_cifar"),
    "dtd": ("blockmae.data.dtd", "load_dtd"),
    "folder": ("blockmae.data.folders", "load_folder"),
    "cue-conflict": ("blockmae.data.cue_conflict", "load_cue_conflict"),
}
# model-vs-human's 17 datasets as mvh-<name> (blockmae.data.mvh imports no torch)
_LOADERS.update({MVH_PREFIX + n: ("blockmae.data.mvh", "load_mvh") for n in MVH_DATASETS})
DATASETS = tuple(_LOADERS)


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, image_size: int = 64,
                 **options: Any) -> "ImageTensorDataset":
    """Load split `split` of dataset `name` as uint8 tensors of `image_size` pixels.

    Options by dataset: shapetex (num_images, texture_correlation, seed, cache_dir); tiny-imagenet, dtd,
    folder, cue-conflict (cache_dir, resize, workers, progress; dtd: partition; folder: mapping,
    target_wnids, skip_unmapped; cue-conflict: keep_agreeing); cifar10/cifar100 (download, progress);
    mvh-<name>, model-vs-human's datasets (cache_dir, resize, workers, progress).
    `root` is a folder prepared by `blockmae data prepare` or the dataset's own folder (see docs/data.md).
    """
    if name not in _LOADERS:
        raise BlockMAEError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    module, function = _LOADERS[name]
    loader = getattr(importlib.import_module(module), function)
    arguments = {"split": split, "image_size": image_size}
    if name == "shapetex":  # generated, not read: its root is where the generated images are cached
        if root is not None:
            arguments["cache_dir"] = root
    else:
        arguments["root"] = root
    if name in ("cifar10", "cifar100") or name.startswith(MVH_PREFIX):
        arguments["variant"] = name
    accepted = inspect.signature(loader).parameters
    for key in options:
        if key not in accepted or key in arguments:
            valid = sorted(set(accepted) - set(arguments))
            raise BlockMAEError(f"dataset {name!r} has no option {key!r}; valid options: {', '.join(valid)}")
    return loader(**arguments, **options)


def subset(dataset: "ImageTensorDataset", num_images: int | None, seed: int = 0) -> "ImageTensorDataset":
    """A seeded, class-balanced subset of `num_images` images (kept in dataset order), or `dataset` itself.

    Every class gets the same count, as far as its images allow (a class with fewer gives all it has and
    the others share the rest); the one-image remainders go to classes drawn with `seed`. The same seed
    gives the same images.
    """
    if num_images is None or num_images >= len(dataset):
        return dataset
    if num_images < 1:
        raise BlockMAEError(f"the number of images must be positive, got {num_images}")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)
    quota = torch.zeros_like(counts)
    active, remaining = torch.nonzero(counts).flatten(), num_images
    while len(active):
        share = remaining // len(active)
        small = counts[active] <= share
        if not small.any():  # every class left can give `share`; the remainder goes to drawn classes
            quota[active] = share
            quota[active[torch.randperm(len(active), generator=generator)[: remaining - share * len(active)]]] += 1
            break
        quota[active[small]] = counts[active[small]]
        remaining -= int(counts[active[small]].sum())
        active = active[~small]
    keep = torch.cat([members[torch.randperm(len(members), generator=generator)[: int(quota[c])]]
                      for c in range(len(counts)) if len(members := torch.nonzero(dataset.labels == c).flatten())])
    keep = keep.sort().values
    return ImageTensorDataset(dataset.images[keep], dataset.labels[keep], list(dataset.class_names),
                              name=f"{dataset.name}-subset{num_images}-seed{seed}",
                              extra_labels={k: v[keep] for k, v in dataset.extra_labels.items()})
