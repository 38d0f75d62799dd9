"""Atomic writes: a temp file (or folder) beside the target, fsynced, then renamed over it.

A crash or Ctrl-C mid-write leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blockmae.errors import BlockMAEError


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a finished file gets the mode a plain open() would have given it.
_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """`with atomic_path(target) as tmp: write(tmp)`: on success `tmp` is fsynced and renamed to `target`;
    on error it is removed and `target` is untouched. `suffix` ends the temp name (writers that pick the
    format from it, like matplotlib, need the target's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """`obj` as JSON (indent 2 unless given otherwise) plus a final newline, written atomically."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")


def fsync_dir(path: str | Path) -> None:
    """Make the renames inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: str | Path, target: str | Path, aside: str | Path) -> None:
    """Swap the finished folder `new` in for `target`. The old `target` is first renamed to `aside` (so a
    crash between the two renames leaves one whole folder, and readers holding its files keep them), then
    removed."""
    new, target, aside = Path(new), Path(target), Path(aside)
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(new, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_A_FOLDER = {errno.ENOTDIR, errno.EEXIST}


def output_error(err: OSError, path: str | Path | None = None) -> BlockMAEError:
    """A one-line BlockMAEError for a failed write to `path` (or the file the error names)."""
    where = err.filename or path or "the output"
    if err.errno in _NO_SPACE:
        return BlockMAEError(f"no space left on the device writing {where}; free some space (or point the "
                             f"output elsewhere) and rerun")
    if err.errno in _NO_PERMISSION:
        reason = "read-only file system" if err.errno == errno.EROFS else "permission denied"
        return BlockMAEError(f"cannot write {where}: {reason}; choose a folder you can write to")
    if err.errno in _NOT_A_FOLDER:
        return BlockMAEError(f"cannot write {where}: a file is in the way of a folder of that path; "
                             f"choose another path or remove the file")
    return BlockMAEError(f"cannot write {where}: {err.strerror or err}")


@contextlib.contextmanager
def writing(path: str | Path | None = None) -> Iterator[None]:
    """Turn an OSError raised while writing outputs into a one-line BlockMAEError (no traceback)."""
    try:
        yield
    except OSError as err:
        raise output_error(err, path) from None
