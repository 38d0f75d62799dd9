"""The uint8 image cache: decode a list of image files once, serve them as a memory-mapped tensor.

A cache is a folder holding

- ``images.u8``: the raw bytes of a C-contiguous uint8 array (N, 3, H, W),
- ``labels.i64`` and one ``extra-<name>.i64`` per extra label: int64 (N,),
- ``meta.json``: the build parameters (format version, dataset name, source folder, image size, resize
  policy, class names, number of images, per-class counts, a fingerprint of the file list).

It is written into a temporary folder and renamed into place, so a cache is either complete or absent.
Loading maps the file (nothing is read until used) and compares ``meta.json`` with the parameters the
caller expects: a cache built with other parameters is never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from blockmae.data.base import ImageTensorDataset
from blockmae.errors import BlockMAEError
from blockmae.fileio import replace_dir

CACHE_VERSION = 1
RESIZE_POLICIES = ("center-crop", "stretch")
# Build parameters that must agree for a cache to be reused (the rest of meta.json is informational).
CHECKED_KEYS = ("version", "name", "source", "image_size", "resize", "class_names", "num_images", "files_sha1",
                "extra_labels")
_META = "meta.json"


def decode_image(path: str | os.PathLike, image_size: int, resize: str = "center-crop") -> np.ndarray:
    """One image file -> uint8 (3, image_size, image_size) RGB; BlockMAEError naming the file if unreadable.

    ``center-crop`` scales the shorter side to `image_size` and keeps the centre (aspect preserved);
    ``stretch`` resizes both sides to `image_size`. Grayscale, palette and RGBA images become RGB.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode fully here, so truncation is detected now and named
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BlockMAEError(f"cannot read image {path}: {err}; replace or delete the file and rerun") from None
    if rgb.size != (image_size, image_size):
        if resize == "center-crop":
            rgb = ImageOps.fit(rgb, (image_size, image_size), method=Image.Resampling.BICUBIC)
        elif resize == "stretch":
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        else:
            raise BlockMAEError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    return np.array(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _decode_into(images_file: str, shape: tuple[int, ...], start: int, paths: Sequence[str], image_size: int,
                 resize: str) -> int:
    """Worker: decode `paths` into rows start.. of the memory-mapped image file."""
    out = np.memmap(images_file, dtype=np.uint8, mode="r+", shape=shape)
    for offset, path in enumerate(paths):
        out[start + offset] = decode_image(path, image_size, resize)
    out.flush()
    return len(paths)


def files_fingerprint(paths: Sequence[str | os.PathLike], labels: Sequence[int], source: str | os.PathLike) -> str:
    """sha1 of the (file relative to `source`, label) list: changes when files are added, removed or relabelled."""
    h = hashlib.sha1()
    for path, label in zip(paths, labels):
        h.update(f"{os.path.relpath(path, source)}\t{int(label)}\n".encode())
    return h.hexdigest()


def cache_params(items: Sequence[tuple[str | os.PathLike, int]], image_size: int, class_names: Sequence[str], *,
                 name: str, source: str | os.PathLike, resize: str = "center-crop",
                 extra_labels: Mapping[str, Sequence[int]] | None = None) -> dict:
    """The parameters a cache of `items` is built with (what meta.json must match)."""
    if resize not in RESIZE_POLICIES:
        raise BlockMAEError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    paths = [p for p, _ in items]
    labels = [int(label) for _, label in items]
    return {
        "version": CACHE_VERSION,
        "name": name,
        "source": str(Path(source).resolve()),
        "image_size": int(image_size),
        "resize": resize,
        "class_names": list(class_names),
        "num_images": len(items),
        "files_sha1": files_fingerprint(paths, labels, source),
        "extra_labels": sorted(extra_labels or {}),
    }


def build_image_cache(items: Sequence[tuple[str | os.PathLike, int]], out_dir: str | os.PathLike, image_size: int,
                      class_names: Sequence[str], *, name: str = "", source: str | os.PathLike | None = None,
                      resize: str = "center-crop", extra_labels: Mapping[str, Sequence[int]] | None = None,
                      workers: int = 0, progress: bool = True) -> "ImageTensorDataset":
    """Decode `items` ((image path, label) pairs) into a cache folder `out_dir` and return it loaded.

    `source` is the folder the paths are taken relative to in the fingerprint (default: their common
    folder); `workers` > 0 decodes in that many processes. Replaces whatever was at `out_dir`.
    """
    if not items:
        raise BlockMAEError(f"no images to cache for {name or out_dir}; check the dataset folder")
    out_dir = Path(out_dir)
    paths = [str(p) for p, _ in items]
    labels = np.asarray([int(label) for _, label in items], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise BlockMAEError(f"labels of {name or out_dir} must lie in [0, {len(class_names)}); got {labels.min()}..{labels.max()}")
    if source is None:
        source = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    meta = cache_params(items, image_size, class_names, name=name, source=source, resize=resize,
                        extra_labels=extra_labels)
    meta["class_counts"] = np.bincount(labels, minlength=len(class_names)).tolist()
    extras = {k: np.asarray(v, dtype=np.int64) for k, v in (extra_labels or {}).items()}
    for key, values in extras.items():
        if values.shape != labels.shape:
            raise ValueError(f"extra label {key!r} has {values.shape[0]} values for {labels.shape[0]} images")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        shape = (len(paths), 3, image_size, image_size)
        images_file = str(tmp / "images.u8")
        np.memmap(images_file, dtype=np.uint8, mode="w+", shape=shape).flush()
        started = time.perf_counter()
        chunk = 256
        with tqdm(total=len(paths), unit="img", desc=f"decoding {name or out_dir.name}", file=sys.stderr,
                  disable=None if progress else True) as bar:
            if workers > 0 and len(paths) > chunk:
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                    jobs = [pool.submit(_decode_into, images_file, shape, s, paths[s:s + chunk], image_size, resize)
                            for s in range(0, len(paths), chunk)]
                    for job in jobs:
                        bar.update(job.result())
            else:
                for s in range(0, len(paths), chunk):
                    bar.update(_decode_into(images_file, shape, s, paths[s:s + chunk], image_size, resize))
        meta["build_seconds"] = round(time.perf_counter() - started, 3)
        labels.tofile(tmp / "labels.i64")
        for key, values in extras.items():
            values.tofile(tmp / f"extra-{key}.i64")
        (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache is as shareable as the data it came from
        # readers that mapped the old cache's files keep them until they close
        replace_dir(tmp, out_dir, out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}-{time.monotonic_ns()}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_image_cache(out_dir)


def read_cache_meta(cache_dir: str | os.PathLike) -> dict | None:
    """The build parameters of the cache at `cache_dir`, or None if there is no complete cache there."""
    path = Path(cache_dir) / _META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BlockMAEError(f"cache metadata {path} is unreadable ({err}); delete {cache_dir} to rebuild it") from None


def cache_mismatch(meta: Mapping, expected: Mapping) -> str | None:
    """None when `meta` was built with the `expected` parameters, else which parameter differs."""
    for key in CHECKED_KEYS:
        if key in expected and meta.get(key) != expected[key]:
            built, wanted = meta.get(key), expected[key]
            if isinstance(built, list) and isinstance(wanted, list) and len(built) + len(wanted) > 6:
                built, wanted = f"{len(built)} entries", f"{len(wanted)} different entries"
            return f"{key}={built} (wanted {wanted})"
    return None


def load_image_cache(cache_dir: str | os.PathLike, expected: Mapping | None = None) -> "ImageTensorDataset":
    """Map the cache at `cache_dir` as an ImageTensorDataset (images memory-mapped, copy-on-write).

    With `expected` (e.g. from `cache_params`), a cache built with other parameters is a BlockMAEError.
    """
    cache_dir = Path(cache_dir)
    meta = read_cache_meta(cache_dir)
    if meta is None:
        raise BlockMAEError(f"no image cache at {cache_dir} (missing {_META}); build it with `blockmae data prepare`")
    if expected is not None:
        problem = cache_mismatch(meta, expected)
        if problem is not None:
            raise BlockMAEError(f"cache {cache_dir} was built with other parameters: {problem}; "
                                f"delete it or let it be rebuilt")
    n, size = int(meta["num_images"]), int(meta["image_size"])
    images_file = cache_dir / "images.u8"
    expected_bytes = n * 3 * size * size
    if not images_file.is_file() or images_file.stat().st_size != expected_bytes:
        raise BlockMAEError(f"cache file {images_file} is missing or has the wrong size; delete {cache_dir} to rebuild it")

    def int64_file(filename: str) -> torch.Tensor:
        values = np.fromfile(cache_dir / filename, dtype=np.int64)
        if values.shape != (n,):
            raise BlockMAEError(f"cache file {cache_dir / filename} is damaged; delete {cache_dir} to rebuild it")
        return torch.from_numpy(values)

    # mode "c": copy-on-write mapping, so the tensor is writable without ever changing the file.
    images = torch.from_numpy(np.memmap(images_file, dtype=np.uint8, mode="c", shape=(n, 3, size, size)))
    extras = {key: int64_file(f"extra-{key}.i64") for key in meta.get("extra_labels", [])}
    return ImageTensorDataset(images=images, labels=int64_file("labels.i64"), class_names=list(meta["class_names"]),
                              name=meta.get("name", ""), extra_labels=extras)


def cached_image_dataset(items: Sequence[tuple[str | os.PathLike, int]], cache_dir: str | os.PathLike,
                         image_size: int, class_names: Sequence[str], *, name: str, source: str | os.PathLike,
                         resize: str = "center-crop", extra_labels: Mapping[str, Sequence[int]] | None = None,
                         workers: int = 0, progress: bool = True, rebuild: bool = True) -> "ImageTensorDataset":
    """Load the cache at `cache_dir` if it was built from exactly these items and parameters, else build it.

    A cache built with other parameters is rebuilt (with a note on stderr saying why) when `rebuild`,
    otherwise it is a BlockMAEError.
    """
    expected = cache_params(items, image_size, class_names, name=name, source=source, resize=resize,
                            extra_labels=extra_labels)
    meta = read_cache_meta(cache_dir)
    if meta is not None:
        problem = cache_mismatch(meta, expected)
        if problem is None:
            return load_image_cache(cache_dir)
        if not rebuild:
            raise BlockMAEError(f"cache {cache_dir} was built with other parameters: {problem}; "
                                f"delete it or allow a rebuild")
        print(f"blockmae: rebuilding cache {cache_dir}: it was built with {problem}", file=sys.stderr)
    return build_image_cache(items, cache_dir, image_size, class_names, name=name, source=source, resize=resize,
                             extra_labels=extra_labels, workers=workers, progress=progress)


def default_workers() -> int:
    """Decoding processes to use by default: the CPU count, capped at 8."""
    return min(8, os.cpu_count() or 1)
