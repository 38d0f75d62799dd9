"""blockmae.fileio: atomic writes keep the old file on failure and give finished files a normal mode."""

from __future__ import annotations

import os
import stat

import pytest

from blockmae.fileio import atomic_path, write_text_atomic


def test_finished_file_has_the_umask_mode_not_mkstemps_0600(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    target = write_text_atomic(tmp_path / "report.md", "hello")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
