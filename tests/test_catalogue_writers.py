"""The catalogue of bad input and faults for the commands that write (issue 20): export, weights package and
verify, probe, eval, report, viz, masks, quickstart, sweep, runs, finetune.

Each case is a command, its exit status, a fragment of its message, and a check that nothing good changed:
the folder the case aims at keeps its files and their hashes (`world` folders shared by the module, or a
tmp_path one). Errors must be one line (`blockmae: error: ...`, status 2), never a traceback. Faults that
cannot be made from outside (a read-only or full file system: the tests run as root) are injected in-process
by making every write under `tmp_path/ro` fail. Cases tagged BAD or POOR are the issue's; the rest are ours.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from blockmae.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
PROBE_YAML = ROOT / "configs" / "linear_probe.yaml"
REFERENCES = ROOT / "src" / "blockmae" / "resources" / "references"
PRETRAIN = ["pretrain", "--config", str(SMOKE), "data.num_images=128", "train.epochs=2", "run.recon_images=0"]
PROBE = ["probe", "--config", str(PROBE_YAML), "encoder.preset=vit_nano", "data.num_images=100", "linear.epochs=1",
         "linear.warmup_epochs=0", "linear.batch_size=50", "data.cache_features=false", "device=cpu"]
QUICK = ["pretrain.model.preset=vit_nano", "pretrain.data.num_images=128", "pretrain.train.epochs=1"]
SPEC = f"""
name: tiny
base: {SMOKE}
overrides: {{data.num_images: 128, train.epochs: 1, run.recon_images: 0, run.ckpt_every_minutes: 0}}
grid: {{mask.block: [2]}}
probe:
  config: {PROBE_YAML}
  overrides: {{device: cpu, data.num_images: 100, linear.epochs: 3, linear.warmup_epochs: 1, linear.batch_size: 50}}
evaluations:
  - {{name: linear, dataset: shapetex}}
"""


def _blockmae(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "blockmae", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if p.name != "registry.sqlite"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Outputs no case may change: a pretraining run dir, its timm export, a copy of the shipped references,
    a finished one-arm sweep (with its spec) and a probe."""
    w = tmp_path_factory.mktemp("world")
    code, out, err = _blockmae([*PRETRAIN, f"run.dir={w / 'base'}", f"run.output_root={w}"])
    assert code == 0, out + err
    code, out, err = _blockmae(["export", w / "base", "--format", "timm", "--out", w / "exp"])
    assert code == 0, out + err
    shutil.copytree(REFERENCES, w / "refs")
    (w / "spec.yaml").write_text(SPEC)
    code, out, err = _blockmae(["sweep", "run", w / "spec.yaml", "--out", w / "sweep", "--executor", "debug"])
    assert code == 0, out + err
    code, out, err = _blockmae([*PROBE, "checkpoint=random", f"output_root={w}", f"run_dir={w / 'probe'}"])
    assert code == 0, out + err
    return w


# ---- builders of bad inputs (w: the world, t: this case's tmp_path) --------------------------------

def _file(t: Path, name: str = "file") -> Path:
    (t / name).write_text("not a folder")
    return t / name


def _with_keep(t: Path) -> Path:
    (t / "x").mkdir()
    (t / "x" / "keep").write_text("mine")
    return t / "x"


def _folder(t: Path, name: str = "d.png") -> Path:
    (t / name).mkdir()
    return t / name


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _refs_with_keep(t: Path) -> Path:
    """A references root whose folder of the packaged id holds a file of the user's."""
    (t / "refs" / "quickstart-block2-s0").mkdir(parents=True)
    (t / "refs" / "quickstart-block2-s0" / "keep").write_text("mine")
    return t / "refs"


def _other_spec(t: Path) -> Path:
    path = t / "other.yaml"
    path.write_text(SPEC.replace("name: tiny", "name: other"))
    return path


def _edited_sweep(w: Path, t: Path) -> list:
    """A copy of the finished sweep, its spec then edited in place (probe epochs 3 -> 4)."""
    shutil.copytree(w / "sweep", t / "sweep")
    spec = t / "spec.yaml"
    spec.write_text(SPEC.replace("linear.epochs: 3", "linear.epochs: 4"))
    return ["sweep", "run", spec, "--out", t / "sweep", "--executor", "debug"]


