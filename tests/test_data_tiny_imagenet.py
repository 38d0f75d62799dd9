"""Tiny-ImageNet on the real mini set (../shared/data/tiny-imagenet-200-mini) and its error cases."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from blockmae.data import load_dataset
from blockmae.errors import BlockMAEError


@pytest.fixture(scope="module")
def mini(shared_data):
    return shared_data / "tiny-imagenet-200-mini"


@pytest.fixture(scope="module")
def loaded(mini, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tin-cache")
    return {split: load_dataset("tiny-imagenet", split, root=mini, cache_dir=cache, progress=False)
            for split in ("train", "val")}


@pytest.fixture()
def mini_copy(mini, tmp_path):
    copy = tmp_path / "tiny-imagenet-200"
    shutil.copytree(mini, copy)
    return copy


def test_counts_and_class_order(loaded, mini):
    wnids = sorted((mini / "wnids.txt").read_text().split())
    train, val = loaded["train"], loaded["val"]
    assert (len(train), len(val), train.num_classes) == (200, 100, 10)
    assert train.images.shape == (200, 3, 64, 64) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [20] * 10
    assert torch.bincount(val.labels).tolist() == [10] * 10
    words = dict(line.split("\t") for line in (mini / "words.txt").read_text().splitlines())
    assert train.class_names == [words[w].split(",")[0] for w in wnids]
    # class index = position of the wnid in the sorted wnids: train images come from train/<wnid>/images.
    first_of_class = {int(label): i for i, label in reversed(list(enumerate(train.labels)))}
    for index, wnid in enumerate(wnids):
        image = np.array(Image.open(mini / "train" / wnid / "images" / f"{wnid}_0.JPEG").convert("RGB"))
        assert torch.equal(train.images[first_of_class[index]], torch.from_numpy(image).permute(2, 0, 1))


def test_val_labels_follow_val_annotations(loaded, mini):
    wnids = sorted((mini / "wnids.txt").read_text().split())
    rows = [line.split("\t") for line in (mini / "val" / "val_annotations.txt").read_text().splitlines()]
    assert loaded["val"].labels.tolist() == [wnids.index(row[1]) for row in rows]
    for i in (0, 37, 99):
        image = np.array(Image.open(mini / "val" / "images" / rows[i][0]).convert("RGB"))
        assert torch.equal(loaded["val"].images[i], torch.from_numpy(image).permute(2, 0, 1))


def test_grayscale_images_become_rgb(loaded, mini):
    rows = [line.split("\t")[0] for line in (mini / "val" / "val_annotations.txt").read_text().splitlines()]
    i = rows.index("val_116.JPEG")
    gray = Image.open(mini / "val" / "images" / "val_116.JPEG")
    assert gray.mode == "L"
    image = loaded["val"].images[i]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.equal(image[0], torch.from_numpy(np.array(gray)))


def test_smaller_size_and_cache_reuse(mini, tmp_path, capsys):
    small = load_dataset("tiny-imagenet", "val", root=mini, image_size=32, cache_dir=tmp_path, progress=False)
    assert small.images.shape == (100, 3, 32, 32)
    again = load_dataset("tiny-imagenet", "val", root=mini, image_size=32, cache_dir=tmp_path, progress=False)
    assert torch.equal(small.images, again.images)
    assert "rebuilding" not in capsys.readouterr().err


def test_changed_source_rebuilds_the_cache(mini_copy, tmp_path, capsys):
    cache = tmp_path / "cache"
    before = load_dataset("tiny-imagenet", "train", root=mini_copy, cache_dir=cache, progress=False)
    assert len(before) == 200
    (mini_copy / "train" / "n01855672" / "images" / "n01855672_0.JPEG").unlink()
    after = load_dataset("tiny-imagenet", "train", root=mini_copy, cache_dir=cache, progress=False)
    assert len(after) == 199
    assert "rebuilding cache" in capsys.readouterr().err


def test_unknown_wnid_in_val_annotations_names_file_and_line(mini_copy, tmp_path):
    annotations = mini_copy / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split("\t")[1], "n99999999")
    annotations.write_text("\n".join(lines) + "\n")
    with pytest.raises(BlockMAEError, match=rf"{annotations}:5: class n99999999 is not in wnids.txt"):
        load_dataset("tiny-imagenet", "val", root=mini_copy, cache_dir=tmp_path)


def test_truncated_jpeg_names_the_file(mini_copy, tmp_path):
    victim = mini_copy / "train" / "n02099712" / "images" / "n02099712_3.JPEG"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(BlockMAEError, match=rf"cannot read image {victim}: .*truncated"):
        load_dataset("tiny-imagenet", "train", root=mini_copy, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("meta.json"))


def test_missing_root(tmp_path):
    with pytest.raises(BlockMAEError, match=rf"dataset root {tmp_path / 'nope'} does not exist; run `blockmae data prepare"):
        load_dataset("tiny-imagenet", "train", root=tmp_path / "nope")


def test_wrong_layout(tmp_path, mini_copy):
    with pytest.raises(BlockMAEError, match="does not look like tiny-imagenet"):
        load_dataset("tiny-imagenet", "train", root=mini_copy / "train")
    shutil.rmtree(mini_copy / "train" / "n02132136")
    with pytest.raises(BlockMAEError, match=r"missing .*train/n02132136/images \(class n02132136 of wnids.txt\)"):
        load_dataset("tiny-imagenet", "train", root=mini_copy, cache_dir=tmp_path)


def test_unknown_split(mini):
    with pytest.raises(BlockMAEError, match="no split 'test'; choose one of train, val"):
        load_dataset("tiny-imagenet", "test", root=mini)


@pytest.mark.slow
def test_cli_prepare_from_the_extracted_folder(mini, tmp_path):
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "blockmae", "data", "prepare", "tiny-imagenet", "--root", str(root),
                           "--source", str(mini)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == ["classes: 10", "train: 200", "val: 100"]
    assert "decoding" not in proc.stderr  # no progress bar when stderr is not a terminal
    assert not (root / "tiny-imagenet-200").exists()  # an extracted folder is used in place, not copied


def test_cli_prepare_missing_source_is_a_one_line_error(tmp_path, capsys):
    from blockmae.cli import main

    code = main(["data", "prepare", "tiny-imagenet", "--root", str(tmp_path), "--source", str(tmp_path / "x.zip")])
    assert code == 2
    assert capsys.readouterr().err == (f"blockmae: error: --source {tmp_path / 'x.zip'} does not exist; "
                                       f"pass an archive, a URL or an extracted folder\n")


@pytest.mark.parametrize("num_images", [50, 37, 7])
def test_subset_is_class_balanced_and_seeded(loaded, num_images):
    """`data.subset`: counts per class differ by at most one (10 classes of 20 train images), the same seed
    gives the same images, another seed other ones; order and labels follow the dataset."""
    from blockmae.data import subset

    train = loaded["train"]
    a, b, c = subset(train, num_images, seed=3), subset(train, num_images, seed=3), subset(train, num_images, seed=4)
    assert len(a) == num_images and type(a) is type(train) and a.class_names == train.class_names
    counts = torch.bincount(a.labels, minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1 and int(counts.max()) == -(-num_images // 10)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # Each kept image is the dataset's image with the same label, in dataset order.
    rows = [int(torch.nonzero((train.images == img).flatten(1).all(1))[0]) for img in a.images]
    assert rows == sorted(rows) and torch.equal(train.labels[rows], a.labels)
    assert subset(train, None, seed=3) is train and subset(train, 10_000, seed=3) is train


def test_subset_gives_a_small_class_all_it_has(loaded):
    """A class with fewer images than its share gives all of them; the others share the rest equally."""
    from blockmae.data import subset

    train = loaded["train"]
    keep = torch.cat([torch.nonzero(train.labels != 0).flatten(), torch.nonzero(train.labels == 0).flatten()[:2]])
    uneven = subset(train, 190, seed=0)  # the full set minus 10: one fewer image in each class
    assert torch.bincount(uneven.labels).tolist() == [19] * 10
    from blockmae.data.base import ImageTensorDataset

    skewed = ImageTensorDataset(train.images[keep], train.labels[keep], list(train.class_names), name="skewed")
    counts = torch.bincount(subset(skewed, 29, seed=1).labels, minlength=10).tolist()
    assert counts[0] == 2 and sorted(counts[1:]) == [3] * 9
