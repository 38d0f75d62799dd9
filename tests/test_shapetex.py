"""ShapeTex: determinism, splits, labels, colour matching, cache, and learnability controls."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blockmae.data import shapetex
from blockmae.data.shapetex import SHAPE_CLASSES, TEXTURE_CLASSES, generate_shapetex, load_shapetex
from blockmae.errors import BlockMAEError

K = 10
SHAPE_ONLY_TRAIN = (6000, 6)  # images, epochs


def test_class_lists():
    assert len(SHAPE_CLASSES) == K and len(set(SHAPE_CLASSES)) == K
    assert len(TEXTURE_CLASSES) == K and len(set(TEXTURE_CLASSES)) == K


@pytest.mark.parametrize("split", shapetex.SPLITS)
@pytest.mark.parametrize("size", [32, 64])
def test_dtype_shape_and_labels(split, size):
    data = generate_shapetex(split, image_size=size, num_images=50, seed=3)
    assert data.images.dtype == torch.uint8 and data.images.shape == (50, 3, size, size)
    assert data.labels.dtype == torch.int64 and data.labels.shape == (50,)
    texture = data.extra_labels["texture"]
    assert texture.shape == (50,)
    if split == "texture_only":
        assert data.class_names == TEXTURE_CLASSES and torch.equal(data.labels, texture)
    else:
        assert data.class_names == SHAPE_CLASSES
    if split == "shape_only":
        assert (texture == -1).all()
    else:
        assert texture.min() >= 0 and texture.max() < K
    assert data.images.float().std() > 20  # not blank


def test_same_seed_same_bytes_different_seed_different_images():
    a = generate_shapetex("train", num_images=64, seed=5)
    b = generate_shapetex("train", num_images=64, seed=5)
    c = generate_shapetex("train", num_images=64, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.extra_labels["texture"], b.extra_labels["texture"])
    assert (a.images != c.images).flatten(1).any(1).all()


def test_64px_draws_the_same_scene_as_32px():
    small = generate_shapetex("cue_conflict", image_size=32, num_images=20, seed=2)
    large = generate_shapetex("cue_conflict", image_size=64, num_images=20, seed=2)
    assert torch.equal(small.labels, large.labels)
    down = F.avg_pool2d(large.images.float(), 2)
    # Same geometry at twice the resolution: the box-filtered 64 px image is close to the 32 px one.
    assert (down - small.images.float()).abs().mean() < 20


def test_splits_never_share_images():
    flat = {}
    for split in ("train", "val", "cue_conflict"):
        flat[split] = {bytes(img.numpy().tobytes()) for img in generate_shapetex(split, num_images=300, seed=0).images}
        assert len(flat[split]) == 300
    assert not flat["train"] & flat["val"] and not flat["train"] & flat["cue_conflict"]
    assert not flat["val"] & flat["cue_conflict"]
    assert shapetex.split_seed(0, "train") != shapetex.split_seed(0, "val")


@pytest.mark.parametrize("split", ["train", "val", "shape_only", "texture_only"])
def test_labels_are_balanced(split):
    data = generate_shapetex(split, num_images=205, seed=1)
    counts = torch.bincount(data.labels, minlength=K)
    assert counts.min() >= 20 and counts.max() <= 21


def test_cue_conflict_covers_all_90_pairs_equally():
    data = generate_shapetex("cue_conflict", num_images=180, seed=4)
    shape, texture = data.labels, data.extra_labels["texture"]
    assert (shape != texture).all()
    pair_counts = torch.bincount(shape * K + texture, minlength=K * K).view(K, K)
    off_diagonal = pair_counts[~torch.eye(K, dtype=torch.bool)]
    assert (off_diagonal == 2).all() and pair_counts.diagonal().sum() == 0


@pytest.mark.parametrize("correlation", [0.0, 0.8, 1.0])
def test_texture_correlation_is_respected(correlation):
    gen = torch.Generator().manual_seed(7)
    labels = shapetex._split_labels("train", 20000, correlation, gen)
    shape, texture, background = labels["shape"], labels["texture"], labels["background"]
    assert abs((shape == texture).float().mean().item() - correlation) < 0.015
    assert (background != texture).all()
    if correlation < 1:  # the other textures are used uniformly
        counts = torch.bincount(texture[shape != texture], minlength=K).float()
        assert counts.min() > 0.85 * counts.mean()
    # The public loader uses these labels.
    data = generate_shapetex("train", num_images=300, texture_correlation=correlation, seed=7)
    agree = (data.labels == data.extra_labels["texture"]).float().mean().item()
    assert abs(agree - correlation) < 0.1


def _silhouettes(data_split: str, n: int, seed: int) -> torch.Tensor:
    """The silhouettes of a split as ShapeTex returns them (figure_masks=True), coverage in [0, 1]."""
    data = generate_shapetex(data_split, num_images=n, seed=seed, figure_masks=True)
    return data.extra_labels["figure"].float() / 255


def test_figure_masks_are_the_drawn_silhouettes_of_the_same_images(tmp_path):
    n, seed = 120, 4
    with_masks = generate_shapetex("val", num_images=n, seed=seed, figure_masks=True)
    plain = load_shapetex("val", num_images=n, seed=seed, cache_dir=tmp_path)
    assert torch.equal(with_masks.images, plain.images) and torch.equal(with_masks.labels, plain.labels)
    assert "figure" not in plain.extra_labels
    figure = with_masks.extra_labels["figure"]
    assert figure.shape == (n, 32, 32) and figure.dtype == torch.uint8
    # Independent reference: the random stream replayed up to the shape draw (labels, then shapes).
    gen = torch.Generator().manual_seed(shapetex.split_seed(seed, "val"))
    labels = shapetex._split_labels("val", n, 0.8, gen)
    x, y = shapetex._grid(32)
    reference = shapetex._draw_shapes(labels["shape"], x, y, gen, 32)
    assert torch.equal(figure, (reference * 255).round().to(torch.uint8))
    # Through load_shapetex (drawn afresh, the cache holds no masks) and deterministic.
    loaded = load_shapetex("val", num_images=n, seed=seed, cache_dir=tmp_path, figure_masks=True)
    assert torch.equal(loaded.extra_labels["figure"], figure) and torch.equal(loaded.images, plain.images)
    # A real figure: about a third to a half of the image, never empty, never everything.
    area = (figure.float() / 255).mean((1, 2))
    assert area.min() > 0.1 and area.max() < 0.9
    assert _silhouettes("shape_only", 10, 0).shape == (10, 32, 32)
    with pytest.raises(BlockMAEError, match="no figure"):
        generate_shapetex("texture_only", num_images=4, figure_masks=True)


def test_foreground_and_background_have_matched_mean_colour():
    n = 400
    data = generate_shapetex("cue_conflict", num_images=n, seed=11)
    alpha = _silhouettes("cue_conflict", n, 11)
    inside, outside = alpha > 0.99, alpha < 0.01
    assert inside.flatten(1).sum(1).float().mean() > 200  # the shapes are large
    img = data.images.float()
    mean_in = (img * inside[:, None]).sum((2, 3)) / inside[:, None].sum((2, 3))
    mean_out = (img * outside[:, None]).sum((2, 3)) / outside[:, None].sum((2, 3))
    diff = mean_in - mean_out  # (n, 3), in uint8 levels
    # No systematic colour blob: averaged over images the difference is a few levels at most,
    # and per image it stays small compared to the texture contrast.
    assert diff.mean(0).abs().max() < 3
    assert diff.abs().mean() < 12
    contrast = (img * inside[:, None]).flatten(2).std(2).mean()
    assert contrast > 40
    # Luminance too.
    lum = torch.tensor([0.299, 0.587, 0.114])
    assert (diff @ lum).abs().mean() < 10


def test_shape_only_and_texture_only_content():
    n = 200
    data = generate_shapetex("shape_only", num_images=n, seed=0)
    alpha = _silhouettes("shape_only", n, 0)
    inside, outside = alpha > 0.99, alpha < 0.01
    img = data.images.float()
    # Figure and ground are both noise around one mean colour: no flat fill, no colour blob.
    for region in (inside, outside):
        assert (img * region[:, None]).flatten(2).std(2).mean() > 15
    mean_in = (img * inside[:, None]).sum((2, 3)) / inside[:, None].sum((2, 3))
    mean_out = (img * outside[:, None]).sum((2, 3)) / outside[:, None].sum((2, 3))
    assert (mean_in - mean_out).abs().mean() < 12
    # The noise carries no texture structure: neighbouring cells are uncorrelated (every texture
    # family is spatially correlated at 32 px).
    grey = img.mean(1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    lag1 = (grey[:, :, 1:] * grey[:, :, :-1]).mean() / (grey * grey).mean()
    assert lag1.abs() < 0.15
    tex = generate_shapetex("texture_only", num_images=20, seed=0).images.float().mean(1)
    tex = tex - tex.mean((1, 2), keepdim=True)
    assert (tex[:, :, 1:] * tex[:, :, :-1]).mean() / (tex * tex).mean() > 0.3
    assert generate_shapetex("texture_only", num_images=20, seed=0).images.float().std((2, 3)).mean(1).min() > 15


def test_cache_is_reused_and_rebuilt_when_parameters_differ(tmp_path, monkeypatch):
    first = load_shapetex("val", num_images=40, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"

    calls = []
    real = shapetex.generate_shapetex
    monkeypatch.setattr(shapetex, "generate_shapetex", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = load_shapetex("val", num_images=40, seed=1, cache_dir=tmp_path)
    assert calls == [] and torch.equal(again.images, first.images)

    other = load_shapetex("val", num_images=40, seed=1, texture_correlation=0.3, cache_dir=tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(other.extra_labels["texture"], first.extra_labels["texture"])

    # A file whose stored parameters differ from its name is rebuilt, not trusted.
    blob = torch.load(files[0], weights_only=True)
    blob["params"] = blob["params"].replace('"seed": 1', '"seed": 2')
    torch.save(blob, files[0])
    rebuilt = load_shapetex("val", num_images=40, seed=1, cache_dir=tmp_path)
    assert len(calls) == 2 and torch.equal(rebuilt.images, first.images)
    # A truncated file too.
    files[0].write_bytes(files[0].read_bytes()[:100])
    load_shapetex("val", num_images=40, seed=1, cache_dir=tmp_path)
    assert len(calls) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(BlockMAEError, match="split"):
        load_shapetex("test")
    with pytest.raises(BlockMAEError, match="multiple of 8"):
        load_shapetex("train", image_size=30)
    with pytest.raises(BlockMAEError, match="texture_correlation"):
        load_shapetex("train", texture_correlation=1.5)
    with pytest.raises(BlockMAEError, match="num_images"):
        load_shapetex("train", num_images=0)


def test_preview_command_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    env_cache = {"BLOCKMAE_CACHE_DIR": str(tmp_path / "cache")}
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "blockmae", "data", "preview", "shapetex", "--split", "cue_conflict",
         "--out", str(out), "--count", "16"],
        capture_output=True, text=True, env={**os.environ, **env_cache},
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(out).size[0] > 400
    bad = subprocess.run(
        [sys.executable, "-m", "blockmae", "data", "preview", "shapetex", "--split", "nope", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, **env_cache},
    )
    assert bad.returncode == 2 and "unknown ShapeTex split 'nope'" in bad.stderr


# ----------------------------------------------------------------------------- learnability controls

def _small_cnn(width: int = 16) -> nn.Module:
    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        block(3, width), block(width, width), nn.MaxPool2d(2),
        block(width, 2 * width), block(2 * width, 2 * width), nn.MaxPool2d(2),
        block(2 * width, 4 * width), nn.MaxPool2d(2), block(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, K),
    )


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def _train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int = 128) -> nn.Module:
    torch.manual_seed(0)
    model = _small_cnn()
    x = _normalise(images)
    steps = epochs * (len(x) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # every class is mirror-symmetric as a set
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(_normalise(images[i:i + 500])).argmax(1) for i in range(0, len(images), 500)])


def _shape_bias(pred: torch.Tensor, shape: torch.Tensor, texture: torch.Tensor) -> float:
    shape_hits = (pred == shape).sum().item()
    texture_hits = (pred == texture).sum().item()
    return shape_hits / max(1, shape_hits + texture_hits)


@pytest.fixture
def fixed_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cue_conflict():
    return generate_shapetex("cue_conflict", num_images=900, seed=100)


@pytest.fixture(scope="module")
def texture_model():
    """Trained with texture labels, on `texture_only`."""
    torch.set_num_threads(2)
    train = generate_shapetex("texture_only", num_images=5000, seed=101)
    return _train(train.images, train.labels, epochs=3)


@pytest.fixture(scope="module")
def shape_model():
    """Trained with shape labels on images whose texture is independent of the shape."""
    torch.set_num_threads(2)
    train = generate_shapetex("train", num_images=8000, texture_correlation=0.0, seed=103)
    return _train(train.images, train.labels, epochs=8)


@pytest.fixture(scope="module")
def shape_only_model():
    """Trained with shape labels on `shape_only`, which holds no texture class at all."""
    torch.set_num_threads(2)
    train = generate_shapetex("shape_only", num_images=SHAPE_ONLY_TRAIN[0], seed=105)
    return _train(train.images, train.labels, epochs=SHAPE_ONLY_TRAIN[1])


@pytest.mark.slow
def test_control_shape_is_learnable_when_texture_is_uninformative(fixed_threads, shape_model):
    test = generate_shapetex("val", num_images=1000, texture_correlation=0.0, seed=103)
    accuracy = (_predict(shape_model, test.images) == test.labels).float().mean().item()
    print(f"shape control accuracy: {accuracy:.3f}")
    assert accuracy >= 0.90


@pytest.mark.slow
def test_control_texture_is_learnable(fixed_threads, texture_model):
    test = generate_shapetex("texture_only", num_images=1000, seed=104)
    accuracy = (_predict(texture_model, test.images) == test.labels).float().mean().item()
    print(f"texture control accuracy: {accuracy:.3f}")
    assert accuracy >= 0.90


@pytest.mark.slow
def test_control_shape_bias_separates_texture_and_shape_only_classifiers(
    fixed_threads, texture_model, shape_only_model, cue_conflict
):
    shape, texture = cue_conflict.labels, cue_conflict.extra_labels["texture"]
    texture_bias = _shape_bias(_predict(texture_model, cue_conflict.images), shape, texture)
    shape_bias = _shape_bias(_predict(shape_only_model, cue_conflict.images), shape, texture)
    print(f"shape bias: texture classifier {texture_bias:.3f}, shape_only classifier {shape_bias:.3f}")
    assert texture_bias < 0.2
    assert shape_bias > 0.8


@pytest.fixture(scope="module")
def phase_amplitude_conflict():
    """phase(A) + amplitude(B) images from ShapeTex `val` (texture independent of shape), B differing from A
    in both shape and texture, as uint8 images for the controls."""
    from blockmae.diagnostics.filters import amplitude_swap
    from blockmae.diagnostics.stylized import conflict_donors

    val = generate_shapetex("val", num_images=800, texture_correlation=0.0, seed=110)
    labels = torch.stack([val.labels, val.extra_labels["texture"]], dim=1)
    donors = conflict_donors(labels, seed=0)
    mixed = amplitude_swap(val.images.double() / 255, val.images[donors].double() / 255, 1.0)
    return (mixed.clamp(0, 1) * 255).round().to(torch.uint8), labels, labels[donors]


@pytest.mark.slow
def test_phase_amplitude_bias_separates_shape_only_and_texture_classifiers(
    fixed_threads, texture_model, shape_only_model, phase_amplitude_conflict
):
    """The diagnostic's readout (docs/diagnostics.md quotes the printed numbers) on the same controls: the
    shape_only classifier scored on shape labels, the texture classifier on texture labels."""
    from blockmae.diagnostics.stylized import phase_amplitude_bias

    images, phase, amplitude = phase_amplitude_conflict
    shape = phase_amplitude_bias(_predict(shape_only_model, images), phase[:, 0], amplitude[:, 0])
    texture = phase_amplitude_bias(_predict(texture_model, images), phase[:, 1], amplitude[:, 1])
    for name, b in (("shape_only classifier", shape), ("texture classifier", texture)):
        print(f"{name}: phase bias {b['phase_bias']:.3f} [{b['phase_bias_low']:.3f}, {b['phase_bias_high']:.3f}] "
              f"phase {b['frac_phase']:.3f} amplitude {b['frac_amplitude']:.3f} neither {b['frac_neither']:.3f}")
    assert shape["phase_bias_low"] > texture["phase_bias_high"]  # separated, the shape classifier following phase


def test_background_contrast_sets_the_ground_and_is_validated():
    n = 64
    alpha = _silhouettes("cue_conflict", n, 5)
    outside = alpha < 0.01
    flat = generate_shapetex("cue_conflict", num_images=n, seed=5).images.float()  # default: flat ground
    textured = generate_shapetex("cue_conflict", num_images=n, seed=5, background_contrast=0.5).images.float()

    def ground_spread(img):  # the largest per-image, per-channel spread over the ground's pixels
        return max(img[i][:, outside[i]].std(1).max() for i in range(n))

    assert ground_spread(flat) < 1.0 < 10 < ground_spread(textured)
    inside = alpha > 0.99
    assert torch.equal(flat.permute(0, 2, 3, 1)[inside].mean(0).round(), textured.permute(0, 2, 3, 1)[inside].mean(0).round())
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(BlockMAEError, match="background_contrast"):
            generate_shapetex("train", num_images=10, background_contrast=bad)