def _sweep_without_arm(w: Path, t: Path) -> list:
    shutil.copytree(w / "sweep", t / "sweep")
    [arm] = json.loads((t / "sweep" / "sweep.json").read_text())["arms"]
    shutil.rmtree(t / "sweep" / arm["run_dir"])
    return ["report", "--root", t / "sweep", "--out", t / "r.html"]


def _edited_manifest(w: Path, t: Path, key: str, value) -> list:
    shutil.copytree(w / "refs", t / "refs")
    path = t / "refs" / "quickstart-block2-s0" / "manifest.json"
    manifest = json.loads(path.read_text())
    if key == "parameters":
        manifest["weights"]["parameters"] += 1
    elif key == "config":
        manifest["config"]["train"]["epochs"] = 999
        manifest["config_sha256"] = "0" * 64
    else:
        manifest[key] = value
    path.write_text(json.dumps(manifest))
    return ["weights", "verify", "--root", t / "refs"]


def _nan_checkpoint(w: Path, t: Path) -> Path:
    from blockmae.models.factory import load_encoder
    from blockmae.models.io import save_mae

    encoder = load_encoder(w / "base")
    model, meta = encoder.mae, encoder.metadata
    model.blocks[0].attn.qkv.weight.data[0, 0] = float("nan")
    return save_mae(model, t / "nan.safetensors", meta)


def _nan_pth(w: Path, t: Path) -> Path:
    import torch

    from blockmae.models.export import encoder_state_dict
    from blockmae.models.factory import load_encoder

    state = encoder_state_dict(load_encoder(w / "base").mae)
    state["blocks.0.mlp.fc1.weight"][0, 0] = float("inf")
    torch.save({"model": state}, t / "nan.pth")
    return t / "nan.pth"


def _resnet(t: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(t / "resnet.safetensors"))
    return t / "resnet.safetensors"


def _spec_excluding_all(t: Path) -> Path:
    path = t / "spec.yaml"
    path.write_text(SPEC + "exclude: [{mask.block: 2}]\n")
    return path


