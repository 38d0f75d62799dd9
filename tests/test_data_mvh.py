"""model-vs-human's datasets: its published archives (served from 127.0.0.1), its layouts, texture-vs-shape's."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from blockmae.cli import main
from blockmae.data import load_dataset
from blockmae.data import mvh
from blockmae.data.cue_conflict import CATEGORIES
from blockmae.errors import BlockMAEError
from mvh_fixture import mvh_archive, png_bytes, stimulus_names


@pytest.fixture()
def release(http_server, monkeypatch):
    """model-vs-human's release URL pointed at the local server."""
    monkeypatch.setattr(mvh, "RELEASE_URL", http_server.url + "/v0.1/{name}.tar.gz")
    return http_server


def test_prepare_downloads_the_published_archive(release, tmp_path, capsys):
    conditions = ("cr", "bw")
    release.files["/v0.1/colour.tar.gz"] = mvh_archive("colour", conditions)
    root = tmp_path / "colour"
    assert main(["data", "prepare", "mvh-colour", "--root", str(root), "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["classes: 16", "test: 32"]
    assert [r[0] for r in release.requests] == ["/v0.1/colour.tar.gz"]
    assert (root / "colour.tar.gz").is_file() and (root / "colour" / "dnn" / "session-1").is_dir()

    ds, stimuli = mvh.load_stimuli("colour", root, image_size=224)
    expected = sorted(stimulus_names("colour", conditions), key=lambda s: s[0])  # ImageFolder order
    assert [s.imagename for s in stimuli] == [Path(p).name for p, _, _ in expected]
    assert [(s.category, s.condition, s.session) for s in stimuli] == [(c, k, 1) for _, c, k in expected]
    assert ds.images.shape == (32, 3, 224, 224) and ds.class_names == list(CATEGORIES)
    assert [CATEGORIES[i] for i in ds.labels.tolist()] == [s.category for s in stimuli]
    names = mvh.conditions(s.condition for s in stimuli)
    assert names == ["bw", "cr"]
    assert [names[i] for i in ds.extra_labels["condition"].tolist()] == [s.condition for s in stimuli]
    # the same folder through load_dataset, and a second prepare is served from disk
    assert len(load_dataset("mvh-colour", "test", root=root, image_size=224)) == 32
    assert main(["data", "prepare", "mvh-colour", "--root", str(root), "--workers", "0"]) == 0
    assert len(release.requests) == 1


def test_cue_conflict_archive_labels_textures(release, tmp_path):
    release.files["/v0.1/cue-conflict.tar.gz"] = mvh_archive("cue-conflict")
    root = tmp_path / "cc"
    assert main(["data", "prepare", "mvh-cue-conflict", "--root", str(root), "--workers", "0"]) == 0
    ds, stimuli = mvh.load_stimuli("cue-conflict", root, image_size=32)
    assert len(stimuli) == 17 and all(s.condition == "NaN" for s in stimuli)
    agreeing = [s for s in stimuli if s.texture == s.category]
    assert [s.imagename for s in agreeing] == ["cat9-cat3.png"]
    assert [CATEGORIES[i] for i in ds.extra_labels["texture"].tolist()] == [s.texture for s in stimuli]


def test_a_missing_archive_is_one_line(release, tmp_path):
    with pytest.raises(BlockMAEError, match="HTTP 404"):
        from blockmae.data.roots import obtain

        obtain("mvh-sketch", tmp_path, None, mvh.data_dir_finder("sketch"), mvh.layout("sketch"),
               official=mvh.official_archive("sketch"), progress=False)


def test_texture_vs_shape_stimuli_in_their_layout(shared_data, tmp_path, capsys):
    source = shared_data / "texture-vs-shape"
    for name, folder in (("edge", "edges"), ("silhouette", "filled-silhouettes")):
        root = tmp_path / name
        assert main(["data", "prepare", f"mvh-{name}", "--root", str(root), "--source", str(source),
                     "--workers", "0", "--image-size", "32"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == ["classes: 16", "test: 160"]
        ds, stimuli = mvh.load_stimuli(name, root, image_size=32)
        assert {s.category for s in stimuli} == set(CATEGORIES)
        assert all(s.imagename.startswith(s.category) and s.path.parent.parent.name == folder for s in stimuli)
    # the repository's own layout (stimuli/edges inside texture-vs-shape-master/), from a zip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((source / "edges").rglob("*.png"))[:20]:
            zf.write(path, Path("texture-vs-shape-master/stimuli/edges") / path.relative_to(source / "edges"))
    archive = tmp_path / "texture-vs-shape-master.zip"
    archive.write_bytes(buffer.getvalue())
    assert main(["data", "prepare", "mvh-edge", "--root", str(tmp_path / "zipped"), "--source", str(archive),
                 "--workers", "0", "--image-size", "32"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "test: 20"


def test_real_cue_conflict_stimuli(shared_data, tmp_path, capsys):
    root = tmp_path / "cue-conflict"
    assert main(["data", "prepare", "mvh-cue-conflict", "--root", str(root), "--source",
                 str(shared_data / "cue-conflict-mini"), "--workers", "0", "--image-size", "32"]) == 0
    _, stimuli = mvh.load_stimuli("cue-conflict", root, image_size=32)
    pngs = sorted((shared_data / "cue-conflict-mini").glob("*/*.png"))
    assert [s.imagename for s in stimuli] == [p.name for p in pngs]
    assert [s.category for s in stimuli] == [p.parent.name for p in pngs]
    assert sum(s.texture == s.category for s in stimuli) == 1  # cat1-cat3.png


def test_model_vs_human_datasets_folder_is_read_in_place(tmp_path):
    """Its own `datasets/<name>/` folder (no prepare): the dataset folder itself is a root."""
    for path, _, _ in stimulus_names("low-pass", ("0", "3", "40")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(png_bytes(1))
    _, stimuli = mvh.load_stimuli("low-pass", tmp_path / "low-pass", image_size=16)
    assert mvh.conditions(s.condition for s in stimuli) == ["0", "3", "40"]  # numeric order, not "0" "3" "40" by text
    assert len(stimuli) == 48


@pytest.mark.parametrize("bad, message", [
    ("edge/kitten/kitten1.png", "kitten is not one of the 16 categories"),
    ("cue-conflict/cat/cat1.png", "is not named <shapeN>-<textureM>.png"),
    ("colour/dnn/session-1/0001_cl_dnn_cr.png", "is not named <NNNN>_<abbr>"),
    ("colour/dnn/session-1/0001_cl_dnn_cr_kitten_00_x.png", "is not named <NNNN>_<abbr>"),
])
def test_bad_layouts_name_the_file(tmp_path, bad, message):
    name = bad.split("/")[0]
    for path, _, _ in stimulus_names(name, ("cr",)):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(png_bytes(0))
    (tmp_path / bad).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / bad).write_bytes(png_bytes(0))
    with pytest.raises(BlockMAEError, match=message):
        mvh.load_stimuli(name, tmp_path / name, image_size=16)


def test_names_and_splits_are_checked(tmp_path):
    with pytest.raises(BlockMAEError, match="unknown model-vs-human dataset 'mvh-blur'"):
        mvh.official_archive("mvh-blur")
    with pytest.raises(BlockMAEError, match="one split, test"):
        load_dataset("mvh-edge", "train", root=tmp_path)
    with pytest.raises(BlockMAEError, match="does not look like mvh-edge"):
        load_dataset("mvh-edge", "test", root=tmp_path)
    shutil.rmtree(tmp_path)
    with pytest.raises(BlockMAEError, match="does not exist"):
        load_dataset("mvh-sketch", "test", root=tmp_path)
    assert mvh.official_archive("eidolonII").url.endswith("/v0.1/eidolonII.tar.gz")
