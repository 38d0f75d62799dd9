"""The batched augmentation, the resumable tensor loader, the folder DataLoader path and `bench data`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from blockmae.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    normalize,
    resize_normalize,
    sample_crop_params,
)
from blockmae.data.base import ImageTensorDataset
from blockmae.data.loader import TensorBatchLoader, make_folder_dataloader
from blockmae.errors import BlockMAEError


def smooth_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) with structure at several scales (so resampling errors show)."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 8, 8, generator=g) * 255, size=(size, size), mode="bicubic")
    fine = torch.rand(n, 3, size, size, generator=g) * 60 - 30
    return (coarse + fine).clamp(0, 255).round().to(torch.uint8)


def reference_crop(image: torch.Tensor, top: int, left: int, h: int, w: int, size: int, flip: bool,
                   interpolation: str) -> torch.Tensor:
    """torchvision's resized_crop (+ hflip) of one uint8 image, as float 0..255."""
    mode = TF.InterpolationMode.BILINEAR if interpolation == "bilinear" else TF.InterpolationMode.BICUBIC
    out = TF.resized_crop(image.float(), top, left, h, w, [size, size], interpolation=mode, antialias=True)
    if flip:
        out = TF.horizontal_flip(out)
    return out.clamp(0, 255)


def to_pixels(normalised: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1)
    return (normalised * std + mean) * 255


# --------------------------------------------------------------------------- BatchAugment


def test_normalize_matches_definition() -> None:
    x = smooth_images(3, 16)
    expected = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = normalize(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    with pytest.raises(BlockMAEError, match="uint8"):
        normalize(x.float())


def test_output_shape_dtype_and_normalisation() -> None:
    x = smooth_images(8, 64)
    out = BatchAugment(32)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    pixels = to_pixels(out)
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    # Random crops of the same images keep roughly the images' mean colour.
    assert torch.allclose(pixels.mean(dim=(0, 2, 3)), x.float().mean(dim=(0, 2, 3)), atol=12)


@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
def test_crop_boxes_in_bounds_and_respect_scale_and_ratio(height: int, width: int) -> None:
    p = sample_crop_params(4000, height, width, generator=torch.Generator().manual_seed(1))
    assert (p.top >= 0).all() and (p.left >= 0).all()
    assert (p.top + p.height <= height).all() and (p.left + p.width <= width).all()
    area = (p.height * p.width).double() / (height * width)
    aspect = p.width.double() / p.height.double()
    # Rounding to whole pixels moves scale and ratio slightly past their nominal ranges.
    slack_area = 2.5 * (1 / p.height.min() + 1 / p.width.min()).item()
    assert area.min() >= 0.2 - slack_area and area.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - slack_area) and aspect.max() <= 4 / 3 * (1 + slack_area)
    # Both ends of the scale range are drawn (a 48x80 image fits at most 48x64 = 0.8 of its area
    # at ratio <= 4/3).
    assert area.min() < 0.25 and area.max() > (0.9 if height == width else 0.75)
    # Offsets are uniform over the free range: the mean relative offset is near 1/2.
    free = (height - p.height).double()
    rel = p.top[free > 0].double() / free[free > 0]
    assert abs(rel.mean().item() - 0.5) < 0.05
    assert 0.45 < p.flip.double().mean().item() < 0.55


def test_fallback_is_torchvision_centre_crop() -> None:
    # No candidate can be valid (every box is wider than the image): the centre crop with the
    # ratio clamped into range, as torchvision's RandomResizedCrop.get_params.
    p = sample_crop_params(16, 40, 40, scale=(1.0, 1.0), ratio=(2.0, 3.0), generator=torch.Generator().manual_seed(0))
    assert (p.width == 40).all() and (p.height == 20).all()
    assert (p.top == 10).all() and (p.left == 0).all()


