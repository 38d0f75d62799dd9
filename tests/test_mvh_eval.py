"""`blockmae eval mvh` and the decision makers: a random timm ViT on small archives in model-vs-human's layout."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from blockmae.cli import main
from blockmae.data import mvh
from blockmae.data.cue_conflict import CATEGORIES
from blockmae.errors import BlockMAEError
from blockmae.mvh.categories import IMAGENET_INDICES
from blockmae.mvh.decisions import ImageNetClassifier, load_classifier, mean_category_probabilities
from blockmae.mvh.metrics import benchmark
from blockmae.mvh.trials import read_raw_data, read_trials, trial_file_name, write_trials
from blockmae.registry import Registry
from conftest import transformers_or_skip
from mvh_fixture import mvh_archive, stimulus_names

SPEC = "timm:vit_tiny_patch16_224:{file}"
DATASETS = {"colour": ("cr", "bw"), "cue-conflict": ("NaN",), "edge": ("NaN",)}


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    """A randomly initialised timm ViT-Tiny with its 1000-way head (no download)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    file = tmp_path_factory.mktemp("vit") / "vit_tiny.safetensors"
    save_file(model.state_dict(), str(file))
    return file


@pytest.fixture()
def mvh_root(http_server, monkeypatch, tmp_path) -> Path:
    """colour, cue-conflict and edge prepared from their archives (published layout, served locally)."""
    monkeypatch.setattr(mvh, "RELEASE_URL", http_server.url + "/{name}.tar.gz")
    root = tmp_path / "datasets"
    for name, conditions in DATASETS.items():
        http_server.files[f"/{name}.tar.gz"] = mvh_archive(name, conditions)
        assert main(["data", "prepare", f"mvh-{name}", "--root", str(root / name), "--workers", "0"]) == 0
    return root


def _eval(*args: str) -> int:
    return main(["eval", "mvh", "--device", "cpu", "--batch-size", "16", *args])


