"""End-to-end pretraining: run dir contents, determinism, SIGKILL + resume, non-finite loss, bad resume."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blockmae.cli import main
from blockmae.config import load_config
from blockmae.engine import checkpoint as ckpt
from blockmae.engine.compare import compare_weights
from blockmae.engine.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# A smaller smoke run: 256 images, 8 steps of 32 per epoch, 3 epochs; one thread (the CI box is shared).
SMALL = ["data.num_images=256", "train.batch_size=32", "train.cpu_threads=1", "run.log_every=1",
         "run.recon_images=0", "run.milestones=[]", "run.registry=false"]


def _blockmae(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "blockmae", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _losses(run_dir):
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r["loss"]) for r in lines]


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "checkpoints" / "last" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The small config, uninterrupted, through `blockmae pretrain`."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _finish(_blockmae("pretrain", "--config", str(SMOKE), *SMALL, f"run.dir={run_dir}"))
    return run_dir


def test_smoke_command_leaves_a_complete_run_dir(tmp_path):
    run_dir = tmp_path / "smoke"
    out = _finish(_blockmae("pretrain", "--config", str(SMOKE), f"run.dir={run_dir}", f"run.output_root={tmp_path}",
                            "train.cpu_threads=1"))
    assert f"run dir: {run_dir}" in out
    cfg = load_config(PretrainConfig, run_dir / "config.yaml")  # the saved config is a loadable config
    assert cfg.train.epochs == 3 and cfg.run.dir == str(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["img_per_s"] > 0 for r in records)
    assert {"lr", "grad_norm", "data_time", "memory_mb"} <= set(records[0])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 0 and env["packages"]["torch"] and env["device"]["type"] == "cpu"
    for name, epoch in (("last", 3), ("epoch_0002", 2)):  # epoch 2 is the smoke config's milestone
        directory = run_dir / "checkpoints" / name
        state = torch.load(directory / "state.pt", weights_only=True)
        assert ckpt.read_meta(directory)["epoch"] == state["epoch"] == epoch
        assert state["optimizer"]["state"] and state["rng"]["torch"].dtype == torch.uint8
    assert (run_dir / "figures" / "reconstructions_epoch_0002.png").stat().st_size > 1000
    assert (run_dir / "figures" / "reconstructions_epoch_0003.png").stat().st_size > 1000
    # the registry in the output root has the run, completed, with its final loss
    from blockmae.registry import Registry

    [record] = Registry(tmp_path).list_runs(kind="pretrain")
    assert record.status == "completed" and record.metrics["loss"] == pytest.approx(epochs[-1]["loss"])
    # running it again finds the finished run and does not train again
    again = _finish(_blockmae("pretrain", "--config", str(SMOKE), f"run.dir={run_dir}", f"run.output_root={tmp_path}"))
    assert "already complete" in again


@pytest.mark.slow
def test_train_script_repeats_the_run_exactly(reference_run, tmp_path):
    """Same config and seed on the CPU: the same loss curve and the same weights, via train/train_pretrain.py."""
    run_dir = tmp_path / "again"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds src/ by itself
    proc = subprocess.run([sys.executable, "train/train_pretrain.py", "--config", str(SMOKE), *SMALL,
                           f"run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _losses(run_dir) == _losses(reference_run)
    assert len(_losses(run_dir)) == 24 + 3
    assert compare_weights(_weights(run_dir), _weights(reference_run)).identical


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    args = ("pretrain", "--config", str(SMOKE), *SMALL, f"run.dir={run_dir}", "run.ckpt_every_steps=3")
    proc = _blockmae(*args)
    meta_path = run_dir / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta["epoch"] >= 1 and meta["epoch_step"] > 0:  # a mid-epoch checkpoint in the second epoch
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = ckpt.read_meta(ckpt.find_checkpoint(run_dir))
    assert 0 < killed_at["step"] < 24 and not killed_at["complete"]

    out = _finish(_blockmae(*args))  # the same command resumes
    assert (f"resuming {run_dir} from epoch {killed_at['epoch'] + 1}, step {killed_at['step']} "
            f"({killed_at['epoch_step']} of 8 steps into the epoch); checkpoint {run_dir / 'checkpoints' / 'last'}") in out
    assert compare_weights(_weights(run_dir), _weights(reference_run)).identical
    # metrics logged after the checkpoint and before the kill are not duplicated
    assert _losses(run_dir) == _losses(reference_run)
    result = subprocess.run([sys.executable, "-m", "blockmae", "ckpt", "compare", str(run_dir), str(reference_run)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("identical")


def test_incompatible_checkpoint_is_a_clear_error(reference_run, tmp_path, capsys):
    code = main(["pretrain", "--config", str(SMOKE), *SMALL, f"run.resume={reference_run}", f"run.dir={tmp_path}/b",
                 "model.embed_dim=32", "model.num_heads=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.embed_dim 64 vs 32" in err and str(reference_run) in err


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """The loss turns NaN in epoch 2: exit 2 with a message, `last` still the (finite) end of epoch 1."""
    pretrain_module = importlib.import_module("blockmae.engine.pretrain")  # the package exports the function too
    build = pretrain_module.build_mae

    def poisoned_build(*args, **kwargs):
        model = build(*args, **kwargs)
        forward, calls = model.forward, []

        def forward_with_nan(*a, **k):
            out = forward(*a, **k)
            calls.append(1)
            if len(calls) > 10:  # 8 steps per epoch: epoch 2, step 3
                out.loss = out.loss * float("nan")
            return out

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(pretrain_module, "build_mae", poisoned_build)
    run_dir = tmp_path / "nan"
    code = main(["pretrain", "--config", str(SMOKE), *SMALL, f"run.dir={run_dir}", "run.log_every=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and f"last good checkpoint is {run_dir / 'checkpoints' / 'last'} (epoch 1, step 8)" in err
    weights = _weights(run_dir)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_torchvision_folder_loader(shared_data, tmp_path):
    """data.loader=torchvision: ImageFolder + DataLoader over a <class>/<image> tree (Tiny-ImageNet's train/)."""
    run_dir = tmp_path / "folder"
    code = main(["pretrain", "--config", str(SMOKE), *SMALL, "data.loader=torchvision", "data.dataset=folder",
                 f"data.root={shared_data / 'tiny-imagenet-200-mini' / 'train'}", "data.workers=0",
                 "data.num_images=null", "train.batch_size=50", "train.epochs=1", f"run.dir={run_dir}"])
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]  # 200 images / 50
    assert ckpt.read_meta(run_dir / "checkpoints" / "last")["complete"]


