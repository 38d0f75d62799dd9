"""model-vs-human's metrics (blockmae.mvh.metrics) and `blockmae mvh benchmark`: hand-computed values on tiny
trial files, the published numbers on the real raw data in ../shared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from blockmae.cli import main
from blockmae.errors import BlockMAEError
from blockmae.mvh.conditions import canonical_condition
from blockmae.mvh.metrics import HUMANS, benchmark, kappa, resample_weights, texture_category
from blockmae.mvh.trials import Trial, read_raw_data, trial_file_name, write_trials

# rotation, condition 90: correct per image (4 images) -> model [1,1,0,0], h1 [1,0,1,0], h2 [1,1,1,0].
# Condition 0 is model-vs-human's excluded control: everyone's answers there must not count.
ROTATION_IMAGES = ("n01_1.png", "n01_2.png", "n01_3.png", "n01_4.png")
ROTATION_CORRECT = {"vit-x": (1, 1, 0, 0), "subject-01": (1, 0, 1, 0), "subject-02": (1, 1, 1, 0)}
# cue-conflict: shape-texture images; the third agrees (left out of shape bias).
CUE_IMAGES = ("cat1-dog2.png", "dog1-cat1.png", "car1-car2.png")
CUE_RESPONSES = {"vit-x": ("cat", "cat", "car"), "subject-01": ("cat", "dog", "car"), "subject-02": ("dog", "na", "car")}


def _trials(maker: str, dataset: str) -> list[Trial]:
    human = maker.startswith("subject-")
    subj = maker if human else maker.replace("-", "_")

    def name(k: int, condition: str, image: str) -> str:  # humans' names carry a prefix, as in the real files
        return f"{k:04d}_x_s01_{condition}_c_00_{image}" if human else image

    trials = []
    if dataset == "rotation":
        for k, (image, ok) in enumerate(zip(ROTATION_IMAGES, ROTATION_CORRECT[maker]), start=1):
            condition = "90.0" if not human else "90"  # two spellings of one level
            trials.append(Trial(subj, 1, k, math.nan, "bird" if ok else "dog", "bird", condition,
                                name(k, "90", image)))
            trials.append(Trial(subj, 1, k + 4, math.nan, "cat", "bird", "0", name(k + 4, "0", "n02_" + image[4:])))
    else:
        for k, (image, response) in enumerate(zip(CUE_IMAGES, CUE_RESPONSES[maker]), start=1):
            shape = image.split("-")[0].rstrip("0123456789")
            trials.append(Trial(subj, 1, k, math.nan, response, shape, "0" if human else "NaN", name(k, "0", image)))
    return trials


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    for dataset in ("rotation", "cue-conflict"):
        for maker in ROTATION_CORRECT:
            write_trials(tmp_path / dataset / trial_file_name(dataset, maker), _trials(maker, dataset))
    return tmp_path


def test_hand_computed_consistency(raw_dir: Path) -> None:
    r = benchmark(read_raw_data(raw_dir), resamples=0)
    rot = {m: {k: v["value"] for k, v in values.items()} for m, values in r["per_dataset"]["rotation"].items()}
    # model vs h1: p = .5/.5, c_obs = .5, c_exp = .5 -> kappa 0; vs h2: p = .5/.75, c_obs = .75, c_exp = .5 -> .5
    assert rot["vit-x"] == pytest.approx({"ood_accuracy": 0.5, "accuracy_difference": (0 + 0.0625) / 2,
                                          "observed_consistency": (0.5 + 0.75) / 2, "error_consistency": 0.25})
    # h1 vs h2: p = .5/.75, c_obs = .75 -> kappa .5; humans' accuracy pooled: 5 of 8
    assert rot[HUMANS] == pytest.approx({"ood_accuracy": 0.625, "accuracy_difference": 0.0625,
                                         "observed_consistency": 0.75, "error_consistency": 0.5})
    cue = r["per_dataset"]["cue-conflict"]
    # model correct [1,0,1] vs h1 [1,1,1]: c_obs = 2/3 = c_exp -> 0; vs h2 [0,0,1]: c_obs 2/3, c_exp 4/9 -> 0.4
    assert cue["vit-x"]["error_consistency"]["value"] == pytest.approx((0 + 0.4) / 2)
    assert r["benchmark"]["vit-x"]["ood_accuracy"]["value"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["benchmark"]["vit-x"]["ood_accuracy"]["datasets"] == 2
    # shape bias: model 1 shape, 1 texture; humans pooled 2 shape (h1), 1 texture (h2); "na" is neither
    shape = r["shape_bias"]
    assert shape["vit-x"]["shape_bias"]["value"] == 0.5
    assert shape[HUMANS]["shape_bias"]["value"] == pytest.approx(2 / 3)
    assert shape[HUMANS]["observers"] == {"subject-01": 1.0, "subject-02": 0.0}
    assert shape["vit-x"]["per_category"]["cat"]["value"] == 1.0 and shape["vit-x"]["per_category"]["dog"]["value"] == 0.0
    assert shape["vit-x"]["per_category"]["car"]["value"] is None  # no conflicting car image
    # accuracy per condition keeps the excluded control, with a Wilson interval over trials
    points = r["accuracy_by_condition"]["rotation"]["vit-x"]
    assert [p["condition"] for p in points] == ["0", "90"] and points[0]["accuracy"] == 0.0
    assert points[1]["low"] < 0.5 < points[1]["high"] and points[1]["trials"] == 4


def test_bootstrap_intervals_bracket_the_estimate(raw_dir: Path) -> None:
    r = benchmark(read_raw_data(raw_dir), resamples=200, seed=3)
    ood = r["benchmark"]["vit-x"]["ood_accuracy"]
    assert ood["low"] <= ood["value"] <= ood["high"] and ood["low"] < ood["high"]
    assert benchmark(read_raw_data(raw_dir), resamples=200, seed=3) == r  # seeded


def test_kappa_weights_and_names() -> None:
    assert kappa(np.array([1.0]), np.array([1.0]))[0] == 1.0  # identical answers: 1, not 0/0
    assert kappa(np.array([0.5]), np.array([0.5]))[0] == 0.0
    weights = resample_weights(5, 3, np.random.default_rng(0))
    assert weights.shape == (4, 5) and (weights[0] == 1).all() and (weights.sum(axis=1) == 5).all()
    assert texture_category("0001_s5n_s01_0_bird_00_bird3-bird2.png") == "bird"
    assert texture_category("dog10-cat4.png") == "cat"
    assert canonical_condition("uniform-noise", "0.10") == "0.1" and canonical_condition("high-pass", "3") == "3.0"
    assert canonical_condition("false-colour", "true") == "True" and canonical_condition("edge", "NaN") == ""
    assert canonical_condition("my-distortion", "0.5") == "0.5"
    with pytest.raises(BlockMAEError, match="not one of its levels"):
        canonical_condition("rotation", "45")


def test_unmatched_images_and_unknown_models_are_refused(raw_dir: Path) -> None:
    raw = read_raw_data(raw_dir)
    with pytest.raises(BlockMAEError, match="no trial files of model 'resnet' in the raw data; models there: vit-x"):
        benchmark(raw, models=["resnet"], resamples=0)
    assert list(benchmark(raw, models=["vit_x"], resamples=0)["benchmark"]) == ["vit-x", HUMANS]
    raw["rotation"]["vit-x"] = raw["rotation"]["vit-x"][:-1]
    with pytest.raises(BlockMAEError, match="must have seen the same images"):
        benchmark(raw, resamples=0)
    raw["rotation"]["vit-x"] = raw["rotation"]["vit-x"] + raw["rotation"]["vit-x"][-1:] * 2
    with pytest.raises(BlockMAEError, match="two trials on image"):
        benchmark(raw, resamples=0)


def test_models_without_humans_get_accuracy_only(tmp_path: Path) -> None:
    write_trials(tmp_path / "rotation" / trial_file_name("rotation", "vit-x"), _trials("vit-x", "rotation"))
    r = benchmark(read_raw_data(tmp_path), resamples=0)
    assert set(r["benchmark"]["vit-x"]) == {"ood_accuracy"} and HUMANS not in r["benchmark"]
    # only the excluded control level: accuracy per condition, but nothing enters the benchmark means
    control = [t for t in _trials("vit-x", "rotation") if t.condition == "0"]
    write_trials(tmp_path / "rotation" / trial_file_name("rotation", "vit-x"), control)
    r = benchmark(read_raw_data(tmp_path), resamples=0)
    assert r["benchmark"] == {} and r["accuracy_by_condition"]["rotation"]["vit-x"][0]["accuracy"] == 0.0


def test_cli_writes_results_and_report(raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["mvh", "benchmark", "--raw-data", str(raw_dir), "--out", str(out), "--resamples", "20"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"]["vit-x"]["error_consistency"]["datasets"] == 2
    assert (out / "report.html").is_file() and (out / "figures" / "shape-bias-per-category.png").is_file()
    assert "OOD robustness" in (out / "report.md").read_text()
    assert "vit-x" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing folder", "unknown model", "malformed csv", "negative resamples"])
def test_cli_bad_input_is_one_line(problem: str, raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["mvh", "benchmark", "--raw-data", str(raw_dir), "--out", str(tmp_path / "out")]
    if problem == "missing folder":
        args[3] = str(tmp_path / "nowhere")
    elif problem == "unknown model":
        args += ["--models", "resnet"]
    elif problem == "malformed csv":
        (raw_dir / "rotation" / "rotation_broken_session-1.csv").write_text("subj,session\nx,1\n")
    else:
        args += ["--resamples", "-1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockmae: error: ") and "\n" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_published_numbers_from_the_real_trial_files(shared_data: Path) -> None:
    """model-vs-human's benchmark tables (its latex-report/assets), from its raw trial files in ../shared."""
    r = benchmark(read_raw_data(shared_data / "model-vs-human" / "raw-data"), resamples=0)
    published = {"bagnet33": (0.398, 0.156, 0.567, 0.137, 0.051),
                 "simclr-resnet50x1": (0.596, 0.080, 0.667, 0.179, 0.388)}
    for model, numbers in published.items():
        values = r["benchmark"][model]
        got = (values["ood_accuracy"]["value"], values["accuracy_difference"]["value"],
               values["observed_consistency"]["value"], values["error_consistency"]["value"],
               r["shape_bias"][model]["shape_bias"]["value"])
        assert tuple(round(x, 3) for x in got) == numbers, model
        assert all(values[m]["datasets"] == 17 for m in values)
    humans = r["shape_bias"][HUMANS]
    # 9236 shape and 398 texture decisions of 10 observers: 0.95869 pooled (the "0.958" is this
    # number cut to three decimals; rounded it is 0.959); the mean of the observers' shape biases is 0.958
    assert (humans["shape_decisions"], humans["texture_decisions"]) == (9236, 398)
    assert math.floor(humans["shape_bias"]["value"] * 1000) / 1000 == 0.958
    assert round(humans["observers_mean"], 3) == 0.958
    assert round(min(humans["observers"].values()), 3) == 0.919 and round(max(humans["observers"].values()), 3) == 0.987
    assert len(r["per_dataset"]) == 17 and all(HUMANS in v for v in r["per_dataset"].values())


def test_common_images_compares_on_the_images_every_maker_saw(raw_dir: Path) -> None:
    """A decision maker that saw fewer images (a probe covering some categories) beside humans who saw all."""
    raw = read_raw_data(raw_dir)
    raw["rotation"]["vit-x"] = [t for t in raw["rotation"]["vit-x"] if t.image_id != "n01_4.png"]
    with pytest.raises(BlockMAEError, match="--common-images"):
        benchmark(raw, resamples=0)
    record = benchmark(raw, resamples=0, common_images=True)
    assert record["datasets"]["rotation"]["common_images_only"]
    rows = {r["condition"]: r for r in record["accuracy_by_condition"]["rotation"]["vit-x"]}
    humans = {r["condition"]: r for r in record["accuracy_by_condition"]["rotation"][HUMANS]}
    # condition 90 on n01_1..3: model 1,1,0 -> 2/3; humans (1,0,1) and (1,1,1) -> 5/6
    assert rows["90"]["accuracy"] == pytest.approx(2 / 3) and humans["90"]["accuracy"] == pytest.approx(5 / 6)
