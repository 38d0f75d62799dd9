"""Export to timm / Hugging Face, and foreign ViTs (timm, official MAE .pth, HF directories) as encoders.

No network: every foreign model is built randomly initialised here, saved in its format, loaded back through
`models.factory.load_encoder`, and compared with the original model's own outputs.
"""

from __future__ import annotations

import pytest
from conftest import transformers_or_skip
import torch

from blockmae.cli import main
from blockmae.models.factory import load_encoder
from blockmae.models import build_mae, save_mae
from blockmae.models.export import export_hf, export_timm, largest_difference, timm_load_kwargs

timm = pytest.importorskip("timm")
IMGS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _mae(pos_embed="sincos", seed=0):
    torch.manual_seed(seed)
    model = build_mae("vit_nano", img_size=32, patch_size=4, pos_embed=pos_embed).eval()
    with torch.no_grad():  # trained-looking weights: no zero biases or unit norms to hide a mis-mapping
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("pos_embed", ["sincos", "learned", "none", "rope"])
@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_timm_export_loads_with_create_model_and_gives_blockmae_features(tmp_path, pos_embed, pool):
    model = _mae(pos_embed)
    out = export_timm(model, tmp_path / "timm", pool)
    name, kwargs = timm_load_kwargs(out)
    vit = timm.create_model(name, **kwargs).eval()  # the pretrained_cfg_overlay=dict(file=...) form
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        ours = model.forward_features(IMGS, pool=pool)
        for theirs in (vit, local):
            assert theirs.num_classes == 0
            torch.testing.assert_close(theirs(IMGS), ours, rtol=0, atol=1e-5)
    assert largest_difference(model, out, "timm", pool) <= 1e-5


def test_rope_goes_to_timm_eva_and_is_refused_for_hf(tmp_path):
    from blockmae.errors import BlockMAEError

    out = export_timm(_mae("rope"), tmp_path / "eva")
    assert type(timm.create_model(f"local-dir:{out}", pretrained=True)).__name__ == "Eva"
    with pytest.raises(BlockMAEError, match="rope"):
        export_hf(_mae("rope"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_hf_export_equals_blockmae(tmp_path, pos_embed):
    transformers_or_skip()
    model = _mae(pos_embed)
    out = export_hf(model, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert largest_difference(model, out, "hf", "cls") <= 1e-5


def test_hf_vitmae_export_gives_the_same_reconstructions(tmp_path):
    transformers = transformers_or_skip()
    model = _mae("sincos")
    hf = transformers.ViTMAEForPreTraining.from_pretrained(str(export_hf(model, tmp_path / "hf"))).eval()
    noise = torch.rand(3, model.num_patches, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = hf(pixel_values=IMGS, noise=noise), model(IMGS, noise=noise)
    torch.testing.assert_close(out.pred, ref.logits, rtol=0, atol=1e-5)


def test_export_command_prints_the_largest_difference(tmp_path, capsys):
    ckpt = save_mae(_mae(), tmp_path / "m.safetensors")
    assert main(["export", str(ckpt), "--format", "timm", "--out", str(tmp_path / "out")]) == 0
    assert "largest |difference|" in capsys.readouterr().out
    assert main(["export", str(save_mae(_mae("rope"), tmp_path / "r.safetensors")), "--format", "hf",
                 "--out", str(tmp_path / "r")]) == 2
    assert "rope" in capsys.readouterr().err


# ---------------------------------------------------------------------------- foreign encoders
def _vit_tiny_32():
    torch.manual_seed(1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                             depth=2).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_name_and_weights_file_load_with_the_models_normalisation(tmp_path, suffix):
    from safetensors.torch import save_file

    from blockmae.data.augment import IMAGENET_MEAN, IMAGENET_STD

    vit = _vit_tiny_32()
    file = tmp_path / f"vit{suffix}"
    if suffix == ".pth":  # read with weights_only=True; a {"state_dict": ...} wrapper is unwrapped
        torch.save({"state_dict": vit.state_dict()}, file)
    else:
        save_file(vit.state_dict(), str(file))
    enc = load_encoder(f"timm:vit_tiny_patch16_224:{file}")
    assert (enc.image_size, enc.arch["patch_size"]) == (32, 8)
    # the pipeline hands ImageNet-normalised images; vit_tiny wants mean = std = 0.5
    pixels = torch.rand(2, 3, 32, 32)
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = vit.forward_head(vit.forward_features((pixels - 0.5) / 0.5), pre_logits=True)
        torch.testing.assert_close(enc.model.forward_features(imagenet, pool="cls"), want, rtol=0, atol=1e-5)
        tokens = vit.forward_intermediates((pixels - 0.5) / 0.5, indices=[0], norm=True, output_fmt="NLC",
                                           intermediates_only=True)[0]
        torch.testing.assert_close(enc.model.forward_features(imagenet, pool="avg", layer=0), tokens.mean(1),
                                   rtol=0, atol=1e-5)
    # the normalisation is part of the identity: the same weights read at ImageNet's mean/std hash differently
    from blockmae.models.factory import weights_hash
    from blockmae.models.external import ForeignViT

    assert weights_hash(ForeignViT(enc.model.vit, IMAGENET_MEAN, IMAGENET_STD, "x", "timm")) != enc.weights_hash
    maps = enc.model.attention_maps(imagenet)
    assert len(maps) == 2 and maps[0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, 17), rtol=0, atol=1e-5)


def test_official_mae_checkpoint_pretrained_and_finetuned(tmp_path):
    torch.manual_seed(4)  # the head count is not in the weights: a width of the official table (192: 3 heads)
    model = build_mae("vit_nano", img_size=32, patch_size=4, embed_dim=192, num_heads=3).eval()
    # facebookresearch/mae writes {"model": state_dict, ...}: blockmae names are its names
    torch.save({"model": model.state_dict(), "epoch": 799}, tmp_path / "mae_pretrain.pth")
    enc = load_encoder(str(tmp_path / "mae_pretrain.pth"))
    with torch.no_grad():
        torch.testing.assert_close(enc.model.forward_features(IMGS, "both"), model.forward_features(IMGS, "both"),
                                   rtol=0, atol=1e-5)
    # a fine-tuned one (global pool): fc_norm + head, no final norm
    from blockmae.models.export import to_timm_vit

    tuned = to_timm_vit(model, pool="avg", num_classes=5, fc_norm=True).eval()
    state = {k: v for k, v in tuned.state_dict().items() if not k.startswith("norm.")}
    torch.save({"model": state}, tmp_path / "mae_finetuned.pth")
    enc = load_encoder(f"mae:{tmp_path / 'mae_finetuned.pth'}")
    with torch.no_grad():
        torch.testing.assert_close(enc.model.vit(IMGS), tuned.forward_head(tuned.forward_features(IMGS), pre_logits=True),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "vit_mae"])
def test_hf_directories_load_with_the_same_features(tmp_path, kind):
    transformers = transformers_or_skip()
    torch.manual_seed(3)
    common = dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128)
    if kind == "vit":
        hf = transformers.ViTModel(transformers.ViTConfig(**common), add_pooling_layer=False)
    else:
        hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**common, decoder_hidden_size=32,
                                                                          decoder_num_hidden_layers=1,
                                                                          decoder_num_attention_heads=2,
                                                                          decoder_intermediate_size=64))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.eval().save_pretrained(str(tmp_path / "hf"))
    enc = load_encoder(str(tmp_path / "hf"))  # auto-detected by config.json
    assert enc.arch["source"] == "hf" and load_encoder(f"hf:{tmp_path / 'hf'}").weights_hash == enc.weights_hash
    with torch.no_grad():
        if kind == "vit":
            ref = hf(pixel_values=IMGS).last_hidden_state
        else:
            hf.config.mask_ratio = 0.0
            ref = hf.vit(pixel_values=IMGS, noise=torch.arange(64.0).expand(3, -1)).last_hidden_state
        torch.testing.assert_close(enc.model.tokens(IMGS), ref, rtol=0, atol=1e-5)