@pytest.mark.slow
def test_random_timm_vit_writes_trial_files_and_results(vit_file, mvh_root, tmp_path, capsys):
    out, registry = tmp_path / "run", tmp_path / "outputs"
    assert _eval("--model", SPEC.format(file=vit_file), "--datasets", *DATASETS, "--root", str(mvh_root),
                 "--out", str(out), "--output-root", str(registry)) == 0
    printed = capsys.readouterr().out
    assert "16 categories (chance 0.062), 224 px input" in printed and "shape bias" in printed
    for name, conditions in DATASETS.items():
        expected = sorted(stimulus_names(name, conditions), key=lambda s: s[0])
        (file,) = (out / "raw-data" / name).iterdir()
        assert file.name == trial_file_name(name, "vit_tiny_patch16_224")
        assert file.name == f"{name}_vit-tiny-patch16-224_session-1.csv"
        trials = read_trials(file)
        assert len(trials) == len(expected) and [t.trial for t in trials] == list(range(1, len(expected) + 1))
        assert [(t.imagename, t.category, t.condition) for t in trials] == \
            [(Path(p).name, c, k) for p, c, k in expected]
        assert {t.subj for t in trials} == {"vit_tiny_patch16_224"} and all(math.isnan(t.rt) for t in trials)
        assert {t.object_response for t in trials} <= set(CATEGORIES)
    results = json.loads((out / "results.json").read_text())
    assert results["diagnostic"] == "mvh" and results["settings"]["kind"] == "imagenet-classifier"
    assert [(r["level"], r["label"]) for r in results["levels"]["colour"]] == [("cr", "colour"), ("bw", "greyscale")]
    assert [r["n"] for r in results["levels"]["colour"]] == [16, 16]
    for rows in results["levels"].values():
        for row in rows:
            assert all(math.isfinite(row[k]) for k in ("top1", "top1_low", "top1_high"))
            assert row["top1_low"] <= row["top1"] <= row["top1_high"] and row["chance"] == 1 / 16
    summary = results["summary"]
    assert summary["colour_trials"] == 32 and summary["cue-conflict_trials"] == 17 and summary["edge_skipped"] == 0
    # shape bias over the 16 conflicting images (cat9-cat3.png agrees), from the trial file's decisions
    cc = read_trials(out / "raw-data" / "cue-conflict" / "cue-conflict_vit-tiny-patch16-224_session-1.csv")
    conflicting = [t for t in cc if t.imagename != "cat9-cat3.png"]
    texture = {t.imagename: re.match(r"[a-z]+\d+-([a-z]+)\d+\.png$", t.imagename).group(1) for t in conflicting}
    n_shape = sum(t.object_response == t.category for t in conflicting)
    n_texture = sum(t.object_response == texture[t.imagename] for t in conflicting)
    assert (summary["cue-conflict_shape_decisions"], summary["cue-conflict_texture_decisions"]) == (n_shape, n_texture)
    if n_shape + n_texture:
        assert summary["cue-conflict_shape_bias"] == pytest.approx(n_shape / (n_shape + n_texture))
        low, high = summary["cue-conflict_shape_bias_low"], summary["cue-conflict_shape_bias_high"]
        assert low <= summary["cue-conflict_shape_bias"] <= high
    # every number finite (None only for a per-category shape bias without shape or texture decisions)
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, (int, float)))
    assert all(k.startswith("cue-conflict_shape_bias") for k, v in summary.items() if v is None)
    # accuracy per condition = the trial file's
    colour = read_trials(out / "raw-data" / "colour" / "colour_vit-tiny-patch16-224_session-1.csv")
    bw = [t for t in colour if t.condition == "bw"]
    assert results["levels"]["colour"][1]["correct"] == sum(t.correct for t in bw)
    # `blockmae mvh benchmark` reads the files back beside a (made-up) human observer on the same images
    for name in DATASETS:
        (file,) = (out / "raw-data" / name).iterdir()
        human = [replace(t, subj="subject-01", rt=1.0, object_response=t.category if t.trial % 2 else "na")
                 for t in read_trials(file)]
        write_trials(out / "raw-data" / name / trial_file_name(name, "subject-01"), human)
    record = benchmark(read_raw_data(out / "raw-data"), resamples=20)
    ours = record["benchmark"]["vit-tiny-patch16-224"]
    assert set(ours) == {"ood_accuracy", "accuracy_difference", "observed_consistency", "error_consistency"}
    assert all(math.isfinite(v["value"]) and v["datasets"] == 3 for v in ours.values())
    assert record["datasets"]["colour"]["images"] == 32 and record["datasets"]["cue-conflict"]["images"] == 17
    (row,) = Registry(registry).list_runs(kind="mvh")
    assert row.status == "completed" and row.parent == SPEC.format(file=vit_file.resolve())
    assert row.metrics == summary
    # the run dir is never written over
    assert _eval("--model", SPEC.format(file=vit_file), "--datasets", "edge", "--root", str(mvh_root),
                 "--out", str(out), "--output-root", str(registry)) == 2
    assert "already holds a finished diagnostic" in capsys.readouterr().err


@pytest.mark.slow
def test_distortions_applied_by_blockmae(vit_file, mvh_root, tmp_path, capsys):
    out = tmp_path / "run"
    spectrum = tmp_path / "mean_power_spectrum_grey.npy"
    np.save(spectrum, np.full((224, 224), 3.0))
    assert _eval("--model", SPEC.format(file=vit_file), "--datasets", "edge", "--distortions", "rotation",
                 "power-equalisation", "eidolonIII", "--power-spectrum", str(spectrum), "--root", str(mvh_root),
                 "--out", str(out), "--output-root", str(tmp_path / "o")) == 0
    edge = [Path(p).name for p, _, _ in sorted(stimulus_names("edge"))]
    eidolon = tuple(f"{r}-0-10" for r in (1, 2, 4, 8, 16, 32, 64, 128))
    for dataset, conditions in (("edge", ("NaN",)), ("edge-rotation", ("0", "90", "180", "270")),
                                ("edge-power-equalisation", ("0", "pow")), ("edge-eidolonIII", eidolon)):
        (file,) = (out / "raw-data" / dataset).iterdir()
        assert file.name == f"{dataset}_vit-tiny-patch16-224_session-1.csv"
        trials = read_trials(file)
        assert [(t.condition, t.imagename) for t in trials] == [(c, name) for c in conditions for name in edge]
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["levels"]["edge-power-equalisation"]] == ["original", "equalised"]
    assert results["settings"]["distortions"] == ["rotation", "power-equalisation", "eidolonIII"]
    assert results["settings"]["power_spectrum"] == str(spectrum) and results["settings"]["gamma_table"] == "sRGB"
    assert results["summary"]["edge-rotation_trials"] == 64 and results["summary"]["edge-eidolonIII_trials"] == 128


