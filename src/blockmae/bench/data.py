"""`blockmae bench data`: one epoch through ImageFolder + PIL + DataLoader vs the uint8 cache + BatchAugment.

Both paths apply the same augmentation: RandomResizedCrop(scale 0.2..1, ratio 3/4..4/3) with the same
antialiased interpolation, horizontal flip, ImageNet normalisation, and deliver the batch on the
training device. (The PIL path rounds the crop to uint8 before normalising; the cached path does not.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from tqdm.auto import tqdm

from blockmae.data.augment import BatchAugment
from blockmae.data.cache import build_image_cache
from blockmae.data.loader import TensorBatchLoader, make_folder_dataloader
from blockmae.config import number
from blockmae.errors import BlockMAEError

NUM_CLASSES = 200  # Tiny-ImageNet's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=number(int, ">=1"), default=100_000,
                        help="images to generate when no --root is given (default 100000, Tiny-ImageNet's train size)")
    parser.add_argument("--root", type=Path, default=None,
                        help="a real <class>/<image> folder to time instead of generated JPEGs")
    parser.add_argument("--batch-size", type=number(int, ">=1"),
                        default=256, help="batch size of both paths (default 256)")
    parser.add_argument("--workers", type=number(int, ">=0"), default=2,
                        help="DataLoader workers of the ImageFolder path, and processes for generation/caching (default 2)")
    parser.add_argument("--image-size", type=number(int, ">=1"), default=64, help="training resolution (default 64)")
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic"), default="bilinear",
                        help="resize filter of both paths (default bilinear)")
    parser.add_argument("--device", default=None, help="device of the batches (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=number(int, ">=0"), default=0)


def _write_jpegs(job: tuple[str, int, int, int, int]) -> int:
    """Worker: write images start..stop of a generated set (smooth random colour fields + grain)."""
    root, start, stop, size, seed = job
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed * 1_000_003 + start)
    n = stop - start
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 255
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    grain = torch.randn(n, 3, size, size, generator=g) * 12
    pixels = (smooth + grain).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k in range(n):
        index = start + k
        path = os.path.join(root, f"class_{index % NUM_CLASSES:03d}", f"img_{index:06d}.JPEG")
        Image.fromarray(np.ascontiguousarray(pixels[k])).save(path, quality=90)
    return n


def generate_jpeg_folder(root: Path, num_images: int, image_size: int = 64, workers: int = 2, seed: int = 0) -> None:
    """`num_images` image_size^2 JPEGs (quality 90) spread over 200 class folders of `root`."""
    for c in range(min(NUM_CLASSES, num_images)):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(str(root), s, min(s + chunk, num_images), image_size, seed) for s in range(0, num_images, chunk)]
    with tqdm(total=num_images, unit="img", desc="generating JPEGs", file=sys.stderr, disable=None) as bar:
        if workers > 0:
            with ProcessPoolExecutor(workers) as pool:
                for done in pool.map(_write_jpegs, jobs):
                    bar.update(done)
        else:
            for job in jobs:
                bar.update(_write_jpegs(job))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_epoch(batches, total: int, desc: str, device) -> float:
    """Images per second of one pass over `batches` (each moved to `device`, as training would)."""
    seen = 0
    checksum = 0.0
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc=desc, file=sys.stderr, disable=None) as bar:
        for images, _labels in batches:
            images = images.to(device, non_blocking=True)
            checksum += float(images[0, 0, 0, 0])  # touch the batch so nothing is skipped lazily
            seen += images.shape[0]
            bar.update(images.shape[0])
    _sync(device)
    elapsed = time.perf_counter() - start
    if seen != total:
        raise RuntimeError(f"{desc}: saw {seen} images, expected {total}")
    return seen / elapsed


def run(args: argparse.Namespace) -> int:
    if args.root is not None and not args.root.is_dir():
        raise BlockMAEError(f"--root {args.root} is not a directory; pass a <class>/<image> folder")

    if args.images <= 0 or args.batch_size <= 0 or args.workers < 0 or args.image_size <= 0:
        raise BlockMAEError("--images, --batch-size and --image-size must be positive and --workers non-negative")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockMAEError(f"--device {args.device} asked for, but CUDA is not available; use --device cpu")
    print(f"device: {device}  torch threads: {torch.get_num_threads()}  batch size: {args.batch_size}  "
          f"workers: {args.workers}  interpolation: {args.interpolation}")

    with tempfile.TemporaryDirectory(prefix="blockmae-bench-data-") as tmp:
        if args.root is None:
            root = Path(tmp) / "images"
            start = time.perf_counter()
            generate_jpeg_folder(root, args.images, args.image_size, args.workers, args.seed)
            print(f"generated {args.images} {args.image_size}x{args.image_size} JPEGs in "
                  f"{time.perf_counter() - start:.1f} s")
        else:
            root = args.root

        folder = datasets.ImageFolder(str(root))
        num_images = len(folder.samples)
        if num_images == 0:
            raise BlockMAEError(f"no images found under {root}; expected <class>/<image> files")

        start = time.perf_counter()
        cached = build_image_cache(folder.samples, Path(tmp) / "cache", args.image_size, folder.classes,
                                   name="bench", source=root, workers=args.workers)
        build_s = time.perf_counter() - start
        print(f"cache build: {build_s:.1f} s ({num_images / build_s:,.0f} img/s, {num_images} images)")

        imagefolder = make_folder_dataloader(root, args.image_size, args.batch_size, workers=args.workers,
                                             train=True, drop_last=False, interpolation=args.interpolation,
                                             seed=args.seed, pin_memory=device.type == "cuda")
        augment = BatchAugment(args.image_size, interpolation=args.interpolation)
        loader = TensorBatchLoader(cached, args.batch_size, device, augment, drop_last=False, seed=args.seed)

        # Warm the cached path's kernels (and page in the memory map) so one-off costs are not timed.
        for _ in zip(range(2), loader):
            pass
        # On the CPU the cached path is timed with 1 intra-op thread and with as many threads as the
        # peer has workers, before and after the peer's epoch: on a shared machine multi-threaded
        # kernels can lose badly to contention, and the load drifts while the peer runs.
        thread_counts = [1, max(1, args.workers)] if device.type == "cpu" else [torch.get_num_threads()]
        cached_rates: dict[int, float] = {}
        previous_threads = torch.get_num_threads()
        try:
            torch.set_num_threads(thread_counts[0])
            cached_rates[thread_counts[0]] = _time_epoch(loader, num_images, "cached epoch", device)
            torch.set_num_threads(previous_threads)
            folder_rate = _time_epoch(imagefolder, num_images, "imagefolder epoch", device)
            for n in thread_counts[1:]:
                torch.set_num_threads(n)
                cached_rates[n] = _time_epoch(loader, num_images, f"cached epoch ({n} threads)", device)
        finally:
            torch.set_num_threads(previous_threads)

    print(f"imagefolder_pil_dataloader ({args.workers} workers): {folder_rate:,.0f} img/s")
    for n, rate in cached_rates.items():
        print(f"cached_batch_augment ({n} thread{'s' if n > 1 else ''}): {rate:,.0f} img/s")
    best_threads, best = max(cached_rates.items(), key=lambda item: item[1])
    with_build = num_images / (build_s + num_images / best)
    print(f"cached first epoch including the cache build: {with_build:,.0f} img/s "
          f"({with_build / folder_rate:.2f}x imagefolder)")
    print(f"best cached setting: {best_threads} thread{'s' if best_threads > 1 else ''}")
    print(f"speedup_vs_imagefolder: {best / folder_rate:.2f}")
    return 0