def test_bad_foreign_specs_are_one_line_errors(tmp_path, capsys):
    from blockmae.errors import BlockMAEError

    with pytest.raises(BlockMAEError, match="timm:<model_name>:<weights file>"):
        load_encoder("timm:vit_tiny_patch16_224")
    with pytest.raises(BlockMAEError, match="does not exist"):
        load_encoder(f"timm:vit_tiny_patch16_224:{tmp_path / 'none.safetensors'}")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BlockMAEError, match="cannot read"):
        load_encoder(str(tmp_path / "bad.pth"))


def test_probe_and_shape_bias_run_on_a_timm_model(tmp_path, capsys):
    """The probe command with checkpoint=timm:NAME:FILE, at the model's input size; the head finds it again."""
    from safetensors.torch import save_file

    from blockmae.evaluation.cli_shape_bias import encoder_for_head
    from blockmae.evaluation.linear import load_head

    file = tmp_path / "vit.safetensors"
    save_file(_vit_tiny_32().state_dict(), str(file))
    spec = f"timm:vit_tiny_patch16_224:{file}"
    code = main(["probe", f"checkpoint={spec}", "kind=both", "data.num_images=40", "linear.epochs=2",
                 "linear.warmup_epochs=0", "linear.batch_size=16", "device=cpu", f"output_root={tmp_path}",
                 f"run_dir={tmp_path}/probe"])
    assert code == 0 and "k-NN" in capsys.readouterr().out
    _, meta = load_head(tmp_path / "probe" / "head.safetensors")
    assert meta["checkpoint"] == spec and meta["image_size"] == 32
    assert encoder_for_head(meta, None, torch.device("cpu")).weights_hash == meta["weights_hash"]


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_a_timm_export_directory_is_an_encoder_for_the_evaluations(tmp_path, pos_embed):
    model = _mae(pos_embed)
    enc = load_encoder(str(export_timm(model, tmp_path / "timm")))
    assert enc.arch["source"] == "timm" and enc.image_size == 32
    with torch.no_grad():
        for layer in (None, 0):
            torch.testing.assert_close(enc.model.forward_features(IMGS, "both", layer),
                                       model.forward_features(IMGS, "both", layer), rtol=0, atol=1e-5)
    ours, theirs = model.attention_maps(IMGS), enc.model.attention_maps(IMGS)
    torch.testing.assert_close(theirs[-1], ours[-1], rtol=0, atol=1e-5)