def test_decision_rule_is_the_mean_over_each_categorys_classes():
    """dog has 117 ImageNet classes, knife one: a spread-out dog loses to a concentrated knife (mean, not sum)."""
    logits = torch.full((1, 1000), -30.0)
    logits[0, list(IMAGENET_INDICES["dog"])] = 0.0
    logits[0, IMAGENET_INDICES["knife"][0]] = math.log(10.0)  # p(knife) = 10 x p(each dog class)
    probs = logits.softmax(dim=1)
    means = mean_category_probabilities(probs)
    assert means.shape == (1, 16)
    assert torch.allclose(means[0, CATEGORIES.index("knife")], probs[0, 499])
    assert torch.allclose(means[0, CATEGORIES.index("dog")], probs[0, list(IMAGENET_INDICES["dog"])].mean())

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits.expand(x.shape[0], -1) * self.scale

    maker = ImageNetClassifier(Fixed(), 8, (0.5,) * 3, (0.5,) * 3, "fixed", "test")
    decided = maker.decide(torch.zeros(3, 3, 20, 20, dtype=torch.uint8))
    assert decided.decisions == ["knife"] * 3 and decided.probabilities.shape == (3, 16)


def test_hf_image_classifier_at_its_own_size(tmp_path, mvh_root, capsys):
    transformers = transformers_or_skip()
    model_dir = tmp_path / "hf-vit"
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=1000,
                                    architectures=["ViTForImageClassification"])
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(model_dir)
    (model_dir / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    maker = load_classifier(f"hf:{model_dir}")
    assert (maker.image_size, maker.mean, maker.std, maker.name) == (32, (0.5,) * 3, (0.25,) * 3, "hf-vit")
    decided = maker.decide(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    assert decided.probabilities.shape == (2, 16) and torch.isfinite(decided.probabilities).all()
    # the same logits as the model on the normalised, resized input
    from blockmae.data.augment import unit_float

    x = unit_float(torch.full((1, 3, 64, 64), 128, dtype=torch.uint8), 32)
    with torch.no_grad():
        expected = mean_category_probabilities(maker.model(pixel_values=(x - 0.5) / 0.25).logits.softmax(1))
    assert torch.allclose(maker.decide(torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)).probabilities, expected)
    # through the command: the directory is recognised as a classifier with its own head
    out = tmp_path / "run"
    assert _eval("--model", str(model_dir), "--datasets", "edge", "--root", str(mvh_root), "--out", str(out),
                 "--output-root", str(tmp_path / "o")) == 0
    assert "16 categories (chance 0.062), 32 px input" in capsys.readouterr().out
    assert len(read_trials(out / "raw-data" / "edge" / "edge_hf-vit_session-1.csv")) == 16


def test_bad_input_is_one_line(vit_file, mvh_root, tmp_path, capsys):
    headless = tmp_path / "headless.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(str(vit_file)).items() if not k.startswith("head.")}, str(headless))
    small_spectrum = tmp_path / "small.npy"
    np.save(small_spectrum, np.ones((16, 16)))
    cases = [
        (["--model", "timm:vit_tiny_patch16_224:/nonexistent.safetensors", "--root", str(mvh_root)],
         "weights file /nonexistent.safetensors"),
        (["--model", "timm:no_such_model_xyz:" + str(vit_file), "--root", str(mvh_root)],
         "cannot load timm:no_such_model_xyz"),
        (["--model", SPEC.format(file=vit_file), "--root", str(tmp_path / "none")], "is not a folder"),
        (["--model", SPEC.format(file=vit_file), "--root", str(tmp_path)],
         "edge does not exist; run `blockmae data prepare mvh-edge"),
        (["--model", SPEC.format(file=vit_file), "--subject", "subject-01"], "not subject-XX"),
        (["--model", SPEC.format(file=vit_file), "--num-images", "5"], "takes no --num-images"),
        (["--model", SPEC.format(file=vit_file), "--root", str(mvh_root), "--gamma-table", str(tmp_path / "g.npy")],
         "--gamma-table is used only with --distortions false-colour"),
        (["--model", SPEC.format(file=vit_file), "--root", str(mvh_root), "--distortions", "false-colour",
          "--gamma-table", str(tmp_path / "g.npy")], "gamma table"),
        (["--model", SPEC.format(file=vit_file), "--root", str(mvh_root), "--distortions", "power-equalisation",
          "--power-spectrum", str(small_spectrum)], "a (16, 16) spectrum, but the model decides on 224-px images"),
    ]
    for extra, message in cases:
        assert _eval(*extra, "--datasets", "edge", "--output-root", str(tmp_path / "o")) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("blockmae: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists() or not Registry(tmp_path / "o").list_runs(kind="mvh")  # refused before a run
    assert _eval("--model", SPEC.format(file=vit_file), "--datasets", "blur") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockmae: error: argument --datasets: invalid choice: 'blur'") and "\n" not in err
    # an encoder without a 1000-way head goes through a probe: a probe's classes must cover some category
    from blockmae.mvh.decisions import is_imagenet_classifier

    assert is_imagenet_classifier(SPEC.format(file=vit_file))
    assert not is_imagenet_classifier(f"timm:vit_tiny_patch16_224:{headless}")
    with pytest.raises(BlockMAEError, match="cannot load"):
        load_classifier("timm:no_such_model_xyz")


@pytest.mark.slow
def test_tiny_imagenet_probe_decides_among_its_covered_categories(shared_data, mvh_root, tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["probe", "checkpoint=random", "kind=linear", "encoder.preset=vit_nano", "encoder.img_size=64",
                 "encoder.patch_size=8", "data.dataset=tiny-imagenet", "data.num_images=null",
                 f"data.root={shared_data / 'tiny-imagenet-200-mini'}", "linear.epochs=1", "linear.warmup_epochs=0",
                 f"output_root={out}", "device=cpu", "name=tin"]) == 0
    (probe,) = Registry(out).list_runs(kind="probe")
    capsys.readouterr()
    (mvh_root / "tiny-imagenet").symlink_to(shared_data / "tiny-imagenet-200-mini")  # its own data, as a dataset
    assert _eval("--model", "random", "--probe", probe.run_dir, "--datasets", *DATASETS, "tiny-imagenet",
                 "--root", str(mvh_root), "--out", str(tmp_path / "run"), "--output-root", str(out)) == 0
    wnids = set((shared_data / "tiny-imagenet-200-mini" / "wnids.txt").read_text().split())
    rows = [line.split("\t") for line in
            (shared_data / "tiny-imagenet-to-16-categories.tsv").read_text().splitlines()[1:]]
    covered = {r[0] for r in rows if r[1] in wnids}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["settings"]["kind"] == "probe" and set(results["settings"]["categories"]) == covered
    assert results["summary"]["num_categories"] == len(covered)
    assert results["levels"]["edge"][0]["chance"] == 1 / len(covered)
    for name, conditions in DATASETS.items():
        (file,) = (tmp_path / "run" / "raw-data" / name).iterdir()
        trials = read_trials(file)
        expected = [s for s in stimulus_names(name, conditions) if s[1] in covered
                    and (name != "cue-conflict" or Path(s[0]).stem.split("-")[1].rstrip("0123456789") in covered)]
        assert len(trials) == len(expected) == results["summary"][f"{name}_trials"] > 0
        assert {t.category for t in trials} <= covered and {t.object_response for t in trials} <= covered
        assert results["summary"][f"{name}_skipped"] == len(stimulus_names(name, conditions)) - len(expected)
    # Tiny-ImageNet's val images of the mapped classes (all 10 of the mini set's), category = their class's
    trials = read_trials(tmp_path / "run" / "raw-data" / "tiny-imagenet" / "tiny-imagenet_random-probe_session-1.csv")
    assert len(trials) == 100 and {t.category for t in trials} == covered and trials[0].imagename.startswith("val_")
