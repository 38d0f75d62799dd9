"""The one model factory: every spec kind loads through `models.factory.load_encoder` with its input size,
normalisation and weights hash; a bad spec is a one-line BlockMAEError."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import transformers_or_skip
from safetensors.torch import save_file

from blockmae.errors import BlockMAEError
from blockmae.models import build_mae, save_mae
from blockmae.models.external import ForeignViT
from blockmae.models.factory import RANDOM, Encoder, canonical_spec, load_encoder, weights_hash
from blockmae.models.mae import MaskedAutoencoderViT
from blockmae.normalisation import IMAGENET_MEAN, IMAGENET_STD


def _check(encoder: Encoder, spec: str, size: int, mean: tuple, std: tuple, kind: type) -> None:
    assert isinstance(encoder.model, kind) and encoder.checkpoint == spec
    assert encoder.image_size == size and encoder.arch["img_size"] == size
    assert encoder.normalisation == (pytest.approx(mean), pytest.approx(std))
    assert encoder.weights_hash == weights_hash(encoder.model) and len(encoder.weights_hash) == 16
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.model.parameters())


def test_blockmae_run_dir_checkpoint_file_and_random_load_through_one_function(tmp_path):
    torch.manual_seed(0)
    model = build_mae("vit_nano", img_size=32, patch_size=4)
    file = save_mae(model, tmp_path / "run" / "checkpoints" / "last" / "model.safetensors", metadata={"epoch": 2})
    by_run, by_file = load_encoder(tmp_path / "run"), load_encoder(str(file))
    _check(by_run, str(tmp_path / "run"), 32, IMAGENET_MEAN, IMAGENET_STD, MaskedAutoencoderViT)
    _check(by_file, str(file), 32, IMAGENET_MEAN, IMAGENET_STD, MaskedAutoencoderViT)
    assert by_run.weights_hash == by_file.weights_hash == weights_hash(model)
    assert by_run.metadata == {"epoch": 2} and by_run.mae is by_run.model

    random = load_encoder(RANDOM, preset="vit_nano", img_size=16, patch_size=4, seed=1)
    _check(random, RANDOM, 16, IMAGENET_MEAN, IMAGENET_STD, MaskedAutoencoderViT)
    assert random.metadata == {"seed": 1, "preset": "vit_nano"}
    assert load_encoder(RANDOM, preset="vit_nano", img_size=16, patch_size=4, seed=1).weights_hash == random.weights_hash
    like = load_encoder(RANDOM, seed=1, arch_from=str(tmp_path / "run"))  # the architecture of a checkpoint
    assert like.arch == by_run.arch and like.weights_hash != by_run.weights_hash
    assert load_encoder(RANDOM, seed=1, arch=model.arch).weights_hash == like.weights_hash


def test_timm_and_official_mae_specs_carry_their_own_size_and_normalisation(tmp_path):
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    spec = f"timm:vit_tiny_patch16_224:{tmp_path / 'vit.safetensors'}"
    _check(load_encoder(spec), spec, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ForeignViT)  # timm's config for vit_tiny
    assert canonical_spec(spec) == spec and load_encoder(spec).metadata == {"foreign": spec}

    mae = build_mae("vit_nano", img_size=32, patch_size=4, embed_dim=192, num_heads=3)
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pth")  # facebookresearch/mae's layout
    for spec in (str(tmp_path / "mae.pth"), f"mae:{tmp_path / 'mae.pth'}"):
        encoder = load_encoder(spec)
        _check(encoder, spec, 32, IMAGENET_MEAN, IMAGENET_STD, ForeignViT)
        with pytest.raises(BlockMAEError, match="not a blockmae checkpoint"):
            encoder.mae


def test_hf_directory_spec(tmp_path):
    transformers = transformers_or_skip()
    config = transformers.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(str(tmp_path / "hf"))
    for spec in (str(tmp_path / "hf"), f"hf:{tmp_path / 'hf'}"):
        _check(load_encoder(spec), spec, 32, IMAGENET_MEAN, IMAGENET_STD, ForeignViT)


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/missing", "does not exist"),
    ("timm:vit_tiny_patch16_224", "timm:<model_name>:<weights file>"),
    ("timm:no_such_model_xyz:{tmp}/w.safetensors", "no_such_model_xyz"),
    ("{tmp}/w.safetensors", "no blockmae architecture"),
    ("hf:{tmp}", "not a model directory"),
])
def test_a_bad_spec_is_a_one_line_error(tmp_path, spec, message):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(BlockMAEError, match=message) as err:
        load_encoder(spec.format(tmp=tmp_path))
    assert "\n" not in str(err.value)
