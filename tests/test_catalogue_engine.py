"""The catalogue of bad input and faults for `blockmae pretrain` (issue 9): each case is a command, its exit
status, a fragment of its message, and a check that nothing good changed (the files of a completed run,
shared by the module, keep their hashes; the registry gains no row).

Errors must be one line (`blockmae: error: ...`, status 2), never a traceback. Faults that cannot be made
from outside (a full disk, a folder we may not write: the tests run as root, who may write anywhere) are
injected in-process by monkeypatching the write path.
"""

import errno
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockmae.cli import main
from blockmae.engine import checkpoint as ckpt
from blockmae.lock import LOCK_NAME, RunLock
from blockmae.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# 128 images in batches of 64: 2 steps per epoch, 2 epochs, a milestone at epoch 1
BASE = ["pretrain", "--config", str(SMOKE), "data.num_images=128", "train.epochs=2", "run.milestones=[1]",
        "run.recon_images=0"]


def _blockmae(args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "blockmae", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A completed run (and its registry) that no case may change."""
    root = tmp_path_factory.mktemp("good")
    code, out, err = _blockmae([*BASE, f"run.dir={root / 'run'}", f"run.output_root={root}"])
    assert code == 0, out + err
    return root / "run"


def _snapshot(run_dir):
    files = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(run_dir.rglob("*")) if p.is_file()}
    return files, len(Registry(run_dir.parent).list_runs())


def _good_args(good):
    return [*BASE, f"run.dir={good}", f"run.output_root={good.parent}"]


def _copy(good, tmp_path, damage=()):
    """A copy of the good run in tmp_path/copy, with `damage` = [(checkpoint name, file, how)]."""
    copy = tmp_path / "copy"
    shutil.copytree(good, copy)
    for name, file, how in damage:
        path = copy / "checkpoints" / name / file
        path.write_bytes(b"{garbage" if how == "garbage" else path.read_bytes()[: len(path.read_bytes()) // 2])
    return [*BASE, f"run.dir={copy}", f"run.output_root={tmp_path}"]


def _file(tmp_path, *parts):
    (tmp_path / "file").write_text("not a folder")
    return tmp_path.joinpath("file", *parts)


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SMOKE.read_text().replace("  block: 2\n", "  block: [2\n"))
    return path


# id, args (from good, tmp_path), exit status, message fragment
CASES = [
    ("rerun-completed", lambda g, t: _good_args(g), 0, "is already complete (2 epochs); nothing to do"),
    ("changed-base-lr", lambda g, t: [*_good_args(g), "optim.base_lr=1e-3"], 2, "optim.base_lr 0.00015 -> 0.001"),
    ("changed-accum", lambda g, t: [*_good_args(g), "train.accum_steps=2"], 2, "train.accum_steps 1 -> 2"),
    ("changed-epochs", lambda g, t: [*_good_args(g), "train.epochs=3"], 2,
     "train.epochs 2 -> 3); set them back, use another run.dir, or accept them with run.allow_changes=[train.epochs]"),
    ("changed-crop", lambda g, t: [*_good_args(g), "data.crop_scale=[0.5,1.0]"], 2,
     "data.crop_scale [0.2, 1.0] -> [0.5, 1.0]"),
    ("changed-batch-and-warmup", lambda g, t: [*_good_args(g), "train.batch_size=32", "optim.warmup_epochs=0"], 2,
     "optim.warmup_epochs 1.0 -> 0.0, train.batch_size 64 -> 32"),
    ("past-milestone-added", lambda g, t: [*_good_args(g), "run.milestones=[1,2]"], 2, "run.milestones [1] -> [1, 2]"),
    ("run-dir-is-a-file", lambda g, t: [*BASE, f"run.dir={_file(t)}"], 2, "a file is in the way"),
    ("run-dir-under-a-file", lambda g, t: [*BASE, f"run.dir={_file(t, 'run')}"], 2, "a file is in the way"),
    ("output-root-is-a-file", lambda g, t: [*BASE, f"run.output_root={_file(t)}"], 2, "a file is in the way"),
    ("yaml-syntax-error", lambda g, t: ["pretrain", "--config", str(_bad_yaml(t))], 2,
     "bad.yaml:11:8: YAML syntax error: did not find expected"),
    ("nan-lr", lambda g, t: [*BASE, f"run.dir={t / 'r'}", "optim.lr=nan"], 2, "optim.lr must be a finite number"),
    ("inf-warmup", lambda g, t: [*BASE, f"run.dir={t / 'r'}", "optim.warmup_epochs=inf"], 2,
     "optim.warmup_epochs must be a finite number"),
    ("nan-clip", lambda g, t: [*BASE, f"run.dir={t / 'r'}", "optim.clip_grad=nan"], 2,
     "optim.clip_grad must be a finite number"),
    ("tiny-imagenet-without-root", lambda g, t: [*BASE, f"run.dir={t / 'r'}", "data.dataset=tiny-imagenet",
                                                 f"data.root={t / 'none'}"], 2, "does not exist; run `blockmae data prepare"),
    ("truncated-state-resumes-milestone", lambda g, t: _copy(g, t, [("last", ckpt.STATE, "truncate")]), 0,
     "state.pt does not match its checksum (truncated or damaged)); resuming from"),
    ("truncated-weights-resumes-milestone", lambda g, t: _copy(g, t, [("last", ckpt.WEIGHTS, "truncate")]), 0,
     "model.safetensors does not match its checksum"),
    ("garbage-meta-resumes-milestone", lambda g, t: _copy(g, t, [("last", ckpt.META, "garbage")]), 0,
     "meta.json is unreadable); resuming from"),
    ("no-intact-checkpoint", lambda g, t: _copy(g, t, [("last", ckpt.STATE, "truncate"),
                                                       ("epoch_0001", ckpt.WEIGHTS, "truncate")]), 2,
     "no intact checkpoint is left to resume from: delete"),
    ("resume-from-damaged-checkpoint", lambda g, t: [*_copy(g, t, [("last", ckpt.STATE, "truncate")])[:-2],
                                                     f"run.dir={t / 'new'}", f"run.resume={t / 'copy/checkpoints/last'}"],
     2, "checkpoints/last is damaged: state.pt does not match its checksum"),
]


@pytest.mark.parametrize("case_id, make_args, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_catalogue(good, tmp_path, case_id, make_args, status, fragment):
    before = _snapshot(good)
    code, out, err = _blockmae(make_args(good, tmp_path))
    assert code == status, out + err
    assert fragment in out + err
    assert "Traceback" not in err
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blockmae: error: "), err
    if "resumes-milestone" in case_id:
        assert f"resuming {tmp_path / 'copy'} from epoch 2, step 2 (the start of the epoch)" in out
        assert ckpt.checkpoint_problem(tmp_path / "copy" / "checkpoints" / "last") is None  # replaced by a good one
    assert _snapshot(good) == before


def test_catalogue_locked_run_dir(good):
    """A run dir in use (the lock held, here by this process): refused in one line naming the holder."""
    before = _snapshot(good)
    with RunLock(good):
        code, out, err = _blockmae(_good_args(good))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"blockmae: error: run dir {good} is in use by pid " in err and "(started " in err
    assert not (good / LOCK_NAME).exists()
    assert _snapshot(good) == before


def test_catalogue_full_disk(good, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing a checkpoint: 'no space left' in one line, no temp files, the run marked failed."""
    before = _snapshot(good)

    def no_space(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    run_dir = tmp_path / "run"
    assert main([*BASE, f"run.dir={run_dir}", f"run.output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("blockmae: error: no space left on the device writing ")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".old")) or p.name.startswith(".")]
    [record] = Registry(tmp_path).list_runs(kind="pretrain")
    assert record.status == "failed"
    assert _snapshot(good) == before


def test_catalogue_read_only_folder(good, tmp_path, monkeypatch, capsys):
    """A folder we may not write (PermissionError, as a non-root user would get): one line, nothing left."""
    before = _snapshot(good)
    read_only = tmp_path / "ro"
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(read_only)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main([*BASE, f"run.dir={read_only / 'run'}", f"run.output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"blockmae: error: cannot write {read_only / 'run'}: permission denied; choose a folder you can write to"
    assert _snapshot(good) == before


def _wait_for(predicate, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the test could act"


@pytest.mark.slow
def test_second_run_on_a_running_dir_refuses_and_sigterm_rerun_resumes_identically(tmp_path):
    """The issue's commands: a second `pretrain run.dir=X` while one runs on X exits non-zero in one line;
    `pretrain --config smoke.yaml run.output_root=DIR` stopped by SIGTERM and rerun verbatim says it resumes
    and ends identical (`blockmae ckpt compare`) to an uninterrupted run."""
    args = ["pretrain", "--config", str(SMOKE), "train.cpu_threads=1", "run.log_every=1", "run.recon_images=0"]
    reference = tmp_path / "reference"
    code, out, err = _blockmae([*args, f"run.output_root={reference}"])
    assert code == 0, out + err

    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "blockmae", *args, f"run.output_root={interrupted}"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    [run_dir] = [p for p in reference.iterdir() if p.is_dir()]
    run_dir = interrupted / run_dir.name  # the same settings: the same run dir name under any output root
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGSTOP)  # the smoke run is quicker than a second start: hold it mid-run
    try:
        code, out, err = _blockmae([*args, f"run.dir={run_dir}"])
    finally:
        proc.send_signal(signal.SIGCONT)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"run dir {run_dir} is in use by pid {proc.pid}" in err
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    meta = ckpt.read_meta(run_dir / "checkpoints" / "last")
    assert not meta["complete"]

    code, out, err = _blockmae(args[:] + [f"run.output_root={interrupted}"])  # verbatim
    assert code == 0, out + err
    assert f"resuming {run_dir} from epoch {meta['epoch'] + 1}, step {meta['step']} (" in out
    code, out, _ = _blockmae(["ckpt", "compare", str(run_dir), str(reference / run_dir.name)])
    assert code == 0 and out.startswith("identical"), out
    statuses = [r.status for r in Registry(interrupted).list_runs(kind="pretrain")]
    assert statuses == ["interrupted", "completed"]
    assert json.loads((run_dir / "env.json").read_text())["resumes"][0]["step"] == meta["step"]
