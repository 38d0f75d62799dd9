"""Fine-tuning: resume is bit-exact, partial fine-tuning freezes, layer decay, registry rows, saved classifier."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from blockmae.cli import main
from blockmae.config import load_config
from blockmae.finetune.config import FinetuneConfig
from blockmae.finetune.engine import Finetuner, finetune, load_classifier
from blockmae.models import build_mae, save_mae
from blockmae.registry import Registry

SMALL = ["data.dataset=shapetex", "data.num_images=64", "data.workers=0", "model.preset=vit_nano", "model.img_size=32",
         "model.patch_size=4", "train.batch_size=16", "train.device=cpu", "train.precision=fp32", "train.cpu_threads=1",
         "optim.warmup_epochs=1", "run.log_every=1"]


def _cfg(tmp_path, *overrides):
    return load_config(FinetuneConfig, None, [*SMALL, f"run.output_root={tmp_path}/out", *overrides])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A blockmae 'run dir' with checkpoints/last/model.safetensors (what `blockmae pretrain` leaves)."""
    run = tmp_path_factory.mktemp("pre") / "run"
    torch.manual_seed(0)
    save_mae(build_mae("vit_nano", img_size=32, patch_size=4), run / "checkpoints" / "last" / "model.safetensors")
    return run


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, pretrained, monkeypatch):
    args = [f"checkpoint={pretrained}", "train.epochs=2", "run.ckpt_every_steps=1"]
    _, whole = finetune(_cfg(tmp_path, *args, f"run.dir={tmp_path}/whole"))

    real_step = Finetuner._train_step

    def crash_at_step_6(self, batches):  # mid-epoch 2 (4 steps per epoch): the last checkpoint is step 5's
        if self.step == 5 and not getattr(self, "crashed", False):
            self.crashed = True
            raise KeyboardInterrupt
        return real_step(self, batches)

    monkeypatch.setattr(Finetuner, "_train_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(tmp_path, *args, f"run.dir={tmp_path}/cut"))
    assert json.loads((tmp_path / "cut/checkpoints/last/meta.json").read_text())["step"] == 5
    monkeypatch.setattr(Finetuner, "_train_step", real_step)
    _, resumed = finetune(_cfg(tmp_path, *args, f"run.dir={tmp_path}/cut"))

    a, b = (load_file(str(tmp_path / d / "checkpoints/last/model.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed == whole
    env = json.loads((tmp_path / "cut/env.json").read_text())
    assert [r["step"] for r in env["resumes"]] == [5] and env["seed"] == 0
    steps = [json.loads(line) for line in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, 9))  # nothing logged twice
    rows = Registry(tmp_path / "out").list_runs()
    assert sorted(r.status for r in rows) == ["completed", "completed", "interrupted"]
    assert all(r.kind == "finetune" and r.parent == str(pretrained.resolve()) for r in rows)
    results = json.loads((tmp_path / "whole/results.json").read_text())
    assert results["metrics"]["epochs"] == 2 and len(results["history"]) == 2
    assert 0 <= results["metrics"]["top1_ci95"][0] <= results["metrics"]["top1"] <= results["metrics"]["top1_ci95"][1]


def test_partial_finetuning_trains_only_the_last_blocks_and_layer_decay_scales_lrs(tmp_path, pretrained):
    cfg = _cfg(tmp_path, f"checkpoint={pretrained}", "train.epochs=1", "model.train_blocks=1", "data.rand_augment=null",
               f"run.dir={tmp_path}/partial")
    trainer = Finetuner(cfg, *_single_cpu())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    assert torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])
    assert torch.equal(before["patch_embed.proj.weight"], after["patch_embed.proj.weight"])
    assert not torch.equal(before["blocks.1.mlp.fc1.weight"], after["blocks.1.mlp.fc1.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])

    full = Finetuner(_cfg(tmp_path, f"checkpoint={pretrained}", f"run.dir={tmp_path}/full"), *_single_cpu())
    scales = {round(g["lr_scale"], 6) for g in full.optimizer.param_groups}
    # vit_nano: 2 blocks -> layers embed (0), blocks (1, 2), head (3): scales 0.75^3 .. 1
    assert scales == {round(0.75 ** k, 6) for k in range(4)}


def test_random_baseline_and_saved_classifier(tmp_path):
    cfg = _cfg(tmp_path, "checkpoint=random", "train.epochs=1", "mix.mixup=0", "mix.cutmix=0",
               f"run.dir={tmp_path}/rand")
    run_dir, results = finetune(cfg)
    assert Registry(tmp_path / "out").list_runs()[0].parent == "random"
    model = load_classifier(run_dir).eval()
    assert model.num_classes == 10 and model.global_pool == "avg"
    # the saved classifier reproduces the run's own eval accuracy
    from blockmae.data import load_dataset
    from blockmae.data.augment import normalize

    val = load_dataset("shapetex", "val", image_size=32, num_images=64)
    with torch.no_grad():
        top1 = (model(normalize(val.images)).argmax(1) == val.labels).float().mean().item()
    assert top1 == pytest.approx(results["top1"], abs=1e-6)


def test_cli_errors_are_one_line_and_rope_encoders_fine_tune(tmp_path, pretrained, capsys):
    code = main(["finetune", *SMALL, f"checkpoint={pretrained}", "train.batch_size=15"])
    assert code == 2 and "even size" in capsys.readouterr().err
    rope = tmp_path / "rope.safetensors"
    save_mae(build_mae("vit_nano", img_size=32, patch_size=4, pos_embed="rope"), rope)
    code = main(["finetune", *SMALL, f"checkpoint={rope}", f"run.dir={tmp_path}/r", f"run.output_root={tmp_path}",
                 "train.epochs=1"])  # a RoPE encoder fine-tunes as timm's Eva
    assert code == 0 and "final epoch 1" in capsys.readouterr().out
    assert type(load_classifier(tmp_path / "r")).__name__ == "Eva"


def _single_cpu():
    from blockmae.engine.distributed import DistInfo

    return DistInfo(), torch.device("cpu")


@pytest.mark.slow
def test_two_ranks_under_torchrun(tmp_path, pretrained):
    """DDP (gloo on the CPU): 2 ranks x 8 images per step train and evaluate; rank 0 alone writes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = [*SMALL, f"checkpoint={pretrained}", "train.epochs=1", f"run.dir={tmp_path}/ddp",
            f"run.output_root={tmp_path}/out"]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "blockmae", "finetune", *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 rank(s)" in out.stdout and out.stdout.count("done:") == 1
    results = json.loads((tmp_path / "ddp/results.json").read_text())
    assert results["metrics"]["epochs"] == 1 and results["metrics"]["num_eval"] == 64
    assert json.loads((tmp_path / "ddp/checkpoints/last/meta.json").read_text())["world_size"] == 2


def _torchrun_finetune(*args):
    """`blockmae finetune` on 2 ranks (gloo on the CPU)."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "blockmae", "finetune", *SMALL, *args], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_repair_on_rank_0_and_resume_from_the_intact_checkpoint(tmp_path, pretrained):
    """An interrupted swap of `last` (last.old whole, last.tmp damaged): rank 0 alone puts last.old back, the
    damaged last.tmp is passed over (checksums), and both ranks resume from epoch 1's end."""
    from blockmae.engine import checkpoint as ckpt

    run_dir = tmp_path / "ft"
    args = [f"checkpoint={pretrained}", f"run.dir={run_dir}", "run.registry=false", "data.rand_augment=null"]
    finetune(_cfg(tmp_path, *args, "train.epochs=1"))
    ckpts = run_dir / "checkpoints"
    (ckpts / "last").rename(ckpts / "last.old")
    shutil.copytree(ckpts / "last.old", ckpts / "last.tmp")
    state = ckpts / "last.tmp" / ckpt.STATE
    state.write_bytes(state.read_bytes()[:1000])  # complete, but not what its checksum says
    out = _torchrun_finetune(*args, "train.epochs=2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(f"resuming {run_dir} from epoch 2, step 4 (the start of the epoch)") == 1
    meta = ckpt.read_meta(ckpts / "last")
    assert (meta["epoch"], meta["step"], meta["world_size"]) == (2, 8, 2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["last"]
    assert [r["step"] for r in json.loads((run_dir / "env.json").read_text())["resumes"]] == [4]


@pytest.mark.slow
def test_two_ranks_refuse_a_locked_run_dir_and_a_damaged_checkpoint(tmp_path, pretrained):
    """The run dir's lock holds against a fine-tuning run on 2 ranks; a checkpoint whose checksum fails is
    never resumed from: one line naming it, on both ranks."""
    import os

    from blockmae.engine import checkpoint as ckpt
    from blockmae.lock import LOCK_NAME, RunLock

    run_dir = tmp_path / "ft"
    args = [f"checkpoint={pretrained}", f"run.dir={run_dir}", "run.registry=false", "train.epochs=1"]
    with RunLock(run_dir):
        out = _torchrun_finetune(*args)
        assert out.returncode != 0 and f"run dir {run_dir} is in use by pid {os.getpid()}" in out.stderr
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]  # the refused run wrote nothing
    finetune(_cfg(tmp_path, *args))
    weights = run_dir / "checkpoints" / "last" / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    out = _torchrun_finetune(*args, "train.epochs=2")
    errors = [line for line in out.stderr.splitlines() if line.startswith("blockmae: error:")]
    assert out.returncode != 0 and len(errors) == 2  # rank 1 says rank 0's error (torchrun adds its report)
    assert "last is damaged (model.safetensors does not match its checksum" in out.stderr
    assert f"delete {run_dir / 'checkpoints'} to start this run again from scratch" in out.stderr


def test_bench_finetune_data_prints_ratios_against_the_batched_path(capsys):
    assert main(["bench", "finetune-data", "--images", "64", "--batch-size", "32", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ratio_vs_batched"]["batched_crop_flip"] == 1.0
    assert set(report["img_per_s"]) == {"batched_crop_flip", "randaugment_main_process", "randaugment_0_workers"}
