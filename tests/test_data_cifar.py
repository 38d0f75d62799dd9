"""CIFAR-10/100 through torchvision, on tiny fixtures written in the official pickled batch format.

torchvision checks every batch file against the md5 of the official release (CIFAR10.train_list,
.test_list, .meta). A fixture cannot have those md5s, so the tests give torchvision the fixture's own
md5s: `monkeypatch.setattr` on those class attributes, in the tests only (the sources use torchvision
unchanged, and the same check then rejects files that differ from what it was told).
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from blockmae.data import load_dataset
from blockmae.errors import BlockMAEError

PER_BATCH = 4


def _pixels(n: int, seed: int) -> np.ndarray:
    """(n, 3072) random uint8 rows, in CIFAR's channel-major pixel order."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _write(path: Path, entry: dict) -> list[str]:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return [path.name, hashlib.md5(path.read_bytes()).hexdigest()]


def write_cifar10(root: Path) -> dict:
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train = [_write(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5",
                                                 "labels": [(b + i) % 10 for i in range(PER_BATCH)],
                                                 "data": _pixels(PER_BATCH, b), "filenames": []})
             for b in range(1, 6)]
    test = [_write(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [9, 8, 7],
                                           "data": _pixels(3, 0), "filenames": []})]
    meta = _write(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": PER_BATCH, "num_vis": 3072})
    return {"train_list": train, "test_list": test,
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta[1]}}


def write_cifar100(root: Path) -> dict:
    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    fine = [f"fine{i:02d}" for i in range(100)]
    train = [_write(folder / "train", {"fine_labels": [99, 0, 42, 7, 7], "coarse_labels": [0] * 5,
                                       "data": _pixels(5, 1), "filenames": []})]
    test = [_write(folder / "test", {"fine_labels": [3, 1], "coarse_labels": [0, 0], "data": _pixels(2, 2),
                                     "filenames": []})]
    meta = _write(folder / "meta", {"fine_label_names": fine, "coarse_label_names": [f"c{i}" for i in range(20)]})
    return {"train_list": train, "test_list": test, "meta": {"filename": "meta", "key": "fine_label_names", "md5": meta[1]}}


def trust_fixture(monkeypatch, cls, facts: dict) -> None:
    for key, value in facts.items():
        monkeypatch.setattr(cls, key, value)


def test_cifar10_fixture_loads_as_tensors(tmp_path, monkeypatch):
    trust_fixture(monkeypatch, CIFAR10, write_cifar10(tmp_path))
    train = load_dataset("cifar10", "train", root=tmp_path, image_size=32)
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [(b + i) % 10 for b in range(1, 6) for i in range(PER_BATCH)]
    assert train.class_names[:2] == ["airplane", "automobile"] and train.num_classes == 10
    # Row 0 of data_batch_1 is the first image: channel-major 3 x 32 x 32.
    assert torch.equal(train.images[0], torch.from_numpy(_pixels(PER_BATCH, 1)[0].reshape(3, 32, 32)))
    test = load_dataset("cifar10", "test", root=tmp_path, image_size=32)
    assert test.labels.tolist() == [9, 8, 7] and test.name == "cifar10-test"


def test_cifar100_uses_fine_labels_and_resizes(tmp_path, monkeypatch):
    trust_fixture(monkeypatch, CIFAR100, write_cifar100(tmp_path))
    train = load_dataset("cifar100", "train", root=tmp_path, image_size=64)
    assert train.images.shape == (5, 3, 64, 64)
    assert train.labels.tolist() == [99, 0, 42, 7, 7] and train.class_names[99] == "fine99"
    native = load_dataset("cifar100", "train", root=tmp_path, image_size=32)
    # Downsampling the 64 px version back must give the 32 px images to within interpolation error.
    back = torch.nn.functional.interpolate(train.images.float(), size=32, mode="area")
    assert (back - native.images.float()).abs().mean() < 20


def test_files_that_fail_torchvisions_md5_check_are_an_error(tmp_path):
    write_cifar10(tmp_path)  # not trusted: torchvision compares with the official md5s
    with pytest.raises(BlockMAEError, match="incomplete or corrupted.*delete that folder and rerun"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_missing_files_without_download_say_how_to_get_them(tmp_path):
    with pytest.raises(BlockMAEError, match="does not look like cifar10.*blockmae data prepare cifar10"):
        load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(BlockMAEError, match="no split 'val'; choose one of train, test"):
        load_dataset("cifar10", "val", root=tmp_path)


def test_prepare_from_an_archive(tmp_path, monkeypatch, capsys):
    from blockmae.cli import main

    staging = tmp_path / "staging"
    trust_fixture(monkeypatch, CIFAR10, write_cifar10(staging))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(staging / CIFAR10.base_folder, CIFAR10.base_folder)
    root = tmp_path / "root"
    assert main(["data", "prepare", "cifar10", "--root", str(root), "--source", str(archive), "--image-size", "32"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["classes: 10", "train: 20", "test: 3"]
    assert (root / CIFAR10.base_folder / "data_batch_5").is_file()
    assert len(load_dataset("cifar10", "test", root=root, image_size=32)) == 3
