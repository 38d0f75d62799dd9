"""Resume: the default run dir, global positions, refused changes, RNG streams, rank-0 repair, the run-dir
lock, damaged checkpoints and full disks (in-process, with faults injected by monkeypatching)."""

import errno
import importlib
import json
import os
import random
import signal
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blockmae.cli import main
from blockmae.config import load_config
from blockmae.engine import checkpoint as ckpt
from blockmae.engine.config import PretrainConfig
from blockmae.engine.distributed import DistInfo
from blockmae.lock import LOCK_NAME, RunLock
from blockmae.engine.loop import claim_run_dir
from blockmae.engine.pretrain import Pretrainer

pretrain_module = importlib.import_module("blockmae.engine.pretrain")  # the package exports the function too
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# 128 images in batches of 32: 4 steps per epoch, 2 epochs
TINY = ["data.num_images=128", "train.batch_size=32", "train.epochs=2", "run.log_every=1", "run.recon_images=0",
        "run.milestones=[]", "run.registry=false"]


TRAIN_STEP = Pretrainer._train_step


def _pretrain(*overrides):
    return main(["pretrain", "--config", str(SMOKE), *TINY, *overrides])


def _stop_at(monkeypatch, step, draws=None):
    """Make the run act as if SIGTERM arrived during optimiser step `step`; record the global RNG's draws
    after every step in `draws`."""
    def train_step(self, batches):
        out = TRAIN_STEP(self, batches)
        if draws is not None:
            draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        if self.step == step:
            self.stop_signal = signal.SIGTERM
        return out

    monkeypatch.setattr(Pretrainer, "_train_step", train_step)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "checkpoints" / "last" / "model.safetensors"))


def test_same_command_finds_the_same_run_dir(tmp_path, capsys):
    """Without run.dir: <output_root>/<name>-<hash of the settings>; the same command resumes it."""
    args = [f"run.output_root={tmp_path}", "train.epochs=1"]
    assert _pretrain(*args) == 0
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run_dir.name.startswith("smoke-") and len(run_dir.name) == len("smoke-") + 8
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert _pretrain(*args, "run.log_every=2") == 0  # logging does not change the run: the same dir
    assert f"run {run_dir} is already complete (1 epochs); nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing rewritten
    assert _pretrain(*args, "optim.base_lr=1e-3") == 0  # another recipe is another run
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_stop_then_same_command_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _stop_at(monkeypatch, 6)
    assert _pretrain(f"run.dir={run_dir}") == 130
    err = capsys.readouterr().err
    assert f"stopped at epoch 2, step 6 (2 of 4 steps into the epoch); checkpoint {run_dir / 'checkpoints' / 'last'}" in err
    _stop_at(monkeypatch, -1)
    assert _pretrain(f"run.dir={run_dir}") == 0
    assert f"resuming {run_dir} from epoch 2, step 6 (2 of 4 steps into the epoch)" in capsys.readouterr().out


def test_stop_at_an_epoch_end_says_the_next_epoch(tmp_path, monkeypatch, capsys):
    """A stop in the last step of epoch 1 finishes that epoch: 'epoch 2, step 4 (the start of the epoch)',
    not 'epoch 1, batch 4'; the checkpoint is the epoch's end."""
    run_dir = tmp_path / "run"
    _stop_at(monkeypatch, 4)
    assert _pretrain(f"run.dir={run_dir}") == 130
    assert "stopped at epoch 2, step 4 (the start of the epoch)" in capsys.readouterr().err
    meta = ckpt.read_meta(run_dir / "checkpoints" / "last")
    assert (meta["epoch"], meta["epoch_step"], meta["step"]) == (1, 0, 4)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1]


def test_resumed_random_draws_equal_the_uninterrupted_runs(tmp_path, monkeypatch):
    """The RNG state saved in the checkpoint is the one the resumed run continues (it used to be reseeded)."""
    straight, interrupted = [], []
    _stop_at(monkeypatch, -1, straight)
    assert _pretrain(f"run.dir={tmp_path / 'a'}") == 0
    _stop_at(monkeypatch, 3, interrupted)
    assert _pretrain(f"run.dir={tmp_path / 'b'}") == 130
    _stop_at(monkeypatch, -1, interrupted)
    assert _pretrain(f"run.dir={tmp_path / 'b'}") == 0
    assert len(straight) == 8 and interrupted == straight
    from blockmae.engine.compare import compare_weights

    assert compare_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b")).identical