# id, target ("world:NAME", "tmp:NAME" or "" for none), args (w, t), exit status, message fragment
CASES = [
    # -- the BAD cases: data lost or a wrong result with exit 0
    ("BAD-export-over-its-run-dir", "world:base", lambda w, t: ["export", w / "base", "--format", "timm", "--out", w / "base"],
     2, "is a pretrain folder; export never writes into another command's output"),
    ("BAD-export-over-an-unrelated-file", "tmp:x", lambda w, t: ["export", w / "base", "--format", "timm", "--out", _with_keep(t)],
     2, "is not empty and was not written by export; choose a new or empty folder, or pass --force"),
    ("BAD-package-over-a-reference", "world:refs",
     lambda w, t: ["weights", "package", "--run-dir", w / "base", "--block", 2, "--seed", 0, "--command", "x",
                   "--out-root", w / "refs", "--no-evaluate"], 2, "already holds the reference quickstart-block2-s0; pass --force"),
    ("BAD-sweep-plan-excluding-every-arm", "", lambda w, t: ["sweep", "plan", _spec_excluding_all(t)], 2,
     "exclude removes every arm of the grid (1); nothing is left to run"),
    ("BAD-report-spec-of-another-sweep", "world:sweep",
     lambda w, t: ["report", "--root", w / "sweep", "--spec", _other_spec(t), "--out", t / "r.html"], 2,
     "is the sweep 'other', but"),
    ("BAD-sweep-spec-edited-in-place", "", _edited_sweep, 2, "was run with other settings (probe_overrides"),
    ("BAD-manifest-final-loss-edited", "", lambda w, t: _edited_manifest(w, t, "final_loss", 0.1), 1,
     "manifest final_loss 0.1 is not the last epoch's loss"),
    ("BAD-manifest-images-seen-edited", "", lambda w, t: _edited_manifest(w, t, "images_seen", 5), 1,
     "manifest images_seen 5 is not steps x train.batch_size"),
    ("BAD-quickstart-budget-nan", "tmp:q", lambda w, t: ["quickstart", "--out", t / "q", *QUICK, "budget_seconds=nan"], 2,
     "budget_seconds must be a finite number, got nan"),
    ("BAD-viz-ratio-1.5", "", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out", t / "v.png",
                                            "--ratio", "1.5"], 2, "argument --ratio: must be in (0, 1), got 1.5"),
    ("BAD-viz-ratio-nan", "", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out", t / "v.png",
                                            "--ratio", "nan"], 2, "argument --ratio: must be a finite number, got nan"),
    ("BAD-runs-last-minus-1", "", lambda w, t: ["runs", "--root", w, "--last", "-1"], 2, "--last: must be at least 1"),
    ("BAD-runs-last-0", "", lambda w, t: ["runs", "--root", w, "--last", "0"], 2, "--last: must be at least 1, got 0"),
    ("BAD-report-missing-run-dir", "", _sweep_without_arm, 0, "its run dir"),
    ("BAD-quickstart-empty-diagnostics", "tmp:q", lambda w, t: ["quickstart", "--out", t / "q", *QUICK, "diagnostics={}"],
     2, "override 'diagnostics={}' changes nothing"),
    # -- the POOR cases: tracebacks and wrong advice
    ("POOR-report-out-read-only", "tmp:ro", lambda w, t: ["report", "--root", w / "sweep", "--out", t / "ro" / "r.html"], 2,
     "read-only file system"),
    ("POOR-report-out-full-disk", "tmp:full", lambda w, t: ["report", "--root", w / "sweep", "--out", t / "full" / "r.html"],
     2, "no space left on the device"),
    ("POOR-report-out-is-a-folder", "", lambda w, t: ["report", "--root", w / "sweep", "--out", _folder(t, "d.html")], 2,
     "is a folder"),
    ("POOR-report-out-wrong-suffix", "", lambda w, t: ["report", "--root", w / "sweep", "--out", t / "r.txt"], 2,
     "must end in .html or .htm"),
    ("POOR-report-root-is-a-file", "", lambda w, t: ["report", "--root", _file(t)], 2, "a file is in the way"),
    ("POOR-report-root-read-only", "", lambda w, t: ["report", "--root", _copy(w / "sweep", t / "ro" / "sweep")], 2,
     "read-only file system"),
    ("POOR-export-out-read-only", "tmp:ro", lambda w, t: ["export", w / "base", "--format", "timm", "--out", t / "ro" / "e"], 2,
     "read-only file system"),
    ("POOR-export-out-full-disk", "tmp:full", lambda w, t: ["export", w / "base", "--format", "timm", "--out", t / "full" / "e"],
     2, "no space left on the device"),
    ("POOR-export-out-under-a-file", "", lambda w, t: ["export", w / "base", "--format", "timm", "--out", _file(t) / "e"], 2,
     "a file is in the way"),
    ("POOR-masks-png-read-only", "tmp:ro", lambda w, t: ["masks", "--png", t / "ro" / "m.png"], 2, "read-only file system"),
    ("POOR-masks-png-is-a-folder", "", lambda w, t: ["masks", "--png", _folder(t)], 2, "is a folder"),
    ("POOR-masks-png-wrong-suffix", "", lambda w, t: ["masks", "--png", t / "m.txt"], 2, "must end in .png or .pdf or .svg"),
    ("POOR-viz-out-read-only", "tmp:ro", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out",
                                                      t / "ro" / "v.png"], 2, "read-only file system"),
    ("POOR-viz-out-is-a-folder", "", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out", _folder(t)],
     2, "is a folder"),
    ("POOR-viz-out-wrong-suffix", "", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out", t / "v.txt"],
     2, "must end in .png"),
    ("POOR-quickstart-out-read-only", "tmp:ro", lambda w, t: ["quickstart", "--out", t / "ro" / "q", *QUICK], 2,
     "read-only file system"),
    ("POOR-quickstart-out-is-a-file", "", lambda w, t: ["quickstart", "--out", _file(t), *QUICK], 2, "a file is in the way"),
    ("POOR-sweep-run-out-is-a-file", "", lambda w, t: ["sweep", "run", w / "spec.yaml", "--out", _file(t), "--executor",
                                                       "debug"], 2, "a file is in the way"),
    ("POOR-sweep-run-out-read-only", "tmp:ro", lambda w, t: ["sweep", "run", w / "spec.yaml", "--out", t / "ro" / "s",
                                                            "--executor", "debug"], 2, "read-only file system"),
    ("POOR-masks-grid-0x8-stats", "", lambda w, t: ["masks", "--grid", "0x8", "--stats"], 2, "a grid needs at least 1x1"),
    ("POOR-lowpass-sigma-inf", "", lambda w, t: ["eval", "lowpass", "--checkpoint", w / "base", "--sigmas", "0", "inf"], 2,
     "argument --sigmas: must be a finite number, got inf"),
    ("POOR-probe-timm-resnet", "", lambda w, t: [*PROBE, f"checkpoint=timm:resnet10t:{_resnet(t)}", f"output_root={t}"], 2,
     "timm:resnet10t is not a Vision Transformer"),
    ("POOR-finetune-timm", "", lambda w, t: ["finetune", "--config", "finetune_smoke", "checkpoint=timm:vit_tiny_patch16_224:"
                                             f"{w / 'exp' / 'model.safetensors'}", f"run.dir={t / 'ft'}"], 2,
     "fine-tuning reads blockmae checkpoints only, not foreign encoders"),
    ("POOR-probe-nan-base-lr", "", lambda w, t: [*PROBE, "checkpoint=random", "linear.base_lr=nan", f"output_root={t}"], 2,
     "linear.base_lr must be a finite number, got nan"),
    ("POOR-finetune-inf-mixup", "", lambda w, t: ["finetune", "--config", "finetune_smoke", "mix.mixup=inf",
                                                  f"run.dir={t / 'ft'}"], 2, "mix.mixup must be a finite number"),
    ("POOR-probe-nan-weights-pth", "", lambda w, t: [*PROBE, f"checkpoint={_nan_pth(w, t)}", f"output_root={t}"], 2,
     "holds NaN or infinite values"),
    ("POOR-dtd-epochs-negative", "", lambda w, t: ["eval", "dtd", "--checkpoint", w / "base", "--dtd-epochs", "-3"], 2,
     "argument --dtd-epochs: must be at least 1, got -3"),
    ("POOR-runs-where-not-a-number", "", lambda w, t: ["runs", "--root", w, "--where", "train.epochs>abc"], 2,
     "> compares numbers, and 'abc' is not one"),
    ("POOR-lowpass-out-a-run-dir", "world:base", lambda w, t: ["eval", "lowpass", "--checkpoint", w / "base", "--out",
                                                              w / "base", "--output-root", t], 2,
     "is a pretrain folder; lowpass never writes"),
    ("POOR-second-sweep-run-same-folder", "world:sweep", "LOCKED:sweep", 2, "is in use by pid"),
    ("BAD-two-probes-same-run-dir", "world:probe", "LOCKED:probe", 2, "is in use by pid"),
    # -- ours
    ("export-out-a-reference", "world:refs", lambda w, t: ["export", w / "base", "--format", "timm", "--out",
                                                          w / "refs" / "quickstart-block1-s0"], 2, "is a reference folder"),
    ("export-out-a-sweep", "world:sweep", lambda w, t: ["export", w / "base", "--format", "timm", "--out", w / "sweep"], 2,
     "is a sweep folder"),
    ("export-out-inside-a-run-dir", "world:base", lambda w, t: ["export", w / "base", "--format", "timm", "--out",
                                                               w / "base" / "timm"], 2, "is inside a pretrain folder"),
    ("export-out-a-probe", "world:probe", lambda w, t: ["export", w / "base", "--format", "timm", "--out", w / "probe"], 2,
     "is a probe folder"),
    ("export-missing-checkpoint", "", lambda w, t: ["export", t / "none", "--format", "timm", "--out", t / "e"], 2,
     "does not exist"),
    ("export-nan-checkpoint", "", lambda w, t: ["export", _nan_checkpoint(w, t), "--format", "timm", "--out", t / "e"], 2,
     "blocks.0.attn.qkv.weight holds NaN or infinite values"),
    ("export-bad-pool", "", lambda w, t: ["export", w / "base", "--format", "timm", "--out", t / "e", "--pool", "max"], 2,
     "argument --pool: invalid choice"),
    ("probe-run-dir-a-pretrain-run", "world:base", lambda w, t: [*PROBE, "checkpoint=random", f"run_dir={w / 'base'}",
                                                                f"output_root={t}"], 2, "is a pretrain folder"),
    ("probe-run-dir-holds-a-file", "tmp:x", lambda w, t: [*PROBE, "checkpoint=random", f"run_dir={_with_keep(t)}",
                                                         f"output_root={t}"], 2, "is not empty and was not written by probe"),
    ("probe-run-dir-is-a-file", "", lambda w, t: [*PROBE, "checkpoint=random", f"run_dir={_file(t)}", f"output_root={t}"], 2,
     "a file is in the way"),
    ("probe-nan-safetensors", "", lambda w, t: [*PROBE, f"checkpoint={_nan_checkpoint(w, t)}", f"output_root={t}"], 2,
     "holds NaN or infinite values"),
    ("probe-zero-epochs", "", lambda w, t: [*PROBE, "checkpoint=random", "linear.epochs=0", f"output_root={t}"], 2,
     "linear.epochs must be at least 1, got 0"),
    ("probe-momentum-2", "", lambda w, t: [*PROBE, "checkpoint=random", "linear.momentum=2", f"output_root={t}"], 2,
     "linear.momentum must be in [0, 1], got 2.0"),
    ("probe-knn-k-0", "", lambda w, t: [*PROBE, "checkpoint=random", "knn.k=0", f"output_root={t}"], 2,
     "knn.k must be at least 1"),
    ("probe-knn-temperature-nan", "", lambda w, t: [*PROBE, "checkpoint=random", "knn.temperature=nan", f"output_root={t}"], 2,
     "knn.temperature must be a finite number"),
    ("probe-negative-images", "", lambda w, t: [*PROBE, "checkpoint=random", "data.num_images=-5", f"output_root={t}"], 2,
     "data.num_images must be at least 1, got -5"),
    ("probe-negative-layer", "", lambda w, t: [*PROBE, "checkpoint=random", "encoder.layer=-1", f"output_root={t}"], 2,
     "encoder.layer must be zero or more, got -1"),
    ("probe-negative-weight-decay", "", lambda w, t: [*PROBE, "checkpoint=random", "linear.weight_decay=-1",
                                                      f"output_root={t}"], 2, "linear.weight_decay must be zero or more"),
    ("POOR-probe-timm-export-by-its-name", "", lambda w, t: [*PROBE, f"checkpoint=timm:vit_tiny_patch16_224:"
                                                                f"{w / 'exp' / 'model.safetensors'}", f"output_root={t}",
                                                        "kind=knn"], 0, ""),
    ("lowpass-out-an-export", "world:exp", lambda w, t: ["eval", "lowpass", "--checkpoint", w / "base", "--out", w / "exp"],
     2, "is an export folder"),
    ("lowpass-out-holds-a-file", "tmp:x", lambda w, t: ["eval", "lowpass", "--checkpoint", w / "base", "--out", _with_keep(t)],
     2, "choose a new or empty folder"),
    ("lowpass-batch-size-0", "", lambda w, t: ["eval", "lowpass", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
    ("lowpass-num-images-0", "", lambda w, t: ["eval", "lowpass", "--num-images", "0"], 2, "--num-images: must be at least 1"),
    ("lowpass-negative-seed", "", lambda w, t: ["eval", "lowpass", "--seed", "-1"], 2, "--seed: must be zero or more"),
    ("lowpass-negative-radius", "", lambda w, t: ["eval", "lowpass", "--radii", "-1"], 2, "levels must be >= 0"),
    ("lowpass-nan-sigma", "", lambda w, t: ["eval", "lowpass", "--sigmas", "nan"], 2, "--sigmas: must be a finite number"),
    ("attention-drop-fraction-1.5", "", lambda w, t: ["eval", "attention", "--drop-fractions", "1.5"], 2,
     "--drop-fractions: must be in (0, 1), got 1.5"),
    ("attention-discard-ratio-nan", "", lambda w, t: ["eval", "attention", "--discard-ratio", "nan"], 2,
     "--discard-ratio: must be a finite number"),
    ("attention-block-0", "", lambda w, t: ["eval", "attention", "--blocks", "0"], 2, "--blocks: must be at least 1"),
    ("stylized-alpha-2", "", lambda w, t: ["eval", "stylized", "--alphas", "2"], 2, "--alphas: must be in [0, 1], got 2"),
    ("dtd-partitions-11", "", lambda w, t: ["eval", "dtd", "--partitions", "11"], 2, "--partitions: must be in [1, 10]"),
    ("masks-ratio-0", "", lambda w, t: ["masks", "--ratio", "0"], 2, "--ratio: must be in (0, 1), got 0"),
    ("masks-ratio-1", "", lambda w, t: ["masks", "--ratio", "1"], 2, "--ratio: must be in (0, 1), got 1"),
    ("masks-block-0", "", lambda w, t: ["masks", "--block", "0"], 2, "--block: must be at least 1"),
    ("masks-count-0", "", lambda w, t: ["masks", "--count", "0"], 2, "--count: must be at least 1"),
    ("masks-grid-text", "", lambda w, t: ["masks", "--grid", "abc"], 2, "expected N or HxW patches"),
    ("masks-png-into-a-run-dir", "world:base", lambda w, t: ["masks", "--png", w / "base" / "m.png"], 2,
     "is inside a pretrain folder"),
    ("viz-images-0", "", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out", t / "v.png",
                                       "--images", "0"], 2, "--images: must be at least 1"),
    ("viz-out-into-a-run-dir", "world:base", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out",
                                                          w / "base" / "v.png"], 2, "is inside a pretrain folder"),
    ("viz-out-into-a-reference", "world:refs", lambda w, t: ["viz", "reconstructions", "--checkpoint", w / "base", "--out",
                                                            w / "refs" / "quickstart-block1-s0" / "v.png"], 2,
     "is inside a reference folder"),
    ("runs-last-text", "", lambda w, t: ["runs", "--root", w, "--last", "abc"], 2, "--last: expected an integer"),
    ("runs-where-nan", "", lambda w, t: ["runs", "--root", w, "--where", "loss<nan"], 2, "compares numbers"),
    ("quickstart-budget-0", "", lambda w, t: ["quickstart", "--out", t / "q", "--budget-seconds", "0"], 2,
     "--budget-seconds: must be positive, got 0"),
    ("quickstart-budget-inf", "", lambda w, t: ["quickstart", "--out", t / "q", "--budget-seconds", "inf"], 2,
     "--budget-seconds: must be a finite number"),
    ("quickstart-negative-seed", "", lambda w, t: ["quickstart", "--out", t / "q", "--seed", "-1"], 2,
     "--seed: must be zero or more"),
    ("quickstart-out-a-run-dir", "world:base", lambda w, t: ["quickstart", "--out", w / "base", *QUICK], 2,
     "is a pretrain folder"),
    ("quickstart-nan-pretrain-lr", "", lambda w, t: ["quickstart", "--out", t / "q", *QUICK, "pretrain.optim.base_lr=nan"],
     2, "pretrain.optim.base_lr must be a finite number"),
    ("sweep-run-slots-0", "", lambda w, t: ["sweep", "run", w / "spec.yaml", "--slots", "0"], 2, "--slots: must be at least 1"),
    ("sweep-run-out-a-run-dir", "world:base", lambda w, t: ["sweep", "run", w / "spec.yaml", "--out", w / "base",
                                                           "--executor", "debug"], 2, "is a pretrain folder"),
    ("sweep-run-out-an-export", "world:exp", lambda w, t: ["sweep", "run", w / "spec.yaml", "--out", w / "exp",
                                                          "--executor", "debug"], 2, "is an export folder"),
    ("report-out-into-a-run-dir", "world:base", lambda w, t: ["report", "--root", w / "sweep", "--out",
                                                             w / "base" / "r.html"], 2, "is inside a pretrain folder"),
    ("report-spec-missing", "", lambda w, t: ["report", "--root", w / "sweep", "--spec", t / "none.yaml"], 2,
     "does not exist"),
    ("package-block-0", "", lambda w, t: ["weights", "package", "--run-dir", w / "base", "--block", "0", "--seed", "0",
                                          "--command", "x"], 2, "--block: must be at least 1"),
    ("package-negative-seed", "", lambda w, t: ["weights", "package", "--run-dir", w / "base", "--block", "2", "--seed",
                                                "-1", "--command", "x"], 2, "--seed: must be zero or more"),
    ("package-over-other-files", "tmp:refs", lambda w, t: ["weights", "package", "--run-dir", w / "base", "--block", 2,
                                                          "--seed", 0, "--command", "x", "--out-root", _refs_with_keep(t),
                                                          "--no-evaluate"], 2, "already holds other files"),
    ("manifest-config-edited", "", lambda w, t: _edited_manifest(w, t, "config", None), 1,
     "manifest config_sha256 does not match its config"),
    ("manifest-parameters-edited", "", lambda w, t: _edited_manifest(w, t, "parameters", None), 1,
     "manifest weights.parameters"),
    ("manifest-epochs-edited", "", lambda w, t: _edited_manifest(w, t, "epochs", 3), 1, "manifest epochs 3 is not the last"),
    ("preview-count-0", "", lambda w, t: ["data", "preview", "shapetex", "--count", "0", "--out", t / "p.png"], 2,
     "--count: must be at least 1"),
    ("prepare-partition-11", "", lambda w, t: ["data", "prepare", "dtd", "--partition", "11"], 2,
     "--partition: must be in [1, 10]"),
    ("compare-atol-nan", "", lambda w, t: ["ckpt", "compare", w / "base", w / "base", "--atol", "nan"], 2,
     "--atol: must be a finite number"),
    ("finetune-layer-decay-nan", "", lambda w, t: ["finetune", "--config", "finetune_smoke", "optim.layer_decay=nan",
                                                   f"run.dir={t / 'ft'}"], 2, "optim.layer_decay must be a finite number"),
    ("finetune-mix-prob-2", "", lambda w, t: ["finetune", "--config", "finetune_smoke", "mix.prob=2", f"run.dir={t / 'ft'}"],
     2, "mix.prob must be in [0, 1], got 2.0"),
    ("finetune-negative-reprob", "", lambda w, t: ["finetune", "--config", "finetune_smoke", "data.reprob=-1",
                                                   f"run.dir={t / 'ft'}"], 2, "data.reprob must be in [0, 1]"),
    ("shape-bias-batch-0", "", lambda w, t: ["eval", "shape-bias", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
]


def _faulty_writes(monkeypatch, folder: Path, err: int) -> None:
    """Every folder or temp file made under `folder` fails with `err` (a read-only or a full file system)."""
    mkdir, mkstemp = Path.mkdir, tempfile.mkstemp

    def refuse_mkdir(self, *args, **kwargs):
        if str(self).startswith(str(folder)) and self != folder:
            raise OSError(err, os.strerror(err), str(self))
        return mkdir(self, *args, **kwargs)

    def refuse_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(err, os.strerror(err), str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse_mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", refuse_mkstemp)


@pytest.mark.parametrize("case_id, target, make_args, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_catalogue(world, tmp_path, monkeypatch, capsys, case_id, target, make_args, status, fragment):
    where, _, name = target.partition(":")
    folder = world / name if where == "world" else tmp_path / name if where == "tmp" else None
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    if isinstance(make_args, str):  # LOCKED:NAME: the command runs while another process holds NAME's lock
        locked = world / make_args.split(":")[1]
        args = (["sweep", "run", world / "spec.yaml", "--out", locked, "--executor", "debug"] if "sweep" in make_args
                else [*PROBE, "checkpoint=random", "encoder.seed=5", f"run_dir={locked}", f"output_root={tmp_path}"])
    else:
        args = make_args(world, tmp_path)
    if case_id.endswith("read-only"):
        _faulty_writes(monkeypatch, tmp_path / "ro", errno.EROFS)
    if case_id.endswith("full-disk"):
        _faulty_writes(monkeypatch, tmp_path / "full", errno.ENOSPC)
    before = _snapshot(folder) if folder is not None else None
    holder = None
    if isinstance(make_args, str):
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from blockmae.lock import RunLock; "
                                   "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(locked)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
    try:
        code = main([str(a) for a in args])
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    out, err = capsys.readouterr()
    assert code == status, out + err
    assert fragment in out + err, out + err
    assert "Traceback" not in err
    if status == 2:
        errors = [line for line in err.strip().splitlines() if line.startswith("blockmae: error: ")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    if holder is not None:
        (locked / "run.lock").unlink(missing_ok=True)  # left by the killed holder
    if folder is not None:
        assert _snapshot(folder) == before
    if case_id.endswith(("read-only", "full-disk")):  # nothing partial left behind
        leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".old")]
        assert leftovers == []


def test_export_force_replaces_and_an_earlier_export_is_replaced(world, tmp_path, capsys):
    """--force replaces a folder of other files; an earlier export is replaced without it (its owner)."""
    folder = _with_keep(tmp_path)
    assert main(["export", str(world / "base"), "--format", "timm", "--out", str(folder), "--force"]) == 0
    assert not (folder / "keep").exists() and (folder / "model.safetensors").is_file()
    assert main(["export", str(world / "base"), "--format", "timm", "--out", str(folder)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging or lock files left beside


def test_package_force_replaces_a_reference(world, tmp_path, capsys):
    shutil.copytree(world / "refs", tmp_path / "refs")
    args = ["weights", "package", "--run-dir", str(world / "base"), "--block", "2", "--seed", "0", "--command", "x",
            "--out-root", str(tmp_path / "refs"), "--no-evaluate"]
    assert main(args) == 2
    assert main([*args, "--force"]) == 0
    assert "replaced quickstart-block2-s0" in capsys.readouterr().out
    assert main(["weights", "verify", "--root", str(tmp_path / "refs"), "quickstart-block2-s0"]) == 0


@pytest.mark.slow
def test_sigterm_to_sweep_run_stops_its_arm_and_says_so(tmp_path):
    """SIGTERM to `sweep run` (local executor): the arm is stopped (no orphan), the sweep exits 130 with a
    message, and a rerun resumes it to completion."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("train.epochs: 1", "train.epochs: 40").replace("run.ckpt_every_minutes: 0",
                                                                             "run.ckpt_every_minutes: 0, run.log_every: 1"))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "blockmae", "sweep", "run", str(spec), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "sweep_plan.json").is_file():
        time.sleep(0.1)
    arm = out / json.loads((out / "sweep_plan.json").read_text())["arms"][0]["run_dir"]
    while time.monotonic() < deadline and not ((arm / "metrics.jsonl").is_file()
                                               and (arm / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.1)
    state = json.loads((arm / "arm_state.json").read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: the running arms saved a checkpoint and stopped" in err
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)
    assert json.loads((arm / "arm_state.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_a_reference_folder_is_a_checkpoint_for_the_diagnostics(tmp_path, shared_data):
    """`eval lowpass` and `eval dtd` on a shipped reference folder, without --data: the pretraining data
    comes from its manifest's config, as from a run dir's config.yaml."""
    ref = REFERENCES / "quickstart-block2-s0"
    probe = ["--probe-set", "linear.epochs=2", "--probe-set", "linear.warmup_epochs=0", "--probe-set",
             "data.num_images=200", "--output-root", str(tmp_path)]
    code, out, err = _blockmae(["eval", "lowpass", "--checkpoint", ref, "--curves", "greyscale", "--num-images", "40",
                                "--out", tmp_path / "lowpass", *probe])
    assert code == 0, out + err
    assert json.loads((tmp_path / "lowpass" / "results.json").read_text())["probe"]["dataset"] == "shapetex"
    code, out, err = _blockmae(["eval", "dtd", "--checkpoint", ref, "--root", shared_data / "dtd-mini", "--partitions",
                                "1", "--dtd-epochs", "2", "--out", tmp_path / "dtd", *probe])
    assert code == 0, out + err
    assert "DTD / object:" in out
