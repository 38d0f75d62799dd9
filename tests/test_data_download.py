"""Verified, resumable download and safe extraction, against a throw-away HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from blockmae.data.download import RemoteFile, download, extract
from blockmae.errors import BlockMAEError


def _remote(server, name: str, body: bytes, **facts) -> RemoteFile:
    server.files[f"/{name}"] = body
    return RemoteFile(f"{server.url}/{name}", name, **facts)


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_download_verifies_size_and_checksums(http_server, tmp_path):
    remote = _remote(http_server, "a.bin", PAYLOAD, size=len(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest(),
                     sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = download(remote, tmp_path, progress=False)
    assert path == tmp_path / "a.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()
    # A verified file already in place is used without asking the server again.
    assert download(remote, tmp_path, progress=False) == path
    assert len(http_server.requests) == 1


def test_corrupted_download_is_rejected_and_deleted(http_server, tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    remote = _remote(http_server, "a.bin", bytes(corrupted), size=len(PAYLOAD), md5=hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(BlockMAEError, match=r"corrupted \(md5 .*expected") as err:
        download(remote, tmp_path, progress=False)
    assert str(tmp_path / "a.bin") in str(err.value)  # says where to place the file by hand
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_rejected(http_server, tmp_path):
    remote = _remote(http_server, "a.bin", PAYLOAD[:-1], size=len(PAYLOAD))
    with pytest.raises(BlockMAEError, match="size 1,048,575 bytes, expected 1,048,576"):
        download(remote, tmp_path, progress=False)


def test_interrupted_download_resumes_with_a_range_request(http_server, tmp_path):
    remote = _remote(http_server, "a.bin", PAYLOAD, md5=hashlib.md5(PAYLOAD).hexdigest())
    http_server.cut["/a.bin"] = 300_000  # the connection drops after 300,000 bytes
    with pytest.raises(BlockMAEError, match="unreachable.*kept and will resume"):
        download(remote, tmp_path, progress=False)
    assert (tmp_path / "a.bin.part").stat().st_size == 300_000
    path = download(remote, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert http_server.requests == [("/a.bin", None), ("/a.bin", "bytes=300000-")]


def test_complete_part_file_is_verified_without_refetching(http_server, tmp_path):
    remote = _remote(http_server, "a.bin", PAYLOAD, md5=hashlib.md5(PAYLOAD).hexdigest())
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)  # whole, but never verified (e.g. killed before the rename)
    assert download(remote, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert http_server.requests == [("/a.bin", f"bytes={len(PAYLOAD)}-")]  # answered 416: nothing left


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_says_offline_and_where_to_put_the_file(tmp_path):
    remote = RemoteFile(f"http://127.0.0.1:{_closed_port()}/tiny.zip", "tiny.zip", size=10, md5="0" * 32)
    with pytest.raises(BlockMAEError) as err:
        download(remote, tmp_path / "root", progress=False)
    message = str(err.value)
    assert "offline or unreachable" in message
    assert f"place it at {tmp_path / 'root' / 'tiny.zip'}" in message
    assert "\n" not in message


def test_http_error_is_reported(http_server, tmp_path):
    with pytest.raises(BlockMAEError, match="answered HTTP 404"):
        download(RemoteFile(f"{http_server.url}/missing.zip", "missing.zip"), tmp_path, progress=False)


def test_zip_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../escaped.txt", "bad")
    with pytest.raises(BlockMAEError, match="unsafe path '../escaped.txt'"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-extracted


def test_tar_with_link_out_of_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(BlockMAEError, match="unsafe member"):
        extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_extract_tar_and_members_under(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("repo/stimuli/x/1.txt", "repo/other/2.txt"):
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    extract(archive, tmp_path / "out", members_under="repo/stimuli/")
    assert (tmp_path / "out/repo/stimuli/x/1.txt").read_text() == "repo/stimuli/x/1.txt"
    assert not (tmp_path / "out/repo/other").exists()


def test_damaged_archive_is_reported(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"not an archive at all")
    with pytest.raises(BlockMAEError, match="neither a zip nor a tar"):
        extract(archive, tmp_path / "out")


# ---- `blockmae data prepare` through the download path -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory, shared_data) -> bytes:
    """The Tiny-ImageNet mini set zipped like the official archive (top folder tiny-imagenet-200/)."""
    source = shared_data / "tiny-imagenet-200-mini"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, Path("tiny-imagenet-200") / path.relative_to(source))
    return buffer.getvalue()


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmae", "data", "prepare", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_prepare_tiny_imagenet_from_a_url(http_server, tmp_path, tiny_zip):
    http_server.files["/tiny-imagenet-200.zip"] = tiny_zip
    url = f"{http_server.url}/tiny-imagenet-200.zip"
    root = tmp_path / "root"
    proc = _prepare("tiny-imagenet", "--root", str(root), "--source", url,
                    "--md5", hashlib.md5(tiny_zip).hexdigest(), "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == ["classes: 10", "train: 200", "val: 100"]
    assert (root / "tiny-imagenet-200.zip").read_bytes() == tiny_zip
    assert (root / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["train-64px-center-crop", "val-64px-center-crop"]

    # The prepared root is what load_dataset reads afterwards (from the cache, no decoding).
    from blockmae.data import load_dataset

    val = load_dataset("tiny-imagenet", "val", root=root)
    assert len(val) == 100 and val.num_classes == 10


def test_prepare_rejects_a_corrupted_download(http_server, tmp_path, tiny_zip, capsys):
    from blockmae.cli import main

    corrupted = bytearray(tiny_zip)
    corrupted[len(corrupted) // 2] ^= 0xFF
    http_server.files["/tiny-imagenet-200.zip"] = bytes(corrupted)
    root = tmp_path / "root"
    code = main(["data", "prepare", "tiny-imagenet", "--root", str(root), "--source",
                 f"{http_server.url}/tiny-imagenet-200.zip", "--md5", hashlib.md5(tiny_zip).hexdigest()])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("blockmae: error: download of http://127.0.0.1") and "corrupted" in err
    assert err.count("\n") == 1
    assert sorted(p.name for p in root.iterdir()) == []  # neither the bad file nor an extraction remains