def test_identity_crop_reproduces_normalize_and_resize() -> None:
    x = smooth_images(4, 32)
    identity = BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    torch.testing.assert_close(identity(x), normalize(x), atol=1e-4, rtol=0)
    identity_bicubic = BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, interpolation="bicubic")
    torch.testing.assert_close(identity_bicubic(x), normalize(x), atol=1e-4, rtol=0)
    upscale = BatchAugment(48, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    torch.testing.assert_close(upscale(x), resize_normalize(x, 48), atol=1e-4, rtol=0)


def test_flip_mirrors_the_unflipped_crop() -> None:
    x = smooth_images(6, 64)
    aug = BatchAugment(40)
    p = aug.sample_params(6, 64, 64, generator=torch.Generator().manual_seed(3))
    flipped = type(p)(p.top, p.left, p.height, p.width, torch.ones(6, dtype=torch.bool))
    plain = type(p)(p.top, p.left, p.height, p.width, torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(aug.apply(x, flipped), aug.apply(x, plain).flip(-1))
    assert not torch.allclose(aug.apply(x, flipped), aug.apply(x, plain))


@pytest.mark.parametrize("backend", ["matmul", "grid_sample"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [64, 96, 32])
def test_agrees_with_torchvision_resized_crop(backend: str, interpolation: str, size: int) -> None:
    """Mean absolute error against torchvision's resized_crop for the same boxes, in 0..255 units.

    matmul reproduces it (antialiased filter weights) for up- and downscaling. grid_sample matches
    exactly only for bilinear upscaling; its bicubic uses a = -0.75 instead of the antialiased
    filter's -0.5, and it does not antialias when shrinking.
    """
    x = smooth_images(6, 64, seed=5)
    aug = BatchAugment(size, interpolation=interpolation, backend=backend)
    p = aug.sample_params(6, 64, 64, generator=torch.Generator().manual_seed(7))
    out = to_pixels(aug.apply(x, p))
    ref = torch.stack([
        reference_crop(x[k], int(p.top[k]), int(p.left[k]), int(p.height[k]), int(p.width[k]), size, bool(p.flip[k]),
                       interpolation)
        for k in range(6)
    ])
    err = (out - ref).abs().mean().item()
    upscaling = bool((p.height <= size).all() and (p.width <= size).all())
    if backend == "matmul":
        assert err < 1e-3, err
    elif interpolation == "bilinear" and upscaling:
        assert err < 1e-3, err
    else:
        assert err < 6.0, err  # close, but measurably not the same filter


def test_deterministic_from_generator() -> None:
    x = smooth_images(5, 64)
    aug = BatchAugment(48)
    a = aug(x, generator=torch.Generator().manual_seed(11))
    b = aug(x, generator=torch.Generator().manual_seed(11))
    c = aug(x, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(BlockMAEError, match="interpolation"):
        BatchAugment(32, interpolation="nearest")
    with pytest.raises(BlockMAEError, match="scale"):
        BatchAugment(32, scale=(0.5, 0.2))


# --------------------------------------------------------------------------- TensorBatchLoader


def make_dataset(n: int = 50, size: int = 16) -> ImageTensorDataset:
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 3, size, size).to(torch.uint8).clone()
    return ImageTensorDataset(images=images, labels=torch.arange(n) % 7, class_names=[str(c) for c in range(7)],
                              name="toy")


def batch_ids(images: torch.Tensor) -> list[int]:
    """The dataset index each unaugmented image encodes in its pixel value."""
    return to_pixels(images)[:, 0, 0, 0].round().long().tolist()


def test_epoch_covers_dataset_and_labels_follow_images() -> None:
    ds = make_dataset(50)
    loader = TensorBatchLoader(ds, batch_size=8, device="cpu", augment=None, drop_last=False, seed=3)
    assert len(loader) == 7
    seen = []
    for images, labels in loader:
        ids = batch_ids(images)
        assert labels.tolist() == [i % 7 for i in ids]
        seen += ids
    assert sorted(seen) == list(range(50)) and seen != list(range(50))
    train = TensorBatchLoader(ds, batch_size=8, device="cpu", augment=None, drop_last=True, seed=3)
    assert len(train) == 6 and sum(imgs.shape[0] for imgs, _ in train) == 48


def test_set_epoch_changes_order_and_is_reproducible() -> None:
    ds = make_dataset(40)
    loader = TensorBatchLoader(ds, batch_size=10, device="cpu", augment=None, seed=0)
    order0 = loader.indices().tolist()
    loader.set_epoch(1)
    order1 = loader.indices().tolist()
    assert order0 != order1 and sorted(order0) == sorted(order1)
    loader.set_epoch(0)
    assert loader.indices().tolist() == order0
    other_seed = TensorBatchLoader(ds, batch_size=10, device="cpu", augment=None, seed=1)
    assert other_seed.indices().tolist() != order0


def test_iter_from_equals_skipping_batches() -> None:
    ds = ImageTensorDataset(images=smooth_images(60, 24), labels=torch.arange(60), class_names=["x"] * 60)
    aug = BatchAugment(16)
    loader = TensorBatchLoader(ds, batch_size=8, device="cpu", augment=aug, seed=5)
    loader.set_epoch(2)
    full = list(loader)
    resumed = TensorBatchLoader(ds, batch_size=8, device="cpu", augment=aug, seed=5)
    resumed.set_epoch(2)
    tail = list(resumed.iter_from(3))
    assert len(full) == 7 and len(tail) == 4
    for (a, la), (b, lb) in zip(full[3:], tail):
        assert torch.equal(a, b) and torch.equal(la, lb)
    # Another epoch differs in both order and augmentation.
    resumed.set_epoch(3)
    assert not torch.equal(next(iter(resumed))[0], full[0][0])
    with pytest.raises(BlockMAEError, match="start_batch"):
        loader.iter_from(8)


def test_rank_shards_are_disjoint_and_cover_the_epoch() -> None:
    ds = make_dataset(48)
    shards = []
    for rank in range(2):
        loader = TensorBatchLoader(ds, batch_size=6, device="cpu", augment=None, seed=9, rank=rank, world_size=2)
        loader.set_epoch(4)
        assert len(loader) == 4
        shards.append([i for images, _ in loader for i in batch_ids(images)])
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(48))


def test_augmented_batches_do_not_depend_on_the_number_of_ranks() -> None:
    """2 ranks x batch 6 see exactly the augmented images of 1 rank x batch 12 (same crops and flips)."""
    aug_ds = ImageTensorDataset(images=smooth_images(48, 24), labels=torch.arange(48), class_names=["x"] * 48)
    single = TensorBatchLoader(aug_ds, 12, "cpu", BatchAugment(16), seed=3)
    ranks = [TensorBatchLoader(aug_ds, 6, "cpu", BatchAugment(16), seed=3, rank=r, world_size=2) for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    for (images, labels), *shards in zip(single, *ranks):
        for rank, (shard_images, shard_labels) in enumerate(shards):
            assert torch.equal(shard_labels, labels[rank::2])
            assert torch.equal(shard_images, images[rank::2])
    # The two ranks' crops of one global batch are different draws, not copies.
    assert not torch.equal(next(iter(ranks[0]))[0], next(iter(ranks[1]))[0])


def test_eval_mode_preserves_order_and_resizes() -> None:
    ds = make_dataset(23, size=16)
    loader = TensorBatchLoader(ds, batch_size=5, device="cpu", augment=None, shuffle=False, drop_last=False,
                               image_size=32)
    batches = list(loader)
    assert [b.shape[0] for b, _ in batches] == [5, 5, 5, 5, 3]
    assert batches[0][0].shape == (5, 3, 32, 32)
    assert [i for images, _ in batches for i in batch_ids(images)] == list(range(23))


def test_loader_from_memory_mapped_tensor(tmp_path) -> None:
    import numpy as np

    images = smooth_images(30, 16)
    path = tmp_path / "images.u8"
    images.numpy().tofile(path)
    mapped = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(30, 3, 16, 16)))
    ds = ImageTensorDataset(images=mapped, labels=torch.arange(30), class_names=["x"] * 30)
    in_memory = ImageTensorDataset(images=images, labels=torch.arange(30), class_names=["x"] * 30)
    aug = BatchAugment(16)
    for (a, la), (b, lb) in zip(TensorBatchLoader(ds, 7, "cpu", aug, resident=False),
                                TensorBatchLoader(in_memory, 7, "cpu", aug, resident=True)):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_loader_rejects_impossible_settings() -> None:
    with pytest.raises(BlockMAEError, match="fewer than one batch"):
        TensorBatchLoader(make_dataset(10), batch_size=16, device="cpu", augment=None)
    with pytest.raises(BlockMAEError, match="rank"):
        TensorBatchLoader(make_dataset(10), batch_size=2, device="cpu", augment=None, rank=2, world_size=2)


# --------------------------------------------------------------------------- folder path and bench


def write_folder(root, classes: int = 3, per_class: int = 4, size: int = 40) -> None:
    images = smooth_images(classes * per_class, size).permute(0, 2, 3, 1).numpy()
    for k in range(classes * per_class):
        folder = root / f"c{k % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[k]).save(folder / f"{k}.jpg", quality=90)


def test_make_folder_dataloader(tmp_path) -> None:
    write_folder(tmp_path)
    train = make_folder_dataloader(tmp_path, image_size=24, batch_size=5, workers=0)
    batches = list(train)
    assert len(batches) == 2  # 12 images, drop_last
    images, labels = batches[0]
    assert images.shape == (5, 3, 24, 24) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    pixels = to_pixels(images)
    assert pixels.min() > -1 and pixels.max() < 256
    evaluation = make_folder_dataloader(tmp_path, image_size=24, batch_size=5, workers=0, train=False)
    assert [b.shape[0] for b, _ in evaluation] == [5, 5, 2]
    with pytest.raises(BlockMAEError, match="does not exist"):
        make_folder_dataloader(tmp_path / "missing", 24, 5, 0)


def test_folder_batches_do_not_depend_on_workers_ranks_or_skipped_batches(tmp_path) -> None:
    """Order and crops are seeded per image: 2 workers = 0 workers, starting at batch k = batches k...,
    and rank r of 2 with batch 3 gets rows r::2 of the single process's batch of 6."""
    write_folder(tmp_path, per_class=8)  # 24 images

    def batches(batch_size: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(make_folder_dataloader(tmp_path, image_size=16, batch_size=batch_size, seed=7, **kwargs))

    single = batches(6, workers=0)
    assert len(single) == 4
    for (a, la), (b, lb) in zip(single, batches(6, workers=2), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, _), (b, _) in zip(single[2:], batches(6, workers=0, start_batch=2), strict=True):
        assert torch.equal(a, b)
    for rank in (0, 1):
        shard = batches(3, workers=0, rank=rank, world_size=2)
        assert len(shard) == 4
        for (whole, labels), (part, part_labels) in zip(single, shard, strict=True):
            assert torch.equal(whole[rank::2], part) and torch.equal(labels[rank::2], part_labels)
    # The crops are random (two seeds differ) and the caller's RNG stream is left alone.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    other = list(make_folder_dataloader(tmp_path, image_size=16, batch_size=6, seed=8, workers=0))
    assert torch.equal(torch.rand(3), expected)
    assert not torch.equal(other[0][0], single[0][0])
    with pytest.raises(BlockMAEError, match="fewer than one batch of 20 per rank over 2"):
        make_folder_dataloader(tmp_path, 16, 20, 0, world_size=2, rank=1)
    with pytest.raises(BlockMAEError, match="rank 2 is outside"):
        make_folder_dataloader(tmp_path, 16, 2, 0, world_size=2, rank=2)


def test_bench_data_speedup_is_the_ratio_of_its_printed_rates() -> None:
    """Tiny sizes (seconds); the last line's ratio is the best cached rate over the ImageFolder rate, both
    printed above it, and the best setting named is the one with that rate."""
    import re

    result = subprocess.run(
        [sys.executable, "-m", "blockmae", "bench", "data", "--images", "48", "--batch-size", "16", "--workers", "1",
         "--image-size", "32"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(re.fullmatch(r"cache build: \d+\.\d s \([\d,]+ img/s, 48 images\)", line) for line in lines)

    def rate(line: str) -> float:
        return float(line.rsplit(": ", 1)[1].split(" img/s")[0].replace(",", ""))

    folder = rate(next(line for line in lines if line.startswith("imagefolder_pil_dataloader (1 workers): ")))
    cached = {int(re.search(r"\((\d+) threads?\)", line).group(1)): rate(line)
              for line in lines if line.startswith("cached_batch_augment (")}
    assert set(cached) == {1}  # one worker: the cached path is timed with 1 thread only
    best_threads = max(cached, key=cached.get)
    assert f"best cached setting: {best_threads} thread" in lines[-2]
    ratio = float(re.fullmatch(r"speedup_vs_imagefolder: (\d+\.\d+)", lines[-1]).group(1))
    expected = cached[best_threads] / folder
    assert abs(ratio - expected) <= 0.01 + 0.01 * expected, (ratio, expected)


def test_bench_data_bad_root_is_one_line_error(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "blockmae", "bench", "data", "--root", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("blockmae: error: --root") and "Traceback" not in result.stderr


def test_window_matrices_table_equals_direct_evaluation(monkeypatch) -> None:
    import blockmae.data.augment as augment

    p = sample_crop_params(32, 40, 40, generator=torch.Generator().manual_seed(2))
    for interpolation in ("bilinear", "bicubic"):
        table = augment.window_matrices(p.left, p.width, p.flip, 40, 24, interpolation, torch.device("cpu"))
        monkeypatch.setattr(augment, "_MAX_TABLE_BYTES", 0)  # as for large images
        direct = augment.window_matrices(p.left, p.width, p.flip, 40, 24, interpolation, torch.device("cpu"))
        monkeypatch.undo()
        torch.testing.assert_close(table, direct)
        torch.testing.assert_close(table.sum(-1), torch.ones(32, 24))


def test_iteration_keeps_the_epoch_it_started_with() -> None:
    ds = ImageTensorDataset(images=smooth_images(32, 16), labels=torch.arange(32), class_names=["x"] * 32)
    loader = TensorBatchLoader(ds, batch_size=8, device="cpu", augment=BatchAugment(16), seed=1)
    expected = [x for x, _ in loader]
    batches = iter(loader)
    loader.set_epoch(1)  # too late for the iteration already started
    assert all(torch.equal(x, e) for (x, _), e in zip(batches, expected))


def test_one_normalisation_for_uint8_and_unit_float_images():
    """The diagnostics' float path (filter in [0, 1], then normalise) gives the encoder what the data pipeline
    gives it from uint8 images."""
    from blockmae.data.augment import normalize_unit, resize_normalize, unit_float

    batch = torch.randint(0, 256, (2, 3, 40, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for size in (40, 32):
        unit = unit_float(batch, size)
        assert unit.min() >= 0 and unit.max() <= 1
        assert torch.allclose(normalize_unit(unit), resize_normalize(batch, size), atol=1e-5)
    assert torch.equal(unit_float(unit_float(batch, 40), 40), unit_float(batch, 40))  # floats taken as [0, 1]