@pytest.mark.slow
def test_sigterm_checkpoints_stops_and_resumes_identically(reference_run, tmp_path):
    """SIGTERM (SLURM preemption, Ctrl-C alike): a checkpoint at the next step, status 130, then a resume."""
    run_dir = tmp_path / "preempted"
    args = ("pretrain", "--config", str(SMOKE), *SMALL, f"run.dir={run_dir}", f"run.output_root={tmp_path}",
            "run.registry=true")
    proc = _blockmae(*args)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    meta = ckpt.read_meta(run_dir / "checkpoints" / "last")
    assert "SIGTERM: saving a checkpoint" in out and f"stopped at epoch {meta['epoch'] + 1}, step {meta['step']} (" in out
    assert 3 <= meta["step"] < 24 and not meta["complete"]
    _finish(_blockmae(*args))
    assert compare_weights(_weights(run_dir), _weights(reference_run)).identical
    assert _losses(run_dir) == _losses(reference_run)
    from blockmae.registry import Registry

    assert [r.status for r in Registry(tmp_path).list_runs(kind="pretrain")] == ["interrupted", "completed"]


def test_every_step_is_in_a_logged_window(tmp_path):
    """log_every=3 over 8 steps: windows end at steps 3, 6 and 8 (the epoch's tail), and they average to
    the epoch's loss."""
    run_dir = tmp_path / "tail"
    code = main(["pretrain", "--config", str(SMOKE), *SMALL, "run.log_every=3", "train.epochs=1", f"run.dir={run_dir}"])
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [3, 6, 8]
    epoch = next(r for r in records if r["kind"] == "epoch")
    weighted = (3 * steps[0]["loss"] + 3 * steps[1]["loss"] + 2 * steps[2]["loss"]) / 8
    assert weighted == pytest.approx(epoch["loss"], rel=1e-6)
