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


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """`with staged_dir(out) as tmp: write into tmp`: a fresh hidden folder beside `out` (named per process),
    swapped in for `out` whole on success (replace_dir) and removed on error, so no partial folder is left."""
    target = Path(target)
    stem = f".{target.name}.{os.getpid()}"
    tmp, aside = target.with_name(stem + ".tmp"), target.with_name(stem + ".old")
    try:
        with writing(target):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        yield tmp
        with writing(target):
            replace_dir(tmp, target, aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    if err.errno == errno.ENOENT:
        return BlockMAEError(f"cannot use {where}: no such file or folder")
    if err.errno == errno.EISDIR:
        return BlockMAEError(f"cannot use {where}: it is a folder, a file is needed")
    return BlockMAEError(f"cannot write {where}: {(err.strerror or str(err)).lower()}")


@contextlib.contextmanager
def writing(path: str | Path | None = None) -> Iterator[None]:
    """Turn an OSError raised while writing outputs into a one-line BlockMAEError (no traceback)."""
    try:
        yield
    except OSError as err:
        raise output_error(err, path) from None


# ------------------------------------------------------------------------------------ the writer rule
# Every command that writes a folder or a file claims its destination through `claim_output_dir` or
# `claim_output_file`: a writer never removes or mixes into what it did not create.

OUTPUT_MARKER = ".blockmae-output.json"  # {"kind": ...}: the folder was written by that command
# Files that tell what an unmarked folder holds (outputs written before the marker existed), first match wins.
_KIND_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("manifest.json", "reference"), ("sweep_plan.json", "sweep"), ("sweep.json", "sweep"),
    ("quickstart.yaml", "quickstart"), ("checkpoints", "pretrain"), ("arm.json", "sweep arm"),
)


def output_kind(folder: str | Path) -> str | None:
    """What blockmae output `folder` holds: the kind in its marker, in its run_record.json (pretrain, probe,
    finetune, a diagnostic...), or told by its files; None for a missing or empty folder, "" for a folder
    holding something else."""
    folder = Path(folder)
    try:
        names = {p.name for p in folder.iterdir()}
    except (FileNotFoundError, NotADirectoryError):
        return None
    names.difference_update({"run.lock", "registry.sqlite"})  # a lock, an output root's registry: neutral
    if not names:
        return None
    for name in (OUTPUT_MARKER, "run_record.json"):
        if name in names:
            try:
                data = json.loads((folder / name).read_text(encoding="utf-8"))
                kind = data.get("kind") or data.get("row", {}).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
            if isinstance(kind, str) and kind:
                return kind
    for name, kind in _KIND_SIGNATURES:
        if name in names:
            return kind
    if {"config.json", "model.safetensors"} <= names:
        return "export"
    return ""


def mark_output(folder: str | Path, kind: str) -> None:
    """Record in `folder` that `kind` wrote it (so a rerun may replace it and other writers keep out)."""
    write_json_atomic(Path(folder) / OUTPUT_MARKER, {"kind": kind})


def _a(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _file_in_the_way(path: Path, option: str) -> None:
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "" if parent == path else f" at {parent}"
            raise BlockMAEError(f"{option} {path}: a file is in the way (a folder is needed){where}; use another "
                                f"{option}")
        if parent.is_dir():
            return


def claim_output_dir(path: str | Path, kind: str, *, option: str = "--out", force: bool | None = None,
                     accept: tuple[str, ...] = ()) -> Path:
    """Check that the command `kind` may write the folder `path`: missing, empty, or written by `kind` (or
    one of `accept`) before. A folder holding another command's output (a pretraining run dir, a reference,
    a sweep...) is always refused; any other non-empty folder only with `force` (the user's --force; None:
    the command has no such flag)."""
    path = Path(path)
    _file_in_the_way(path, option)
    inside = output_kind(path.parent)
    if inside and inside != kind and inside not in accept and inside != "sweep":
        raise BlockMAEError(f"{option} {path} is inside {_a(inside)} folder ({path.parent}); {kind} never writes into "
                            f"another command's output: choose another path")
    found = output_kind(path)
    if found is None or found == kind or found in accept:
        return path
    if found:
        raise BlockMAEError(f"{option} {path} is {_a(found)} folder; {kind} never writes into another command's "
                            f"output: choose a new or empty folder")
    if not force:
        hint = "" if force is None else ", or pass --force to replace what it holds"
        raise BlockMAEError(f"{option} {path} is not empty and was not written by {kind}; choose a new or empty "
                            f"folder{hint}")
    return path


def claim_output_file(path: str | Path, suffixes: tuple[str, ...], *, option: str = "--out",
                      kind: str = "this command", accept: tuple[str, ...] = ()) -> Path:
    """Check an output file's path: one of `suffixes` (lower case, with the dot), not a folder, no file in
    the way of its folder, and not inside another command's run dir (unless its kind is in `accept`). An
    existing file of that suffix is replaced atomically (see atomic_path)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise BlockMAEError(f"{option} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise BlockMAEError(f"{option} {path} is a folder; give a file's path, e.g. {path / ('out' + suffixes[0])}")
    _file_in_the_way(path.parent, option)
    found = output_kind(path.parent)
    if found and found not in accept and found != kind:
        raise BlockMAEError(f"{option} {path} is inside {_a(found)} folder ({path.parent}); {kind} never writes into "
                            f"another command's output: choose another path")
    return path
