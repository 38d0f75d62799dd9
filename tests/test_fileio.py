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


def test_the_writer_rule_tells_kinds_and_owners(tmp_path):
    """claim_output_dir: new, empty or own folders pass; another command's output never; other files only
    with --force (and the message offers --force only where the command has it)."""
    import pytest

    from blockmae.errors import BlockMAEError
    from blockmae.fileio import claim_output_dir, claim_output_file, mark_output, output_kind

    assert output_kind(tmp_path / "none") is None and output_kind(tmp_path) is None
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert output_kind(run) == "pretrain"
    mine = tmp_path / "mine"
    mine.mkdir()
    mark_output(mine, "export")
    assert output_kind(mine) == "export" and claim_output_dir(mine, "export") == mine
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep").write_text("x")
    assert output_kind(other) == ""
    with pytest.raises(BlockMAEError, match="is a pretrain folder"):
        claim_output_dir(run, "export", force=True)
    with pytest.raises(BlockMAEError, match="is inside a pretrain folder"):
        claim_output_dir(run / "sub", "export")
    with pytest.raises(BlockMAEError, match="or pass --force"):
        claim_output_dir(other, "export", force=False)
    with pytest.raises(BlockMAEError, match=r"empty folder$"):
        claim_output_dir(other, "lowpass")
    assert claim_output_dir(other, "export", force=True) == other
    with pytest.raises(BlockMAEError, match="must end in .html"):
        claim_output_file(tmp_path / "r.txt", (".html",))
    with pytest.raises(BlockMAEError, match="is inside a pretrain folder"):
        claim_output_file(run / "r.html", (".html",), kind="report")


def test_image_progress_prints_plain_lines_only_where_there_is_no_terminal():
    """A long loop over images writes a line every interval to a file (a cluster's .out); short loops and
    terminals (where the bar is) print no such line."""
    import io

    from blockmae import progress

    clock = iter([0.0, 10.0, 40.0, 50.0, 75.0, 80.0]).__next__
    out = io.StringIO()
    with progress.ImageProgress(100, "mvh edge", interval_s=30, stream=out, terminal=False, clock=clock) as bar:
        for _ in range(4):  # at 10, 40, 50 and 75 s
            bar.update(20)
    lines = out.getvalue().splitlines()
    assert lines == ["mvh edge: 40/100 img  1.0 img/s  ETA 0:01:00", "mvh edge: 80/100 img  1.1 img/s  ETA 0:00:19",
                     "mvh edge: 80/100 img  1.0 img/s  ETA 0:00:20"], lines
    quiet = io.StringIO()
    with progress.ImageProgress(100, "short", interval_s=1e9, stream=quiet, terminal=False) as bar:
        bar.update(100)
    assert quiet.getvalue() == ""