def test_trajectory_changes_are_refused_then_accepted_when_asked(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _stop_at(monkeypatch, 2)
    assert _pretrain(f"run.dir={run_dir}") == 130
    _stop_at(monkeypatch, -1)
    before = ckpt.read_meta(run_dir / "checkpoints" / "last")
    assert _pretrain(f"run.dir={run_dir}", "train.accum_steps=2", "optim.base_lr=1e-3", "train.cpu_threads=2") == 2
    err = capsys.readouterr().err
    assert ("was trained with other settings that change the training (optim.base_lr 0.00015 -> 0.001, "
            "train.accum_steps 1 -> 2); set them back") in err
    assert "run.allow_changes=[optim.base_lr,train.accum_steps]" in err and "cpu_threads" not in err
    assert ckpt.read_meta(run_dir / "checkpoints" / "last") == before  # nothing written
    assert _pretrain(f"run.dir={run_dir}", "train.accum_steps=2", "run.allow_changes=[train.accum_steps]") == 0
    out = capsys.readouterr().out
    assert "accepting changed settings (run.allow_changes): train.accum_steps 1 -> 2" in out
    assert "from epoch 1, step 2 (2 of 4 steps into the epoch)" in out  # optimiser steps, not micro-batches
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 9))
    assert {"kind": "resume", "epoch": 0, "step": 2, "changes": {"train.accum_steps": [1, 2]}} in records
    env = json.loads((run_dir / "env.json").read_text())
    assert env["resumes"][-1]["accepted_changes"] == {"train.accum_steps": [1, 2]}


def _trainer(tmp_path, *overrides):
    cfg = load_config(PretrainConfig, SMOKE, [*TINY, *overrides])
    return Pretrainer(cfg, DistInfo(), torch.device("cpu"))


def test_masks_of_a_step_do_not_depend_on_accum_steps(tmp_path):
    one, two = _trainer(tmp_path, f"run.dir={tmp_path / 'one'}"), _trainer(tmp_path, f"run.dir={tmp_path / 'two'}",
                                                                             "train.accum_steps=2")
    try:
        for trainer in (one, two):
            trainer.step = 5
        whole = one._masks(0, 32)
        halves = [two._masks(m, 16) for m in range(2)]
        assert torch.equal(whole.mask, torch.cat([h.mask for h in halves]))
        one.step = 6
        assert not torch.equal(whole.mask, one._masks(0, 32).mask)
    finally:
        one.release(), two.release()


