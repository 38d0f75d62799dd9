"""End to end: probe CLI, shape-bias CLI, train/train_linear.py and viz on tiny random-init encoders."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blockmae.cli import main
from blockmae.registry import Registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKMAE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tin_probe(tmp_path_factory, shared_data):
    """A linear + k-NN probe of a random vit_nano on the Tiny-ImageNet mini set (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("tin")
    out = tmp / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("BLOCKMAE_CACHE_DIR", str(tmp / "cache"))
        code = main([
                     "probe", "--config", str(REPO / "configs" / "linear_probe.yaml"), "checkpoint=random",
                     "kind=both", "encoder.preset=vit_nano", "data.dataset=tiny-imagenet", "data.num_images=null",
                     f"data.root={shared_data / 'tiny-imagenet-200-mini'}", "linear.epochs=3", "linear.warmup_epochs=1",
                     "linear.batch_size=64", "knn.k=5", f"output_root={out}", "device=cpu", "name=tin"])
    assert code == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_probe_cli_records_results_head_and_registry(tin_probe):
    out, printed = tin_probe
    assert "linear  top1" in printed and "k-NN    top1" in printed
    (rec,) = Registry(out).list_runs(kind="probe")
    assert rec.status == "completed" and rec.parent == "random" and rec.name == "tin"
    m = rec.metrics
    assert m["num_train"] == 200 and m["num_eval"] == 100 and m["num_classes"] == 10
    for key in ("top1", "top5", "best_top1", "knn_top1", "knn_top5"):
        assert 0.0 <= m[key] <= 1.0
    assert m["top5"] >= m["top1"] and m["knn_top5"] >= m["knn_top1"] and m["best_top1"] >= m["top1"]
    results = json.loads((Path(rec.run_dir) / "results.json").read_text())
    assert results["metrics"] == m and len(results["history"]) == 3
    # Per-image top-1 classes, in eval order: they give back the metrics exactly.
    from blockmae.evaluation.cli_probe import read_predictions

    assert results["predictions"] == "predictions.json"
    pred = read_predictions(rec.run_dir)
    assert (pred["dataset"], pred["split"], pred["num_images"]) == ("tiny-imagenet", "val", 100)
    labels = pred["labels"]
    assert len(labels) == len(pred["linear"]) == len(pred["knn"]) == 100 and sorted(set(labels)) == list(range(10))
    assert sum(p == y for p, y in zip(pred["linear"], labels)) / 100 == m["top1"]
    assert sum(p == y for p, y in zip(pred["knn"], labels)) / 100 == m["knn_top1"]
    from blockmae.evaluation.linear import load_head

    head, meta = load_head(Path(rec.run_dir) / "head.safetensors")
    assert meta["class_ids"] == sorted(meta["class_ids"]) and meta["class_ids"][0].startswith("n")
    assert meta["pool"] == "cls" and meta["weights_hash"] == rec.config["weights_hash"]
    # Features were cached: a second extraction of the same split is served from disk.
    assert len(list((out / "feature_cache").glob("*.safetensors"))) == 2


@pytest.mark.slow
def test_shape_bias_cli_on_cue_conflict_mini(tin_probe, shared_data, capsys):
    out, _ = tin_probe
    (probe,) = Registry(out).list_runs(kind="probe")
    code = main(["eval", "shape-bias", "--probe", probe.run_dir, "--data", "cue-conflict",
                 "--root", str(shared_data / "cue-conflict-mini"), "--output-root", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "human reference on this subset: 0.950" in printed
    # Expected subset, from the file names and the mapping TSV: both categories covered by the mini
    # set's 10 classes, and different.
    wnids = set((shared_data / "tiny-imagenet-200-mini" / "wnids.txt").read_text().split())
    rows = [line.split("\t") for line in (shared_data / "tiny-imagenet-to-16-categories.tsv").read_text().splitlines()[1:]]
    covered = {r[0] for r in rows if r[1] in wnids}
    expected = 0
    for png in (shared_data / "cue-conflict-mini").glob("*/*.png"):
        shape, texture = (s.rstrip("0123456789") for s in png.stem.split("-"))
        expected += shape in covered and texture in covered and shape != texture
    (rec,) = Registry(out).list_runs(kind="shape-bias")
    assert rec.parent == "random" and rec.status == "completed"
    assert rec.metrics["n_images"] == expected > 0
    assert rec.metrics["n_shape"] + rec.metrics["n_texture"] + rec.metrics["n_neither"] == expected
    assert sorted(rec.metrics["covered_categories"]) == sorted(covered)
    # Per-image decisions (16-category indices) give back the shape bias exactly.
    from blockmae.evaluation.cli_shape_bias import read_decisions
    from blockmae.report.stats import SHAPE, TEXTURE, cue_outcomes, shape_bias_of_outcomes

    decisions = read_decisions(rec.run_dir)
    cc = decisions["cue_conflict"]
    assert len(cc["decisions"]) == len(cc["index"]) == expected and decisions["categories"][0] == "airplane"
    assert all(decisions["categories"][c] in covered for c in cc["shape"] + cc["texture"])
    outcomes = cue_outcomes(cc["decisions"], cc["shape"], cc["texture"])
    assert ((outcomes == SHAPE).sum(), (outcomes == TEXTURE).sum()) == (rec.metrics["n_shape"], rec.metrics["n_texture"])
    assert rec.metrics["n_shape"] + rec.metrics["n_texture"] > 0
    assert shape_bias_of_outcomes(outcomes) == rec.metrics["shape_bias"]


def test_category_aggregation_on_cue_conflict_mini_with_fake_model(shared_data):
    from blockmae.data import load_dataset
    from blockmae.data.cue_conflict import load_category_mapping
    from blockmae.evaluation.shape_bias import cue_conflict_shape_bias

    ds = load_dataset("cue-conflict", "test", root=shared_data / "cue-conflict-mini", image_size=16,
                      keep_agreeing=False)
    mapping = load_category_mapping()
    class_ids = sorted(w for wnids in mapping.values() for w in wnids)  # a 26-class "Tiny-ImageNet" probe
    first_wnid = {c: wnids[0] for c, wnids in mapping.items()}

    def fake_probs(category_labels):
        probs = torch.full((len(ds), len(class_ids)), 0.01)
        for i, label in enumerate(category_labels.tolist()):
            wnid = first_wnid.get(ds.class_names[label])
            if wnid is not None:
                probs[i, class_ids.index(wnid)] = 0.9
        return probs / probs.sum(1, keepdim=True)

    shape_model, used, covered = cue_conflict_shape_bias(fake_probs(ds.labels), class_ids, mapping, ds.class_names,
                                                         ds.labels, ds.extra_labels["texture"])
    texture_model, _, _ = cue_conflict_shape_bias(fake_probs(ds.extra_labels["texture"]), class_ids, mapping,
                                                  ds.class_names, ds.labels, ds.extra_labels["texture"])
    assert len(covered) == 11 and "oven" not in covered
    assert shape_model.shape_bias == 1.0 and texture_model.shape_bias == 0.0
    assert shape_model.n_images == int(used.sum()) == texture_model.n_texture
    # Mini set: 2 per category; both categories covered and different.
    assert 0 < shape_model.n_images < len(ds)


@pytest.mark.slow
def test_train_linear_script_then_shapetex_shape_bias(tmp_path, capsys):
    """The seed-layout command on a saved checkpoint, over ShapeTex; then the ShapeTex shape-bias command."""
    from blockmae.models import build_mae
    from blockmae.models.io import save_mae

    torch.manual_seed(0)
    save_mae(build_mae("vit_nano", img_size=32, patch_size=4), tmp_path / "run" / "checkpoints" / "last" /
             "model.safetensors", {"epoch": 1})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train" / "train_linear.py"), "--config", str(REPO / "configs" / "linear_probe.yaml"),
         f"checkpoint={tmp_path / 'run'}", "data.num_images=200", "linear.epochs=2", "linear.warmup_epochs=0",
         "linear.batch_size=64", f"output_root={out}", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "linear  top1" in proc.stdout
    (probe,) = Registry(out).list_runs()
    assert probe.parent == str((tmp_path / "run").resolve()) and probe.metrics["num_train"] == 200
    assert probe.metrics["num_classes"] == 10

    code = main(["eval", "shape-bias", "--probe", probe.run_dir, "--data", "shapetex", "--num-images", "100",
                 "--output-root", str(out), "--device", "cpu"])
    assert code == 0
    assert "shape_only accuracy" in capsys.readouterr().out
    (sb,) = Registry(out).list_runs(kind="shape-bias")
    m = sb.metrics
    assert sb.parent == probe.parent and m["n_images"] == 100
    assert m["n_shape"] + m["n_texture"] + m["n_neither"] == 100
    assert m["frac_shape"] + m["frac_texture"] + m["frac_neither"] == pytest.approx(1.0)
    assert 0 <= m["shape_only_acc"] <= 1 and 0 <= m["texture_only_as_shape"] <= 1
    # decisions.json: every split's decisions with their labels give back the metrics.
    from blockmae.evaluation.cli_shape_bias import read_decisions
    from blockmae.report.stats import cue_outcomes, shape_bias_of_outcomes

    results = json.loads((Path(sb.run_dir) / "results.json").read_text())
    assert results["decisions"] == "decisions.json" and results["metrics"]["shape_bias"] == m["shape_bias"]
    d = read_decisions(sb.run_dir)
    cc, so, to = d["cue_conflict"], d["shape_only"], d["texture_only"]
    assert d["data"] == "shapetex" and len(cc["decisions"]) == len(so["labels"]) == len(to["texture"]) == 100
    assert m["n_shape"] + m["n_texture"] > 0  # a defined shape bias, so the comparison below is of numbers
    assert shape_bias_of_outcomes(cue_outcomes(cc["decisions"], cc["shape"], cc["texture"])) == m["shape_bias"]
    assert sum(p == y for p, y in zip(so["decisions"], so["labels"])) / 100 == pytest.approx(m["shape_only_acc"])
    assert sum(p == t for p, t in zip(to["decisions"], to["texture"])) / 100 == pytest.approx(m["texture_only_as_shape"])
    # The runs table lists both, the shape-bias run with its interval.
    assert main(["runs", "--root", str(out)]) == 0
    listed = capsys.readouterr().out
    assert probe.id in listed and sb.id in listed and "shape_bias=" in listed
    # A head paired with other weights is refused.
    torch.manual_seed(1)
    other = save_mae(build_mae("vit_nano", img_size=32, patch_size=4), tmp_path / "other.safetensors")
    assert main(["eval", "shape-bias", "--probe", probe.run_dir, "--checkpoint", str(other), "--data", "shapetex",
                 "--num-images", "20", "--output-root", str(out), "--device", "cpu"]) == 2
    assert "trained on other weights" in capsys.readouterr().err


def test_probe_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["probe", "kind=linearish", f"output_root={tmp_path}"]) == 2
    assert "kind must be one of" in capsys.readouterr().err
    assert main(["probe", f"checkpoint={tmp_path / 'missing'}", f"output_root={tmp_path}", "device=cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "shape-bias", "--probe", str(tmp_path), "--data", "shapetex"]) == 2
    assert "probe head not found" in capsys.readouterr().err


def test_per_image_readers_refuse_runs_without_them(tmp_path):
    from blockmae.errors import BlockMAEError
    from blockmae.evaluation.cli_probe import read_predictions
    from blockmae.evaluation.cli_shape_bias import read_decisions

    with pytest.raises(BlockMAEError, match="the probe predates per-image outputs.*rerun it"):
        read_predictions(tmp_path)
    with pytest.raises(BlockMAEError, match="the shape-bias run predates per-image outputs"):
        read_decisions(tmp_path)
    (tmp_path / "predictions.json").write_text("{not json")
    with pytest.raises(BlockMAEError, match="cannot read .*predictions.json.*rerun the probe"):
        read_predictions(tmp_path / "predictions.json")
    (tmp_path / "predictions.json").write_text(json.dumps({"labels": [0, 1], "linear": [0]}))
    with pytest.raises(BlockMAEError, match="of one length"):
        read_predictions(tmp_path)
    (tmp_path / "decisions.json").write_text(json.dumps({"data": "shapetex", "cue_conflict": {
        "decisions": [0], "shape": [0], "texture": [1]}}))
    with pytest.raises(BlockMAEError, match="under 'shape_only'"):
        read_decisions(tmp_path)


def test_probe_config_defaults_and_yaml():
    from blockmae.config import load_config
    from blockmae.evaluation.config import ProbeConfig

    cfg = load_config(ProbeConfig, REPO / "configs" / "linear_probe.yaml", ["data.dataset=cifar10"])
    assert cfg.data.eval_split == "test" and cfg.linear.optimizer == "sgd" and cfg.checkpoint == "random"
    assert load_config(ProbeConfig, REPO / "configs" / "linear_probe.yaml").data.eval_split == "val"
    from blockmae.errors import BlockMAEError

    with pytest.raises(BlockMAEError, match="unknown config key 'linear.epoch'"):
        load_config(ProbeConfig, None, ["linear.epoch=3"])


def test_probe_num_images_is_a_class_balanced_subset_of_a_real_dataset(tmp_path, shared_data, capsys):
    """data.num_images on Tiny-ImageNet (was: shapetex only): a class-balanced subset of each split, said."""
    args = ["probe", "checkpoint=random", "kind=knn", "encoder.preset=vit_nano", "data.dataset=tiny-imagenet",
            f"data.root={shared_data / 'tiny-imagenet-200-mini'}", "data.num_images=30", "data.seed=2", "knn.k=3",
            f"output_root={tmp_path / 'out'}", "device=cpu", "data.cache_features=false"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "tiny-imagenet train: a class-balanced subset of 30 of 200 images (data.num_images; data.seed=2" in captured.err
    (rec,) = Registry(tmp_path / "out").list_runs(kind="knn")
    assert rec.metrics["num_train"] == 30 and rec.metrics["num_eval"] == 30 and rec.metrics["num_classes"] == 10
    from blockmae.evaluation.cli_probe import read_predictions

    pred = read_predictions(rec.run_dir)  # a k-NN probe: k-NN classes only, and the subset that was probed
    assert "linear" not in pred and pred["subset_seed"] == 2 and pred["num_images"] == 30
    assert sum(p == y for p, y in zip(pred["knn"], pred["labels"])) / 30 == rec.metrics["knn_top1"]
    assert main([*args, "data.num_images=0"]) == 2
    assert "data.num_images must be at least 1, got 0" in capsys.readouterr().err
    # A second probe in the same second gets its own folder (the default run dir is stamped to the second).
    assert main([*args, "data.num_images=20"]) == 0
    assert len({r.run_dir for r in Registry(tmp_path / "out").list_runs(kind="knn")}) == 2


@pytest.mark.slow
def test_shape_bias_records_a_foreign_encoders_spec_as_its_parent(tmp_path, capsys):
    """A timm encoder's shape-bias run names it as the probe does (timm:NAME:/abs/file), not as a mangled path."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict(), str(weights))
    spec, out = f"timm:vit_tiny_patch16_224:{weights}", tmp_path / "out"
    assert main(["probe", f"checkpoint={spec}", "data.num_images=40", "linear.epochs=1", "linear.warmup_epochs=0",
                 f"output_root={out}", "device=cpu"]) == 0
    (probe,) = Registry(out).list_runs(kind="probe")
    assert main(["eval", "shape-bias", "--probe", probe.run_dir, "--data", "shapetex", "--num-images", "20",
                 "--output-root", str(out), "--device", "cpu"]) == 0
    (sb,) = Registry(out).list_runs(kind="shape-bias")
    assert sb.parent == probe.parent == f"timm:vit_tiny_patch16_224:{weights.resolve()}"
