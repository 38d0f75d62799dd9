from pathlib import Path

import pytest
import torch

from blockmae.data.base import ImageTensorDataset
from blockmae.evaluation.config import LinearConfig
from blockmae.evaluation.features import encoder_features, extract_features
from blockmae.models.factory import load_encoder
from blockmae.evaluation.linear import train_linear_probe_forward


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("random", preset="vit_nano", img_size=16, patch_size=4, seed=0)


def _dataset(n=40, size=16, seed=0, name="toy"):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    # Class = brightness band, so a probe on random features can still learn something.
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 30, (n, 3, size, size), generator=gen)).to(torch.uint8)
    return ImageTensorDataset(images, labels, ["a", "b", "c", "d"], name=name)


def test_random_encoder_is_reproducible_and_identified(encoder):
    again = load_encoder("random", preset="vit_nano", img_size=16, patch_size=4, seed=0)
    other = load_encoder("random", preset="vit_nano", img_size=16, patch_size=4, seed=1)
    assert again.weights_hash == encoder.weights_hash != other.weights_hash
    assert encoder.image_size == 16 and not any(p.requires_grad for p in encoder.model.parameters())


def test_pools_batches_and_resize(encoder):
    ds = _dataset()
    cls = extract_features(encoder.model, ds, "cls", batch_size=7)
    assert cls.shape == (40, 64) and cls.dtype == torch.float32
    assert torch.allclose(cls, extract_features(encoder.model, ds, "cls", batch_size=40), atol=1e-5)
    both = extract_features(encoder.model, ds, "both")
    assert both.shape == (40, 128) and torch.allclose(both[:, :64], cls, atol=1e-5)
    big = _dataset(size=32)
    assert extract_features(encoder.model, big, "avg", image_size=16).shape == (40, 64)


def test_feature_cache_keys(encoder, tmp_path):
    ds = _dataset()
    first = encoder_features(encoder, ds, "cls", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.equal(encoder_features(encoder, ds, "cls", cache_dir=tmp_path), first)
    encoder_features(encoder, ds, "avg", cache_dir=tmp_path)  # other pool: another entry
    other_content = _dataset(seed=1)  # same name and size, other images: another entry
    assert not torch.equal(encoder_features(encoder, other_content, "cls", cache_dir=tmp_path), first)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_forward_probe_path_runs_with_augmentation(encoder):
    ds = _dataset(n=64)
    eval_x = extract_features(encoder.model, ds, "cls")
    cfg = LinearConfig(epochs=2, batch_size=32, warmup_epochs=1)
    result = train_linear_probe_forward(encoder.model, ds, eval_x, ds.labels, cfg, pool="cls")
    assert len(result.history) == 2 and 0 <= result.final["top1"] <= 1
    assert result.head.num_classes == 4 and result.head.dim == 64


def test_random_baseline_can_copy_an_architecture(encoder):
    from blockmae.evaluation.cli_shape_bias import encoder_for_head

    arch = {**encoder.arch, "depth": 1, "pos_embed": "learned"}
    baseline = load_encoder("random", preset="vit_micro", seed=3, arch=arch)
    assert baseline.arch == arch and len(baseline.model.blocks) == 1
    # A head of that baseline finds the same untrained encoder again from its metadata alone.
    meta = {"checkpoint": "random", "encoder": {"seed": 3}, "arch": arch, "weights_hash": baseline.weights_hash}
    assert encoder_for_head(meta, None, torch.device("cpu")).weights_hash == baseline.weights_hash


def test_concurrent_writers_of_one_head_or_cache_file_use_distinct_temp_names(tmp_path, monkeypatch, encoder):
    """Two probes writing one head / one feature-cache entry at once: a second writer starts while the
    first is between writing its temp file and renaming it. Each must own its temp name (a shared fixed
    `.tmp` made the first writer's rename fail), and the target ends whole, with no temp files left."""
    import safetensors.torch

    from blockmae.evaluation.features import feature_cache_path
    from blockmae.evaluation.linear import LinearProbeHead, load_head, save_head

    real_save = safetensors.torch.save_file
    temp_names: list[str] = []
    second_writer: list = []

    def interleaved_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        temp_names.append(filename)
        if second_writer:
            second_writer.pop()()  # the other probe writes the same target now

    for module in ("blockmae.evaluation.linear", "blockmae.evaluation.features"):  # each writes with its own import
        monkeypatch.setattr(f"{module}.save_file", interleaved_save)
    head_path = tmp_path / "run" / "head.safetensors"
    second_writer.append(lambda: save_head(LinearProbeHead(8, 3), head_path, {"writer": 2}))
    save_head(LinearProbeHead(8, 3), head_path, {"writer": 1})
    assert len(set(temp_names)) == 2 and all(Path(n).parent == head_path.parent for n in temp_names)
    assert load_head(head_path)[1]["writer"] == 1  # the last rename wins, whole
    assert sorted(p.name for p in head_path.parent.iterdir()) == ["head.safetensors"]

    temp_names.clear()
    data = _dataset(8)
    cache = tmp_path / "cache"
    second_writer.append(lambda: encoder_features(encoder, data, cache_dir=cache))
    feats = encoder_features(encoder, data, cache_dir=cache)
    assert len(set(temp_names)) == 2
    assert [p.name for p in cache.iterdir()] == [feature_cache_path(cache, encoder, data, "cls", None).name]
    assert torch.equal(encoder_features(encoder, data, cache_dir=cache), feats)