def test_only_rank_0_repairs_and_locks(tmp_path, monkeypatch):
    """Rank 1 neither renames checkpoint folders nor takes the lock: it takes rank 0's answer."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    for name in ("last.old", "last.tmp"):
        (ckpts / name).mkdir(parents=True)
        for file in (ckpt.WEIGHTS, ckpt.STATE, ckpt.META):
            (ckpts / name / file).write_text("{}")
    cfg = load_config(PretrainConfig, SMOKE, [*TINY, f"run.dir={run_dir}"])
    answer = {"run_dir": str(run_dir), "resume": str(ckpts / "last")}
    monkeypatch.setattr(pretrain_module.dist, "broadcast_object", lambda obj: answer)
    got_dir, lock, resume = claim_run_dir(cfg, DistInfo(rank=1, world_size=2))
    assert (got_dir, lock, resume) == (run_dir, None, ckpts / "last")
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.old", "last.tmp"] and not (run_dir / LOCK_NAME).exists()
    monkeypatch.setattr(pretrain_module.dist, "broadcast_object", lambda obj: obj)
    got_dir, lock, resume = claim_run_dir(cfg, DistInfo(rank=0, world_size=2))
    try:
        assert (ckpts / "last").is_dir() and (run_dir / LOCK_NAME).is_file()  # rank 0 repaired and locked
    finally:
        lock.release()
    assert not (run_dir / LOCK_NAME).exists()


def test_rank_0_errors_reach_every_rank(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(pretrain_module.dist, "broadcast_object", lambda obj: sent.append(obj) or obj)
    cfg = load_config(PretrainConfig, SMOKE, [*TINY, f"run.dir={tmp_path}", f"run.resume={tmp_path / 'none'}"])
    with pytest.raises(Exception, match="no checkpoint there"):
        claim_run_dir(cfg, DistInfo(rank=0, world_size=2))
    assert "no checkpoint there" in sent[0]["error"]
    monkeypatch.setattr(pretrain_module.dist, "broadcast_object", lambda obj: sent[0])
    with pytest.raises(Exception, match="no checkpoint there"):
        claim_run_dir(cfg, DistInfo(rank=1, world_size=2))


def test_a_locked_run_dir_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        assert _pretrain(f"run.dir={run_dir}") == 2
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]  # the refused run wrote nothing
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"run dir {run_dir} is in use by pid {os.getpid()} on {socket.gethostname()} (started " in err


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname(), "started_at": "2026-01-01T00:00:00"}
    (run_dir / LOCK_NAME).write_text(json.dumps(dead))
    assert _pretrain(f"run.dir={run_dir}", "train.epochs=1") == 0
    assert (f"taking over the lock of {run_dir} from pid {dead['pid']} on {dead['host']} (started "
            f"2026-01-01T00:00:00), which is no longer running") in capsys.readouterr().err
    assert not (run_dir / LOCK_NAME).exists()  # released at the end


@pytest.fixture
def run_with_milestone(tmp_path):
    run_dir = tmp_path / "run"
    assert _pretrain(f"run.dir={run_dir}", "run.milestones=[1]", "train.epochs=1") == 0
    return run_dir


@pytest.mark.parametrize("damage, bad_file", [
    (lambda d: (d / ckpt.STATE).write_bytes((d / ckpt.STATE).read_bytes()[:1000]), "state.pt does not match"),
    (lambda d: (d / ckpt.WEIGHTS).write_bytes((d / ckpt.WEIGHTS).read_bytes()[:-10]), "model.safetensors does not"),
    (lambda d: (d / ckpt.META).write_text("{garbage"), "meta.json is unreadable"),
])
def test_damaged_last_resumes_from_the_intact_milestone(run_with_milestone, damage, bad_file, capsys):
    last = run_with_milestone / "checkpoints" / "last"
    damage(last)
    assert _pretrain(f"run.dir={run_with_milestone}", "run.milestones=[1]", "train.epochs=1") == 0
    captured = capsys.readouterr()
    assert f"warning: {last} is damaged ({bad_file}" in captured.err
    assert f"resuming from {run_with_milestone / 'checkpoints' / 'epoch_0001'} instead" in captured.err
    assert "already complete" in captured.out


def test_no_intact_checkpoint_says_what_to_delete(run_with_milestone, capsys):
    for name in ("last", "epoch_0001"):
        path = run_with_milestone / "checkpoints" / name / ckpt.STATE
        path.write_bytes(path.read_bytes()[:100])
    assert _pretrain(f"run.dir={run_with_milestone}", "run.milestones=[1]", "train.epochs=1") == 2
    err = capsys.readouterr().err
    assert "epoch_0001 is damaged (state.pt does not match its checksum" in err
    assert f"delete {run_with_milestone / 'checkpoints'} to start this run again from scratch" in err


def test_checkpoints_without_checksums_still_resume(run_with_milestone, capsys):
    last = run_with_milestone / "checkpoints" / "last"
    meta = ckpt.read_meta(last)
    del meta["sha256"]
    (last / ckpt.META).write_text(json.dumps(meta))
    assert ckpt.checkpoint_problem(last) is None
    assert _pretrain(f"run.dir={run_with_milestone}", "run.milestones=[1]", "train.epochs=2",
                     "run.allow_changes=[train.epochs]") == 0
    assert f"resuming {run_with_milestone} from epoch 2, step 4" in capsys.readouterr().out


def test_full_disk_is_one_line_leaves_no_temp_files_and_marks_the_run_failed(tmp_path, monkeypatch, capsys):
    def no_space(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    run_dir = tmp_path / "run"
    assert _pretrain(f"run.dir={run_dir}", f"run.output_root={tmp_path}", "run.registry=true") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device writing" in err
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or ".old" in p.name]
    assert not (run_dir / "checkpoints" / "last").exists()
    from blockmae.registry import Registry

    [record] = Registry(tmp_path).list_runs(kind="pretrain")
    assert record.status == "failed" and "no space left" in record.metrics["error"]


def test_without_a_terminal_each_log_interval_prints_a_line(tmp_path, monkeypatch, capsys):
    """stderr is a file (SLURM's .out, nohup, CI): no bar, a plain line per log interval instead; a terminal
    keeps the bar alone."""
    assert _pretrain(f"run.dir={tmp_path / 'file'}", "run.log_every=2") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    pattern = (r"epoch [12]/2  step [24]/4  loss \d+\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+ img/s  "
               r"ETA \d+:\d\d:\d\d  mem \d+ MB")
    assert len(lines) == 4 and all(re.fullmatch(pattern, line) for line in lines), lines
    assert [line[:20] for line in lines] == ["epoch 1/2  step 2/4 ", "epoch 1/2  step 4/4 ",
                                             "epoch 2/2  step 2/4 ", "epoch 2/2  step 4/4 "]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert _pretrain(f"run.dir={tmp_path / 'terminal'}", "run.log_every=2") == 0
    captured = capsys.readouterr()
    assert not [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert "epoch 2/2" in captured.err  # the bar
