"""Verified, resumable downloads and safe archive extraction (standard library only).

A download goes to ``<dest>.part``; an interrupted one resumes with an HTTP Range request; the
finished file is checked (size, md5/sha256) and only then renamed to ``dest``. Archives are
extracted into a temporary folder next to the target and renamed into place, refusing members
that would land outside it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from blockmae.errors import BlockMAEError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file published at `url`, with what is known about it to verify a download."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        facts = [f"{self.size:,} bytes" if self.size else None, f"md5 {self.md5}" if self.md5 else None,
                 f"sha256 {self.sha256}" if self.sha256 else None]
        known = ", ".join(f for f in facts if f)
        return f"{self.url}" + (f" ({known})" if known else "")


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, remote: RemoteFile) -> str | None:
    """None when `path` matches what is known of `remote`, else a description of the mismatch."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"size {size:,} bytes, expected {remote.size:,}"
    for algorithm in ("md5", "sha256"):
        expected = getattr(remote, algorithm)
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                return f"{algorithm} {actual}, expected {expected}"
    return None


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    # disable=None: quiet when stderr is not a terminal (logs, CI).
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None if enabled else True, file=sys.stderr)


def _by_hand(remote: RemoteFile, dest: Path) -> str:
    return f"download {remote.describe()} on a machine with internet access and place it at {dest}, then rerun"


def download(remote: RemoteFile, dest_dir: Path, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download `remote` into `dest_dir` (resuming a previous `.part`) and return the verified path.

    A file already at the destination that passes verification is returned without network access.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / remote.filename
    if dest.is_file():
        problem = verify_file(dest, remote)
        if problem is None:
            return dest
        raise BlockMAEError(f"{dest} exists but does not match {remote.url} ({problem}); delete it and rerun")
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0

    if not (remote.size is not None and have == remote.size):  # else the .part only awaits verification
        _fetch(remote, part, have, dest, timeout, progress)
    problem = verify_file(part, remote)
    if problem is not None:
        part.unlink()
        raise BlockMAEError(f"download of {remote.url} is corrupted ({problem}); the partial file was deleted: "
                            f"rerun to download again, or {_by_hand(remote, dest)}")
    os.replace(part, dest)
    return dest


def _fetch(remote: RemoteFile, part: Path, have: int, dest: Path, timeout: float, progress: bool) -> None:
    """Append the bytes after the first `have` of `remote` to `part` (from scratch if Range is ignored)."""
    request = urllib.request.Request(remote.url, headers={"User-Agent": "blockmae"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and getattr(response, "status", 200) != 206:
                have = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else remote.size
            received = 0
            with open(part, "ab" if have else "wb") as out, \
                    _progress_bar(total, have, remote.filename, progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if length is not None and received < int(length):  # urllib does not raise on a short body
                raise http.client.IncompleteRead(b"", int(length) - received)
    except urllib.error.HTTPError as err:
        if have and err.code == 416:
            return  # nothing after `have`: the .part is already whole; verification decides
        raise BlockMAEError(f"{remote.url} answered HTTP {err.code} {err.reason}; {_by_hand(remote, dest)}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        host = urllib.parse.urlsplit(remote.url).netloc or remote.url
        reason = getattr(err, "reason", err)
        kept = f" (the partial download {part} is kept and will resume)" if part.is_file() else ""
        raise BlockMAEError(f"cannot download from {host}: offline or unreachable ({reason}){kept}; "
                            f"{_by_hand(remote, dest)}") from None


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def _unpack(archive: Path, into: Path, members_under: str | None) -> None:
    """Extract `archive` into the empty folder `into`, refusing path traversal and links out."""
    root = into.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if members_under is not None and not info.filename.startswith(members_under):
                    continue
                if os.path.isabs(info.filename) or not _inside(root, info.filename):
                    raise BlockMAEError(f"{archive} contains the unsafe path {info.filename!r}; refusing to extract it")
                zf.extract(info, root)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if members_under is None or m.name.startswith(members_under)]
            for member in members:
                if not _inside(root, member.name):
                    raise BlockMAEError(f"{archive} contains the unsafe path {member.name!r}; refusing to extract it")
            try:
                # The "data" filter also rejects absolute links, device files and links leaving the folder.
                tf.extractall(root, members=members, filter="data")
            except tarfile.FilterError as err:
                raise BlockMAEError(f"{archive} contains an unsafe member ({err}); refusing to extract it") from None
        return
    raise BlockMAEError(f"{archive} is neither a zip nor a tar archive; download it again or pass the extracted folder")


def extract(archive: Path, dest: Path, members_under: str | None = None,
            check: Callable[[Path], None] | None = None) -> Path:
    """Extract `archive` so that its contents appear in `dest` all at once (temp folder, then rename).

    `members_under` keeps only the members whose path starts with that prefix. `check(temp folder)` may
    refuse the extracted files (raising) before anything reaches `dest`. Members already present in
    `dest` are replaced (the archive is the reference).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            _unpack(archive, staging, members_under)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
            raise BlockMAEError(f"{archive} is damaged ({err}); delete it and download it again") from None
        if check is not None:
            check(staging)
        for item in staging.iterdir():
            target = dest / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(str(source)).scheme in ("http", "https", "ftp", "file")


def filename_from_url(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name or "download"
