"""The uint8 image cache: round trip, parameter checks, atomic writes, worker processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blockmae.data.cache import build_image_cache, cache_params, cached_image_dataset, decode_image, load_image_cache
from blockmae.errors import BlockMAEError


@pytest.fixture()
def images(tmp_path):
    """Six small images of mixed size and mode, with known pixels."""
    rng = np.random.default_rng(0)
    items = []
    for i, (size, mode) in enumerate([((40, 20), "RGB"), ((20, 40), "L"), ((16, 16), "RGBA")] * 2):
        array = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8).squeeze()
        path = tmp_path / "src" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(array, mode).save(path)
        items.append((path, i % 3))
    return items


def test_round_trip_and_sidecar(images, tmp_path):
    out = tmp_path / "cache"
    ds = build_image_cache(images, out, 16, ["a", "b", "c"], name="toy", extra_labels={"texture": [5, 4, 3, 2, 1, 0]},
                           progress=False)
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.extra_labels["texture"].tolist() == [5, 4, 3, 2, 1, 0]
    for i, (path, _) in enumerate(images):
        assert torch.equal(ds.images[i], torch.from_numpy(decode_image(path, 16)))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_size"] == 16 and meta["num_images"] == 6 and meta["class_counts"] == [2, 2, 2]
    assert meta["class_names"] == ["a", "b", "c"] and meta["resize"] == "center-crop" and meta["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "src"]  # no temp folder left behind
    loaded = load_image_cache(out)
    assert torch.equal(loaded.images, ds.images) and torch.equal(loaded.labels, ds.labels)
    loaded.images[0].zero_()  # copy-on-write: the file is never changed through the tensor
    assert torch.equal(load_image_cache(out).images[0], ds.images[0])


def test_center_crop_keeps_the_middle(tmp_path):
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, 20:40] = 255  # a white middle third
    Image.fromarray(array).save(tmp_path / "wide.png")
    cropped = decode_image(tmp_path / "wide.png", 20, "center-crop")
    assert cropped.shape == (3, 20, 20) and cropped.min() == 255
    stretched = decode_image(tmp_path / "wide.png", 20, "stretch")
    assert stretched[:, :, 0].max() == 0 and stretched[:, :, 10].min() == 255


def test_other_parameters_are_an_error_or_a_rebuild(images, tmp_path, capsys):
    out = tmp_path / "cache"
    build_image_cache(images, out, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src", progress=False)
    expected = cache_params(images, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src")
    assert len(load_image_cache(out, expected)) == 6
    other = cache_params(images, 16, ["a", "b", "z"], name="toy", source=tmp_path / "src")
    with pytest.raises(BlockMAEError, match=r"built with other parameters: class_names=\['a', 'b', 'c'\]"):
        load_image_cache(out, other)
    with pytest.raises(BlockMAEError, match=r"resize=center-crop \(wanted stretch\)"):
        cached_image_dataset(images, out, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src", resize="stretch",
                             rebuild=False, progress=False)
    rebuilt = cached_image_dataset(images[:4], out, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src",
                                   progress=False)
    assert len(rebuilt) == 4
    assert json.loads((out / "meta.json").read_text())["num_images"] == 4


def test_rebuild_message_names_the_parameter(images, tmp_path, capsys):
    out = tmp_path / "cache"
    build_image_cache(images, out, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src", progress=False)
    cached_image_dataset(images[:4], out, 16, ["a", "b", "c"], name="toy", source=tmp_path / "src", progress=False)
    assert capsys.readouterr().err == f"blockmae: rebuilding cache {out}: it was built with num_images=6 (wanted 4)\n"


def test_unreadable_image_names_the_file_and_leaves_no_cache(images, tmp_path):
    broken = images[3][0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BlockMAEError, match=rf"cannot read image {broken}"):
        build_image_cache(images, tmp_path / "cache", 16, ["a", "b", "c"], progress=False)
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_damaged_cache_is_reported(images, tmp_path):
    out = tmp_path / "cache"
    build_image_cache(images, out, 16, ["a", "b", "c"], progress=False)
    with open(out / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(BlockMAEError, match=rf"cache file {out / 'images.u8'} is missing or has the wrong size"):
        load_image_cache(out)
    with pytest.raises(BlockMAEError, match="no image cache at"):
        load_image_cache(tmp_path / "elsewhere")


def test_worker_processes_give_the_same_bytes(shared_data, tmp_path):
    train = shared_data / "tiny-imagenet-200-mini" / "train"
    items = [(p, 0) for p in sorted(train.rglob("*.JPEG"))] * 2  # 400 files: more than one chunk of 256
    serial = build_image_cache(items, tmp_path / "serial", 32, ["x"], progress=False)
    parallel = build_image_cache(items, tmp_path / "parallel", 32, ["x"], workers=2, progress=False)
    assert torch.equal(serial.images, parallel.images)
