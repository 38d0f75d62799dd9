"""The online monitor: k-NN and linear accuracy on held-out images during pretraining."""

import json
from pathlib import Path

import torch

from blockmae.cli import main
from blockmae.evaluation.monitor import logistic_regression

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_images=256", "train.batch_size=32", "train.cpu_threads=1", "run.recon_images=0",
         "run.milestones=[]", "run.registry=false", "train.epochs=2"]


def test_logistic_regression_separates_separable_classes_and_folds_the_standardisation():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    labels = torch.arange(400) % 4
    features = centres[labels] + torch.randn(400, 16, generator=g) * 0.5 + 100.0  # far from the origin
    head = logistic_regression(features, labels, 4)
    assert (head(features).argmax(1) == labels).float().mean() == 1.0
    again = logistic_regression(features, labels, 4)
    assert torch.equal(head.weight, again.weight)  # deterministic
    noise = torch.randn(400, 16, generator=g)
    assert (logistic_regression(noise, labels, 4)(torch.randn(400, 16, generator=g)).argmax(1) == labels).float().mean() < 0.4


def test_monitor_writes_a_learning_curve_to_metrics_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "smoke", *SMALL, f"run.dir={run}", "monitor.every=1",
                 "monitor.num_images=100"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    monitor = [r for r in records if r["kind"] == "monitor"]
    assert [r["epoch"] for r in monitor] == [0, 1, 2] and [r["images_seen"] for r in monitor] == [0, 256, 512]
    for r in monitor:  # ShapeTex: held-out val, shape_only and texture_only, by k-NN and linear
        for key in ("knn_top1", "linear_top1", "knn_top1_shape_only", "linear_top1_shape_only",
                    "knn_top1_texture_only", "linear_top1_texture_only"):
            assert 0.0 <= r[key] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "monitor/linear_top1_shape_only" in events.Tags()["scalars"]
    assert len(events.Scalars("monitor/knn_top1")) == 3


def test_monitor_is_off_by_default_and_refuses_bad_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "smoke", *SMALL, "train.epochs=1", f"run.dir={run}"]) == 0
    assert '"kind": "monitor"' not in (run / "metrics.jsonl").read_text()
    for bad in ("monitor.every=-1", "monitor.num_images=0", "monitor.temperature=0"):
        assert main(["pretrain", "--config", "smoke", *SMALL, f"run.dir={tmp_path / 'bad'}", bad]) == 2
        assert bad.split("=")[0] in capsys.readouterr().err
