"""A diagnostic on a CIFAR checkpoint, end to end: pretrain on the CIFAR-10 fixture, then low-pass with the
probe trained on the dataset the checkpoint was pretrained on (its root and split come from the run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchvision.datasets import CIFAR10

from blockmae.cli import main
from test_data_cifar import trust_fixture, write_cifar10

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_lowpass_on_a_cifar10_checkpoint(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cifar"
    trust_fixture(monkeypatch, CIFAR10, write_cifar10(root))
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(SMOKE), f"run.dir={run}", f"run.output_root={tmp_path}",
                 "data.dataset=cifar10", f"data.root={root}", "data.num_images=null", "train.batch_size=8",
                 "train.epochs=1", "run.milestones=[]", "run.recon_images=0"]) == 0
    out = tmp_path / "lowpass"
    assert main(["eval", "lowpass", "--checkpoint", str(run), "--output-root", str(tmp_path), "--out", str(out),
                 "--curves", "colour", "--sigmas", "0", "10", "--probe-set", "linear.epochs=2",
                 "--probe-set", "linear.warmup_epochs=1", "--probe-set", "linear.batch_size=8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probe"]["dataset"] == "cifar10"
    rows = results["levels"]["colour"]
    assert [r["level"] for r in rows] == pytest.approx([0, 10 * 32 / 224])
    assert all(r["n"] == 3 for r in rows)  # the fixture's 3 test images, CIFAR's eval split
