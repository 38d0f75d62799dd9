"""DTD (../shared/data/dtd-mini), cue-conflict (../shared/data/cue-conflict-mini), class-folder trees,
and load_dataset's dispatch."""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from blockmae.data import DATASETS, load_dataset
from blockmae.data.cue_conflict import CATEGORIES, load_category_mapping
from blockmae.errors import BlockMAEError


# ---- DTD -----------------------------------------------------------------------------------------------

def test_dtd_mini_splits(shared_data, tmp_path):
    root = shared_data / "dtd-mini"
    for split in ("train", "val", "test"):
        ds = load_dataset("dtd", split, root=root, image_size=48, cache_dir=tmp_path, progress=False)
        assert ds.images.shape == (6, 3, 48, 48)
        assert ds.class_names == ["banded", "chequered", "cracked"]
        lines = (root / "labels" / f"{split}1.txt").read_text().split()
        assert ds.labels.tolist() == [ds.class_names.index(line.split("/")[0]) for line in lines]
    # Varying sizes become squares: shorter side to 48, centre crop.
    first = root / "images" / lines[0]
    with Image.open(first) as img:
        assert img.size == (640, 480)
        expected = np.array(ImageOps.fit(img.convert("RGB"), (48, 48), method=Image.Resampling.BICUBIC))
    assert torch.equal(ds.images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_dtd_torchvision_layout_and_errors(shared_data, tmp_path):
    nested = tmp_path / "tv" / "dtd" / "dtd"  # torchvision's DTD(root) keeps the release at root/dtd/dtd
    shutil.copytree(shared_data / "dtd-mini", nested)
    ds = load_dataset("dtd", "val", root=tmp_path / "tv", image_size=32, cache_dir=tmp_path / "c", progress=False)
    assert len(ds) == 6
    with pytest.raises(BlockMAEError, match=r"missing .*labels/train2.txt"):
        load_dataset("dtd", "train", root=nested, partition=2, cache_dir=tmp_path / "c")
    with pytest.raises(BlockMAEError, match="partition must be 1 to 10"):
        load_dataset("dtd", "train", root=nested, partition=11)
    (nested / "labels" / "val1.txt").write_text("banded/banded_0005.jpg\nstriped/striped_0001.jpg\n")
    with pytest.raises(BlockMAEError, match=r"val1.txt:2: 'striped/striped_0001.jpg' is not <class>/<file>"):
        load_dataset("dtd", "val", root=nested)
    with pytest.raises(BlockMAEError, match="does not look like dtd"):
        load_dataset("dtd", "train", root=nested / "images")


# ---- cue-conflict ---------------------------------------------------------------------------------------

def test_cue_conflict_mini(shared_data, tmp_path):
    ds = load_dataset("cue-conflict", "test", root=shared_data / "cue-conflict-mini", image_size=32,
                      cache_dir=tmp_path, progress=False)
    # The folder holds 2 stimuli per category plus cat1-cat3.png (33 images; its README says 34 files, LICENSE included).
    assert len(ds) == 33 and ds.class_names == sorted(CATEGORIES) and len(CATEGORIES) == 16
    assert torch.bincount(ds.labels, minlength=16).tolist() == [2] * 7 + [3] + [2] * 8
    agree = ds.extra_labels["agree"]
    assert agree.sum() == 1
    i = int(agree.nonzero())
    assert ds.labels[i] == ds.extra_labels["texture"][i] == CATEGORIES.index("cat")
    files = sorted(p.relative_to(shared_data / "cue-conflict-mini") for p in (shared_data / "cue-conflict-mini").glob("*/*.png"))
    names = [(f.parent.name, f.stem.split("-")[1].rstrip("0123456789")) for f in files]
    assert sorted(zip(ds.labels.tolist(), ds.extra_labels["texture"].tolist())) == sorted(
        (CATEGORIES.index(s), CATEGORIES.index(t)) for s, t in names)
    conflicts = load_dataset("cue-conflict", "test", root=shared_data / "cue-conflict-mini", image_size=32,
                             cache_dir=tmp_path, keep_agreeing=False, progress=False)
    assert len(conflicts) == 32 and conflicts.extra_labels["agree"].sum() == 0
    assert bool((conflicts.labels != conflicts.extra_labels["texture"]).all())


def test_category_mapping_is_package_data(shared_data):
    mapping = load_category_mapping()
    assert len(mapping) == 11 and sum(len(w) for w in mapping.values()) == 26
    assert set(mapping) <= set(CATEGORIES)
    assert {"airplane", "bicycle", "clock", "knife", "oven"}.isdisjoint(mapping)
    assert mapping["bear"] == ["n02132136"] and len(mapping["cat"]) == 4
    rows = (shared_data / "tiny-imagenet-to-16-categories.tsv").read_text().splitlines()[1:]
    assert sorted((c, w) for c, ws in mapping.items() for w in ws) == sorted(tuple(r.split("\t")[:2]) for r in rows)


def test_misnamed_stimulus_is_named(shared_data, tmp_path):
    root = tmp_path / "stimuli"
    shutil.copytree(shared_data / "cue-conflict-mini", root)
    shutil.copy(root / "cat" / "cat1-boat1.png", root / "cat" / "dog1-boat1.png")
    with pytest.raises(BlockMAEError, match=rf"{root / 'cat' / 'dog1-boat1.png'} is not named <catN>-<textureM>.png"):
        load_dataset("cue-conflict", "test", root=root)


@pytest.fixture()
def repo_archive_server(shared_data, tmp_path):
    """The mini stimuli inside a zip laid out like GitHub's archive of rgeirhos/texture-vs-shape, served locally."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("texture-vs-shape-master/README.md", "repository readme")
        for path in sorted((shared_data / "cue-conflict-mini").rglob("*.png")):
            zf.write(path, f"texture-vs-shape-master/stimuli/style-transfer-preprocessed-512/"
                           f"{path.relative_to(shared_data / 'cue-conflict-mini')}")
    served = tmp_path / "served"
    served.mkdir()
    (served / "master.zip").write_bytes(buffer.getvalue())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/master.zip", hashlib.sha256(buffer.getvalue()).hexdigest()
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_prepare_cue_conflict_from_a_repository_archive(repo_archive_server, tmp_path, capsys):
    from blockmae.cli import main

    url, sha256 = repo_archive_server
    root = tmp_path / "root"
    assert main(["data", "prepare", "cue-conflict", "--root", str(root), "--source", url, "--sha256", sha256,
                 "--image-size", "32", "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["classes: 16", "test: 33"]
    ds = load_dataset("cue-conflict", "test", root=root, image_size=32)
    assert len(ds) == 33 and ds.extra_labels["agree"].sum() == 1
    assert main(["data", "prepare", "cue-conflict", "--root", str(tmp_path / "r2"), "--source", url,
                 "--sha256", "0" * 64]) == 2
    assert "corrupted (sha256" in capsys.readouterr().err


# ---- class-folder trees ----------------------------------------------------------------------------------

@pytest.fixture()
def tree(shared_data, tmp_path):
    """A Stylized-ImageNet-like tree: two ImageNet-wnid folders with 3 images each (from the Tiny-ImageNet mini)."""
    root = tmp_path / "tree" / "val"
    for wnid in ("n02123045", "n01855672"):
        (root / wnid).mkdir(parents=True)
        for k in range(3):
            shutil.copy(shared_data / "tiny-imagenet-200-mini" / "train" / wnid / "images" / f"{wnid}_{k}.JPEG",
                        root / wnid / f"{k}.JPEG")
    return root


def test_folder_tree_and_split_subfolder(tree, tmp_path):
    ds = load_dataset("folder", "val", root=tree.parent, image_size=32, cache_dir=tmp_path / "c", progress=False)
    assert ds.class_names == ["n01855672", "n02123045"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    same = load_dataset("folder", "all", root=tree, image_size=32, cache_dir=tmp_path / "c2", progress=False)
    assert torch.equal(same.images, ds.images)
    with pytest.raises(BlockMAEError, match="has no sub-folder 'train'"):
        load_dataset("folder", "train", root=tree.parent)
    with pytest.raises(BlockMAEError, match="image folder .* does not exist"):
        load_dataset("folder", "all", root=tmp_path / "nothing")


def test_folder_mapping_to_tiny_imagenet_wnids(tree, tmp_path, shared_data):
    mapping = tmp_path / "map.tsv"
    mapping.write_text("# folder -> Tiny-ImageNet wnid\nn02123045\tn02123045\nn01855672\tn01855672\n")
    wnids = shared_data / "tiny-imagenet-200-mini"  # labels in the mini set's 10-class space
    ds = load_dataset("folder", "all", root=tree, image_size=32, mapping=mapping, target_wnids=wnids,
                      cache_dir=tmp_path / "c", progress=False)
    tin = sorted((wnids / "wnids.txt").read_text().split())
    assert ds.num_classes == 10 and ds.class_names == tin
    assert ds.labels.tolist() == [tin.index("n01855672")] * 3 + [tin.index("n02123045")] * 3
    assert ds.extra_labels["folder"].tolist() == [0, 0, 0, 1, 1, 1]
    mapping.write_text("n02123045\tn02123045\n")
    with pytest.raises(BlockMAEError, match=r"1 folders of .* are not in .*map.tsv \(e.g. n01855672\)"):
        load_dataset("folder", "all", root=tree, mapping=mapping)
    partial_ds = load_dataset("folder", "all", root=tree, image_size=32, mapping=mapping, skip_unmapped=True,
                              cache_dir=tmp_path / "c", progress=False)
    assert partial_ds.class_names == ["n02123045"] and len(partial_ds) == 3


def test_empty_folder_tree_is_a_wrong_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(BlockMAEError, match="is not a class-folder tree"):
        load_dataset("folder", "all", root=tmp_path / "flat")


# ---- dispatch --------------------------------------------------------------------------------------------

def test_load_dataset_names_and_options(shared_data):
    from blockmae.data.mvh import DATASETS as MVH_DATASETS

    assert DATASETS == ("shapetex", "tiny-imagenet", "cifar10", "cifar100", "dtd", "folder", "cue-conflict",
                        *(f"mvh-{name}" for name in MVH_DATASETS))
    assert len(MVH_DATASETS) == 17
    with pytest.raises(BlockMAEError, match="unknown dataset 'imagenet'; choose one of shapetex, tiny-imagenet"):
        load_dataset("imagenet", "train")
    with pytest.raises(BlockMAEError, match="dataset 'dtd' has no option 'partiton'; valid options: .*partition"):
        load_dataset("dtd", "train", root=shared_data / "dtd-mini", partiton=2)


def test_shapetex_dispatch_passes_root_as_its_cache(tmp_path):
    pytest.importorskip("blockmae.data.shapetex", reason="ShapeTex comes from the shapetex branch")
    ds = load_dataset("shapetex", "cue_conflict", root=tmp_path, image_size=32, num_images=20, seed=1)
    assert ds.images.shape == (20, 3, 32, 32) and "texture" in ds.extra_labels
    assert any(tmp_path.iterdir())  # generated images cached under root
