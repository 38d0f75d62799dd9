"""model-vs-human's trial files and 16 categories (blockmae.mvh.trials, blockmae.mvh.categories)."""

from __future__ import annotations

import itertools
import math

import pytest

from blockmae.errors import BlockMAEError
from blockmae.mvh.categories import CATEGORIES, IMAGENET_INDICES
from blockmae.mvh.trials import (TRIAL_COLUMNS, Trial, image_id, is_human, read_raw_data, read_trials,
                                 trial_file_name, write_trials)

HUMAN_CSV = """subj,Session,trial,rt,object_response,category,condition,imagename
subject-01,1,1,0.81,knife,knife,true,0001_fc_s01_true_knife_35_n03041632_86251.png
subject-01,1,2,1.2,na,car,false,0002_fc_s01_false_car_35_n03100240_16866.png
"""


def test_categories_have_their_imagenet_classes() -> None:
    counts = {"airplane": 1, "bear": 4, "bicycle": 2, "bird": 49, "boat": 5, "bottle": 7, "car": 3, "cat": 6,
              "chair": 4, "clock": 3, "dog": 109, "elephant": 2, "keyboard": 2, "knife": 1, "oven": 1, "truck": 8}
    assert tuple(IMAGENET_INDICES) == CATEGORIES and len(CATEGORIES) == 16
    assert {c: len(v) for c, v in IMAGENET_INDICES.items()} == counts
    for a, b in itertools.combinations(IMAGENET_INDICES.values(), 2):
        assert not set(a) & set(b)
    assert all(0 <= i < 1000 for v in IMAGENET_INDICES.values() for i in v)
    assert all(len(set(v)) == len(v) for v in IMAGENET_INDICES.values())


def test_file_names_follow_model_vs_human() -> None:
    assert trial_file_name("edge", "subject-03") == "edge_subject-03_session_1.csv"
    assert trial_file_name("edge", "simclr_resnet50x1") == "edge_simclr-resnet50x1_session-1.csv"
    assert trial_file_name("low-pass", "bagnet33", session=2) == "low-pass_bagnet33_session-2.csv"
    with pytest.raises(BlockMAEError):
        trial_file_name("edge", "../x")


def test_image_id_strips_the_human_prefix() -> None:
    assert image_id("0000_cl_s01_bw_boat_40_n02951358_5952.JPEG") == "n02951358_5952.JPEG"
    assert image_id("0001_s5n_s01_0_bird_00_bird3-bird2.png") == "bird3-bird2.png"
    assert image_id("airplane1-bicycle2.png") == "airplane1-bicycle2.png"
    assert image_id("0001_ske_dnn_0_boat_00_boat-0068-sketch-23.png") == "boat-0068-sketch-23.png"


def test_read_human_file(tmp_path) -> None:
    path = tmp_path / "false-colour_subject-01_session_1.csv"
    path.write_text(HUMAN_CSV)
    first, second = read_trials(path)
    assert first == Trial("subject-01", 1, 1, 0.81, "knife", "knife", "true",
                          "0001_fc_s01_true_knife_35_n03041632_86251.png")
    assert first.correct and not second.correct and second.object_response == "na"
    assert second.image_id == "n03100240_16866.png" and is_human(first.subj)


def test_write_read_round_trip(tmp_path) -> None:
    trials = [Trial("vit_tiny", 1, 1, math.nan, "cat", "dog", "0.03", "0001_nse_dnn_0.03_dog_10_n02085782_1.png"),
              Trial("vit_tiny", 1, 2, math.nan, "dog", "dog", "NaN", "dog1-cat2.png")]
    path = write_trials(tmp_path / trial_file_name("uniform-noise", "vit_tiny"), trials)
    assert path.read_text().splitlines()[0] == ",".join(TRIAL_COLUMNS)
    assert path.read_text().splitlines()[1].split(",")[3] == "NaN"
    back = read_trials(path)
    assert [t.__dict__ | {"rt": 0} for t in back] == [t.__dict__ | {"rt": 0} for t in trials]
    assert all(math.isnan(t.rt) for t in back)


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("subj,session,trial\nx,1,1\n", "header"),
    (HUMAN_CSV + "subject-01,1,3\n", "line 4: 3 fields"),
    (HUMAN_CSV.replace(",1,2,", ",one,2,"), "line 3"),
    (HUMAN_CSV.splitlines()[0] + "\n", "no trials"),
])
def test_malformed_files_are_one_line_errors(tmp_path, text, message) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BlockMAEError, match=message):
        read_trials(path)


def test_read_raw_data_groups_by_decision_maker(tmp_path) -> None:
    (tmp_path / "false-colour").mkdir()
    (tmp_path / "false-colour" / "false-colour_subject-01_session_1.csv").write_text(HUMAN_CSV)
    write_trials(tmp_path / "false-colour" / trial_file_name("false-colour", "simclr_resnet50x1"),
                 [Trial("simclr_resnet50x1", 1, 1, math.nan, "knife", "knife", "true", "x.png")])
    (tmp_path / "notes").mkdir()  # a folder without CSVs is not a dataset
    (tmp_path / "performances").mkdir()  # nor model-vs-human's summaries
    (tmp_path / "performances" / "vit.csv").write_text("subj,dataset_name,metric_name,performance\n")
    data = read_raw_data(tmp_path)
    assert list(data) == ["false-colour"]
    assert list(data["false-colour"]) == ["simclr-resnet50x1", "subject-01"]
    assert len(data["false-colour"]["subject-01"]) == 2
    with pytest.raises(BlockMAEError, match="does not exist"):
        read_raw_data(tmp_path / "missing")
    with pytest.raises(BlockMAEError, match="no dataset folders"):
        read_raw_data(tmp_path / "notes")


def test_real_raw_data_reads(shared_data) -> None:
    data = read_raw_data(shared_data / "model-vs-human" / "raw-data")
    assert len(data) == 17
    assert sorted(m for m in data["cue-conflict"] if not is_human(m)) == ["bagnet33", "simclr-resnet50x1"]
    assert sum(is_human(m) for m in data["cue-conflict"]) == 10
    assert all(len(t) == 1280 for t in data["cue-conflict"].values())
