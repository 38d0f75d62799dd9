"""DDP: rank layout, and 2 ranks x B/2 == 1 rank x B (gloo on the CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blockmae.data.base import ImageTensorDataset
from blockmae.data.loader import TensorBatchLoader
from blockmae.engine.compare import compare_weights
from blockmae.engine.distributed import DistInfo, rows_of_rank, torchrun_env

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _one_rank_and_two(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`blockmae <args>` in one process into tmp_path/one, then under torchrun with 2 ranks into tmp_path/two;
    both must succeed. Returns the torchrun run."""
    single = subprocess.run([sys.executable, "-m", "blockmae", *args, f"run.dir={tmp_path / 'one'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "blockmae", *args, f"run.dir={tmp_path / 'two'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    return ddp


def test_rank_rows_follow_the_loader_shards():
    """Rank r's batch b holds rows r::W of the single-process batch b: masks drawn for the global batch
    and sliced with rows_of_rank land on the same images whatever the number of ranks."""
    data = ImageTensorDataset(torch.zeros(103, 3, 4, 4, dtype=torch.uint8), torch.arange(103), ["x"] * 103)
    world, per_rank = 4, 5
    single = TensorBatchLoader(data, per_rank * world, seed=3)
    shards = [TensorBatchLoader(data, per_rank, seed=3, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        for loader in (single, *shards):
            loader.set_epoch(epoch)
        order = single.indices()
        for b in range(len(single)):
            global_batch = order[b * per_rank * world:(b + 1) * per_rank * world]
            for rank, shard in enumerate(shards):
                rows = rows_of_rank(per_rank * world, DistInfo(rank, world))
                assert torch.equal(shard.indices()[b * per_rank:(b + 1) * per_rank], global_batch[rows])


def test_torchrun_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert torchrun_env() == DistInfo(0, 1, 0) and torchrun_env().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = torchrun_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path):
    """2 ranks x 32 vs 1 rank x 64 for 2 epochs of 4 steps, with augmentation: crops and masks are both
    drawn for the global batch and sliced per rank, so every image is cropped and masked alike."""
    common = ["pretrain", "--config", str(SMOKE), "data.num_images=256", "train.batch_size=64", "train.epochs=2",
              "run.log_every=1",
              "optim.lr=1e-3", "optim.warmup_epochs=0", "train.cpu_threads=1", "run.recon_images=0", "run.milestones=[]",
              "run.registry=false"]
    ddp = _one_rank_and_two(common, tmp_path)
    assert "2 rank(s)" in ddp.stdout and ddp.stdout.count("run dir:") == 1  # rank 0 alone speaks
    from safetensors.torch import load_file

    one = load_file(str(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors"))
    result = compare_weights(one, two)
    assert not (result.only_a or result.only_b or result.shape_mismatch)
    # Summation order differs between 1 and 2 ranks, and Adam divides by sqrt(v), so float noise in small
    # gradients becomes steps of up to lr (1e-3) — the key part of the qkv biases has an exactly-zero
    # gradient, for instance. A wrong shard, crop or mask would move every tensor by ~lr per step.
    for name in one:
        assert (one[name] - two[name]).abs().max() < 2e-4, name

    # and the logged (rank-averaged) losses agree
    def losses(d):
        return [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "two")) == 2 * 4 + 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)


@pytest.mark.slow
def test_two_ranks_match_one_rank_on_the_folder_loader(shared_data, tmp_path):
    """data.loader=torchvision under torchrun: each rank reads its share of every global batch, with the
    crops seeded per image, so 2 ranks x 25 train like 1 rank x 50 (200 Tiny-ImageNet train images)."""
    common = ["pretrain", "--config", str(SMOKE), "data.loader=torchvision", "data.dataset=folder",
              f"data.root={shared_data / 'tiny-imagenet-200-mini' / 'train'}", "data.workers=0",
              "data.num_images=null", "train.batch_size=50", "train.epochs=1", "run.log_every=1",
              "optim.lr=1e-3", "optim.warmup_epochs=0", "train.cpu_threads=1", "run.recon_images=0",
              "run.milestones=[]", "run.registry=false"]
    ddp = _one_rank_and_two(common, tmp_path)
    assert "2 rank(s), 4 steps/epoch" in ddp.stdout

    def losses(d):
        return [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "two")) == 4 + 1
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


# Runs blockmae under torchrun with the ShapeTex cache writer counted (a line per build in $BUILD_LOG) and
# each rank's pid recorded (in $PID_DIR/<rank>), so a test can see who built and signal one rank.
_COUNTING_WRAPPER = """
import os, sys
from pathlib import Path
from blockmae.data import shapetex
write = shapetex._write_cache
def counted(*args, **kwargs):
    with open(os.environ["BUILD_LOG"], "a") as log:
        log.write(os.environ.get("RANK", "?") + "\\n")
    return write(*args, **kwargs)
shapetex._write_cache = counted
Path(os.environ["PID_DIR"], os.environ.get("RANK", "0")).write_text(str(os.getpid()))
from blockmae.cli import main
sys.exit(main())
"""


def _torchrun_counted(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    (tmp_path / "counted.py").write_text(_COUNTING_WRAPPER)
    (tmp_path / "pids").mkdir()
    env = {**os.environ, "BLOCKMAE_CACHE_DIR": str(tmp_path / "cache"), "BUILD_LOG": str(tmp_path / "builds.log"),
           "PID_DIR": str(tmp_path / "pids"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(tmp_path / "counted.py"), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_ranks_without_a_cache_build_it_once_and_both_train(tmp_path):
    """No dataset cache: rank 0 builds it, rank 1 waits and reads it; both ranks train to the end."""
    proc = _torchrun_counted(tmp_path, ["pretrain", "--config", str(SMOKE), "data.num_images=128", "train.epochs=1",
                                        "run.recon_images=0", "run.registry=false", "train.cpu_threads=1",
                                        f"run.dir={tmp_path / 'run'}"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert (tmp_path / "builds.log").read_text().split() == ["0"]  # one build, by rank 0
    assert "2 rank(s)" in out and len(list((tmp_path / "cache").rglob("*.pt"))) == 1
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())["complete"]


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_after_the_step(tmp_path):
    """SIGTERM to rank 1 alone, with logging (the ranks' regular sync) far away: both ranks stop after the
    step under way and `last` holds that step, not the end of the epoch."""
    # 512 steps: on an idle machine 128 were all done before the signal came (the rank had exited)
    proc = _torchrun_counted(tmp_path, ["pretrain", "--config", str(SMOKE), "data.num_images=8192",
                                        "train.batch_size=16", "train.epochs=1", "run.log_every=100000",
                                        "run.recon_images=0", "run.registry=false", "train.cpu_threads=1",
                                        "run.ckpt_every_minutes=0", f"run.dir={tmp_path / 'run'}"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (tmp_path / "run" / "env.json").is_file():
        time.sleep(0.1)
    time.sleep(2)  # some steps in (512 per epoch)
    os.kill(int((tmp_path / "pids" / "1").read_text()), signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    meta = json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())
    assert not meta["complete"] and 0 < meta["step"] < 512, out + err
