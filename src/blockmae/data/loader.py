"""Batches of a uint8 ImageTensorDataset, augmented on the training device.

Every epoch's permutation is a pure function of (seed, epoch) and is the same on every DDP rank;
rank r takes every world_size-th index of it. Each global batch's augmentation is drawn from a
generator seeded by (seed, epoch, batch index) and every rank takes its rows, so an image is cropped
alike on any number of ranks. So `iter_from(k)` yields exactly the batches an uninterrupted epoch
yields after its first k, and resuming a run needs only (epoch, batch).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torchvision import datasets, transforms

from blockmae.data.augment import (
    IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, BatchAugment, CropParams, resize_normalize,
)
from blockmae.data.base import ImageTensorDataset
from blockmae.errors import BlockMAEError

if TYPE_CHECKING:  # torchvision is imported only by the folder path
    from torchvision.datasets import ImageFolder

# Distinct streams of the seed tree, so the permutation and the augmentation never share draws.
_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (via numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def rank_rows(global_rows: int, rank: int, world_size: int) -> slice:
    """The rows of a global (all-rank) batch that rank `rank` holds: r, r + W, r + 2W, ... (as rank_indices
    deals them), so per-sample randomness drawn for the global batch follows each sample on any number
    of ranks."""
    return slice(rank, global_rows, world_size)


def rank_indices(n: int, rank: int, world_size: int, shuffle: bool, drop_last: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """Rank `rank`'s dataset indices of one epoch, in order: every world_size-th index of a permutation drawn
    from `generator` (or of 0..n-1). Rank r holds global positions r, r + W, ... of each global batch, so
    the ranks' k-th batches together are the single process's k-th batch. drop_last also drops the tail
    that cannot be split evenly, so every rank gets n // world_size indices."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if drop_last:
        order = order[: n // world_size * world_size]
    return order[rank::world_size]


class TensorBatchLoader:
    """Iterate `(images float normalised on device, labels on device)` batches of `dataset`.

    With `augment` (training) each batch is randomly cropped/flipped by it; with `augment=None`
    (evaluation) images are only resized to `image_size` (when given and different) and normalised.
    `resident=True` (the default on CUDA) copies the whole uint8 dataset to `device` once;
    otherwise batches are gathered from the (possibly memory-mapped) CPU tensor.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        augment: BatchAugment | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        resident: bool | None = None,
        image_size: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise BlockMAEError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not (0 <= rank < world_size):
            raise BlockMAEError(f"rank {rank} is outside world_size {world_size}")
        if seed < 0:
            raise BlockMAEError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.image_size = image_size if image_size is not None else (augment.image_size if augment else None)
        self.epoch = 0
        if resident is None:
            resident = self.device.type == "cuda"
        self.resident = resident
        n = len(dataset)
        # drop_last also drops the tail that cannot be split evenly over the ranks, so every rank
        # runs the same number of steps; evaluation keeps every image (shards may differ by one).
        self._per_rank = n // world_size if drop_last else len(range(rank, n, world_size))
        if drop_last and self._per_rank < self.batch_size:
            raise BlockMAEError(
                f"dataset {dataset.name or '(unnamed)'} has {n} images, fewer than one batch of {batch_size} "
                f"per rank over {world_size} rank(s); lower the batch size"
            )
        if resident:
            self._images = dataset.images.to(self.device)
            self._labels = dataset.labels.to(self.device)
        else:
            self._images = dataset.images
            self._labels = dataset.labels
        self._pin = self.device.type == "cuda" and not resident

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        if epoch < 0:
            raise BlockMAEError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self._per_rank // self.batch_size
        return -(-self._per_rank // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in iteration order (int64, CPU)."""
        return rank_indices(len(self.dataset), self.rank, self.world_size, self.shuffle, self.drop_last,
                            _generator(self.seed, _PERMUTATION_STREAM, self.epoch))

    def batch_generator(self, batch_index: int, epoch: int | None = None) -> torch.Generator:
        """The generator that draws the augmentation of global batch `batch_index` of `epoch` (default: current).

        It does not depend on the rank: the parameters are drawn for the whole global batch and each rank
        takes its rows, so an image is cropped the same way whatever the number of ranks.
        """
        epoch = self.epoch if epoch is None else epoch
        return _generator(self.seed, _AUGMENT_STREAM, epoch, batch_index)

    def augment_params(self, batch_index: int, num_images: int, height: int, width: int,
                       epoch: int | None = None) -> CropParams:
        """This rank's crop/flip parameters for batch `batch_index`: its rows of the global batch's draw."""
        assert self.augment is not None
        global_params = self.augment.sample_params(
            self.batch_size * self.world_size, height, width, self.batch_generator(batch_index, epoch))
        rows = rank_rows(self.world_size * num_images, self.rank, self.world_size)
        return CropParams(*(t[rows] for t in (global_params.top, global_params.left, global_params.height,
                                              global_params.width, global_params.flip)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the current epoch's batches from `start_batch` on (resume inside an epoch)."""
        if not (0 <= start_batch <= len(self)):
            raise BlockMAEError(f"start_batch {start_batch} is outside the epoch's {len(self)} batches")
        # The epoch is fixed now: a set_epoch() during the iteration must not mix two epochs.
        return self._batches(start_batch, self.epoch, self.indices())

    def _batches(
        self, start_batch: int, epoch: int, order: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            images, labels = self._gather(idx)
            if self.augment is not None:
                params = self.augment_params(b, images.shape[0], images.shape[2], images.shape[3], epoch)
                x = self.augment.apply(images, params)
            else:
                x = resize_normalize(images, self.image_size or images.shape[-1])
            yield x, labels

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            idx = idx.to(self.device)
            return self._images.index_select(0, idx), self._labels.index_select(0, idx)
        # Sorted reads are kinder to a memory-mapped file; restore the permutation order after.
        sorted_idx, order = idx.sort()
        images = self._images[sorted_idx][order.argsort()]
        labels = self._labels[idx]
        if self._pin:
            images = images.pin_memory()
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class _SeededImageFolder(torch.utils.data.Dataset):
    """An ImageFolder whose random transform of image i is drawn from a generator seeded by (seed, i).

    So an image is cropped alike whatever the number of workers or ranks, and a resumed epoch can skip
    batches without reading them (the crops of the batches after do not depend on them)."""

    def __init__(self, folder: ImageFolder, seed: int) -> None:
        self.folder, self.seed = folder, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        # torchvision's random transforms draw from the global CPU generator, timm's RandAugment also from
        # `random` and numpy: seed them for this image and restore them after, so the caller's streams are
        # untouched (4 us for torch; torch.manual_seed alone took 270 us).
        rng = torch.default_generator
        state = rng.get_state()
        key = (self.seed * 1_000_003 + index) % 2**63
        rng.manual_seed(key)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(key)
        np.random.seed(key % 2**32)
        try:
            return self.folder.transform(image), label
        finally:
            rng.set_state(state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def image_folder(
    root: str | Path,
    image_size: int,
    train: bool = True,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    interpolation: str = "bilinear",
) -> ImageFolder:
    """A torchvision ImageFolder over a <class>/<image> tree, with the training or evaluation transform.

    Training: RandomResizedCrop(image_size, scale, ratio) + RandomHorizontalFlip, the same augmentation as
    BatchAugment; evaluation: Resize(image_size) + CenterCrop. Both end with ToTensor + Normalize(ImageNet
    mean/std). Scanning a large tree takes a while: build it once and hand it to `folder_loader` per epoch.
    """
    root = Path(root)
    if not root.is_dir():
        raise BlockMAEError(f"image folder {root} does not exist; pass a directory of <class>/<image> files")
    if interpolation not in INTERPOLATIONS:
        raise BlockMAEError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    mode = transforms.InterpolationMode(interpolation)
    if train:
        steps = [transforms.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=mode)]
        if hflip:
            steps.append(transforms.RandomHorizontalFlip())
    else:
        steps = [transforms.Resize(image_size, interpolation=mode), transforms.CenterCrop(image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    try:
        return datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as err:
        raise BlockMAEError(f"cannot read image folder {root}: {err}") from None


def folder_loader(
    folder: ImageFolder,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    seed: int = 0,
    workers: int = 2,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches (float images, int64 labels, on the CPU) of an `image_folder`.

    The order is a permutation seeded by `seed`, each image's crop is seeded by (seed, image index), and
    rank r of `world_size` takes every world_size-th index (batches of `batch_size` per rank), so DDP
    ranks together see exactly the single process's batches. `start_batch` skips batches unread.
    """
    if world_size <= 0 or not (0 <= rank < world_size):
        raise BlockMAEError(f"rank {rank} is outside world_size {world_size}")
    if drop_last and len(folder) // world_size < batch_size:
        raise BlockMAEError(f"image folder {folder.root} has {len(folder)} images: fewer than one batch of "
                            f"{batch_size} per rank over {world_size} rank(s); lower the batch size")
    order = rank_indices(len(folder), rank, world_size, shuffle, drop_last, torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(
        _SeededImageFolder(folder, seed),
        batch_size=batch_size,
        sampler=order[start_batch * batch_size:].tolist(),  # a list is a valid sampler: read in this order
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # workers' base seed: not from the caller's RNG
    )


def make_folder_dataloader(
    root: str | Path,
    image_size: int,
    batch_size: int,
    workers: int = 2,
    train: bool = True,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    interpolation: str = "bilinear",
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    seed: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
) -> torch.utils.data.DataLoader:
    """The classic path for class-folder trees too big for memory: `image_folder` + `folder_loader`
    (shuffled and dropping the last partial batch when training, unless told otherwise)."""
    folder = image_folder(root, image_size, train, scale, ratio, hflip, interpolation)
    return folder_loader(folder, batch_size, train if shuffle is None else shuffle,
                         train if drop_last is None else drop_last, seed, workers, pin_memory, rank, world_size,
                         start_batch)
