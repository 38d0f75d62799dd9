"""Where a dataset's files and its caches live.

A dataset *root* is either

- a folder prepared by ``blockmae data prepare NAME --root DIR``: it holds the download, the extracted
  data (or a record of the folder given as ``--source``) in ``blockmae-prepared.json``, and the caches in
  ``DIR/cache``; or
- the dataset's own folder (e.g. an extracted ``tiny-imagenet-200``): it is only read, and the caches go
  under ``default_cache_root()/<dataset>/<hash of the folder's path>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from blockmae.data.base import default_cache_root
from blockmae.data.download import RemoteFile, download, extract, filename_from_url, is_url
from blockmae.errors import BlockMAEError
from blockmae.fileio import write_json_atomic

PREPARED_FILE = "blockmae-prepared.json"


def _cache_root() -> Path:
    return default_cache_root()


def default_root(dataset: str) -> Path:
    """Where `blockmae data prepare DATASET` puts a dataset when no --root is given."""
    return _cache_root() / "datasets" / dataset


def write_prepared(root: Path, dataset: str, data_dir: Path, **facts) -> None:
    """Record (atomically) that `root` holds `dataset`, read from `data_dir`."""
    record = {"dataset": dataset, "data_dir": str(Path(data_dir).resolve()), **facts}
    write_json_atomic(root / PREPARED_FILE, record, indent=1)


def read_prepared(root: Path, dataset: str) -> dict | None:
    path = Path(root) / PREPARED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise BlockMAEError(f"{path} is unreadable ({err}); rerun `blockmae data prepare {dataset} --root {root}`") from None
    if record.get("dataset") != dataset:
        raise BlockMAEError(f"{root} was prepared for {record.get('dataset')!r}, not {dataset!r}; "
                            f"use another --root for {dataset}")
    return record


def resolve_root(dataset: str, root: str | os.PathLike | None, find_data: Callable[[Path], Path | None],
                 expected_layout: str, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(folder with the dataset's files, folder for its caches) for a user-given root.

    `find_data(folder)` returns the dataset folder inside `folder` (or `folder` itself), None if absent;
    `expected_layout` describes it for the error message.
    """
    root = Path(root) if root is not None else default_root(dataset)
    if not root.exists():
        raise BlockMAEError(f"dataset root {root} does not exist; run `blockmae data prepare {dataset} --root {root}` "
                            f"or pass the folder that holds {dataset}")
    record = read_prepared(root, dataset)
    if record is not None:
        data_dir = Path(record["data_dir"])
        if find_data(data_dir) is None:
            raise BlockMAEError(f"{root / PREPARED_FILE} points at {data_dir}, which no longer holds {dataset}; "
                                f"rerun `blockmae data prepare {dataset} --root {root}`")
        return find_data(data_dir), Path(cache_dir) if cache_dir else root / "cache"
    data_dir = find_data(root)
    if data_dir is None:
        raise BlockMAEError(f"{root} does not look like {dataset} (expected {expected_layout}); pass the right folder "
                            f"or run `blockmae data prepare {dataset} --root {root}`")
    if cache_dir:
        return data_dir, Path(cache_dir)
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return data_dir, _cache_root() / dataset / key


def split_cache_dir(cache_root: Path, split: str, image_size: int, resize: str, variant: str = "") -> Path:
    """The cache folder of one split at one size."""
    return cache_root / f"{split}{variant}-{image_size}px-{resize}"


def obtain(dataset: str, root: str | os.PathLike | None, source: str | os.PathLike | None,
           find_data: Callable[[Path], Path | None], expected_layout: str, official=None,
           md5: str | None = None, sha256: str | None = None, members_under: str | None = None,
           progress: bool = True, verify: Callable[[Path, Path], None] | None = None) -> tuple[Path, Path]:
    """Make `dataset` available under `root` from `source`; return (root, dataset folder).

    `source`: None (download `official`, a RemoteFile), a URL (downloaded and checked against `md5` /
    `sha256`, or `official`'s facts when it is the official URL), an archive (zip/tar), or an already
    extracted folder (used in place, not copied). `members_under` extracts only that part of an archive.
    `verify(dataset folder, cache folder)` may refuse the new data (raising): an archive's files are then
    never moved into `root`, and `root`'s record is written only after it passes, so a refused source
    leaves a root that worked as it was.
    """
    root = Path(root) if root is not None else default_root(dataset)
    root.mkdir(parents=True, exist_ok=True)
    if source is None:
        if official is None:
            raise BlockMAEError(f"{dataset} has no official download; pass --source with an archive, URL or folder")
        archive = download(official, root, progress=progress)
    elif is_url(str(source)):
        if official is not None and str(source) == official.url and not (md5 or sha256):
            remote = official
        else:
            remote = RemoteFile(str(source), filename_from_url(str(source)), md5=md5, sha256=sha256)
        archive = download(remote, root, progress=progress)
    else:
        source = Path(source)
        if source.is_dir():
            data_dir = find_data(source)
            if data_dir is None:
                raise BlockMAEError(f"{source} does not look like {dataset} (expected {expected_layout}); "
                                    f"pass the dataset's folder, its archive or a URL as --source")
            if verify is not None:
                if read_prepared(root, dataset) is None:  # a new root: its caches are built by the check
                    verify(data_dir.resolve(), root / "cache")
                else:  # a root that works keeps its caches until the new source passes
                    with tempfile.TemporaryDirectory(prefix=".verify-", dir=root) as cache:
                        verify(data_dir.resolve(), Path(cache))
            write_prepared(root, dataset, data_dir, source=str(source.resolve()))
            return root, data_dir
        if not source.is_file():
            raise BlockMAEError(f"--source {source} does not exist; pass an archive, a URL or an extracted folder")
        archive = source

    record = read_prepared(root, dataset)
    data_dir = find_data(Path(record["data_dir"])) if record and record.get("archive") == str(archive) else None
    if data_dir is None:  # not extracted yet (or from another archive)
        def located(folder: Path) -> Path:
            found = next((d for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if find_data(d)),
                         None)
            if found is None:
                raise BlockMAEError(f"{archive} does not contain {dataset} (expected {expected_layout}); "
                                    f"check that it is the right archive")
            return find_data(found)

        def check(staging: Path) -> None:
            staged = located(staging)
            if verify is not None:  # with a throwaway cache: the staged paths are not the final ones
                with tempfile.TemporaryDirectory(prefix=".verify-", dir=root) as cache:
                    try:
                        verify(staged, Path(cache))
                    except BlockMAEError as err:
                        raise BlockMAEError(f"{archive} is refused and nothing of it was kept in {root}: "
                                            f"{err}") from None

        extract(archive, root, members_under=members_under, check=check)
        data_dir = located(root)
    write_prepared(root, dataset, data_dir, source=str(source) if source is not None else official.url,
                   archive=str(archive))
    return root, data_dir
