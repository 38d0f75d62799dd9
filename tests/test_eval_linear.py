import pytest
import torch

from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import LinearConfig
from blockmae.evaluation.linear import LinearProbeHead, head_scores, load_head, save_head, train_linear_probe


def separable(n_per_class=150, num_classes=10, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=gen) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = means[labels] + 0.5 * torch.randn(len(labels), dim, generator=gen) + 10.0  # offset: BN must centre it
    perm = torch.randperm(len(labels), generator=gen)
    return feats[perm], labels[perm]


def test_head_is_batchnorm_without_affine_then_linear():
    head = LinearProbeHead(16, 7)
    assert isinstance(head.norm, torch.nn.BatchNorm1d) and head.norm.affine is False and head.norm.eps == 1e-6
    assert sum(p.numel() for p in head.parameters()) == 16 * 7 + 7
    assert torch.all(head.linear.bias == 0)
    assert 0.005 < head.linear.weight.std() < 0.015


@pytest.mark.parametrize("optimizer", ["lars", "sgd", "adamw"])
def test_linear_probe_separates_synthetic_classes(optimizer):
    x, y = separable()
    ex, ey = separable(n_per_class=30, seed=1)
    # Same class means for eval: regenerate with the train seed's means.
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(10, 32, generator=gen) * 3
    ex = means[ey] + 0.5 * torch.randn(len(ey), 32, generator=torch.Generator().manual_seed(2)) + 10.0
    base_lr = {"lars": 0.1, "sgd": 0.1, "adamw": 0.01}[optimizer]
    cfg = LinearConfig(epochs=15, batch_size=128, optimizer=optimizer, base_lr=base_lr, warmup_epochs=2)
    result = train_linear_probe(x, y, ex, ey, 10, cfg)
    assert result.final["top1"] >= 0.99
    assert result.final["top5"] >= result.final["top1"]
    assert result.best["top1"] >= result.final["top1"]
    assert 1 <= result.best["epoch"] <= 15
    assert len(result.history) == 15
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_linear_probe_is_deterministic_and_chance_on_random_labels():
    x, y = separable(n_per_class=40)
    cfg = LinearConfig(epochs=3, batch_size=64, warmup_epochs=1)
    a = train_linear_probe(x, y, x, y, 10, cfg)
    b = train_linear_probe(x, y, x, y, 10, cfg)
    assert a.history == b.history
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    ex, ey = separable(n_per_class=40, seed=3)
    c = train_linear_probe(x, shuffled, ex, ey, 10, LinearConfig(epochs=5, batch_size=64, warmup_epochs=1))
    assert c.final["top1"] < 0.35  # labels carry no information: near chance (0.1)


def test_head_roundtrip(tmp_path):
    x, y = separable(n_per_class=20)
    result = train_linear_probe(x, y, x, y, 10, LinearConfig(epochs=2, batch_size=50, warmup_epochs=0))
    path = save_head(result.head, tmp_path / "head.safetensors", {"pool": "cls", "class_names": list("abcdefghij")})
    head, meta = load_head(tmp_path)
    assert meta["pool"] == "cls" and meta["class_names"][3] == "d" and meta["num_classes"] == 10
    assert torch.allclose(head_scores(head, x), head_scores(result.head, x))
    assert path.is_file()
    with pytest.raises(BlockMAEError, match="not found"):
        load_head(tmp_path / "missing.safetensors")


def test_bad_config_is_rejected():
    with pytest.raises(BlockMAEError, match="optimizer"):
        LinearConfig(optimizer="rmsprop").validate()
