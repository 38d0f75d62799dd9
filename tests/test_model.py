"""Behaviour of the MAE model: shapes, masking semantics, position variants, encoder API, I/O, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from blockmae.errors import BlockMAEError
from blockmae.masking import Mask, MaskGenerator, mask_from_noise
from blockmae.models import PRESETS, MaskedAutoencoderViT, build_mae, load_encoder, save_mae

POS_EMBEDS = ["sincos", "learned", "rope", "none"]
IMG, PATCH = 32, 4  # an 8x8 patch grid
N = (IMG // PATCH) ** 2


def tiny(**overrides) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return build_mae("vit_nano", **{"img_size": IMG, "patch_size": PATCH, **overrides}).eval()


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def noise_mask(batch: int, num_keep: int, seed: int = 0) -> Mask:
    return mask_from_noise(torch.rand(batch, N, generator=torch.Generator().manual_seed(seed)), num_keep)


def shuffle_image_patches(model: MaskedAutoencoderViT, imgs: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return model.unpatchify(model.patchify(imgs)[:, perm])


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("pos_embed", POS_EMBEDS)
def test_forward_shapes_and_finite_loss_for_every_position_variant(pos_embed):
    model = tiny(pos_embed=pos_embed)
    block_masks = MaskGenerator(IMG // PATCH, 0.75, block=2)(3, generator=torch.Generator().manual_seed(0))
    out = model(images(3), mask=block_masks)
    assert out.pred.shape == (3, N, PATCH * PATCH * 3)
    assert out.mask.shape == (3, N) and out.ids_restore.shape == (3, N)
    assert torch.equal(out.mask, block_masks.mask) and torch.equal(out.mask.sum(1), torch.full((3,), 48.0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_its_dimensions_and_runs_shapes(preset):
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = build_mae(preset, img_size=64, patch_size=8)
        out = model(torch.empty(2, 3, 64, 64), noise=torch.empty(2, 64).uniform_())
        features = model.forward_features(torch.empty(2, 3, 64, 64), pool="both")
    spec = PRESETS[preset]
    assert model.patch_embed.proj.out_channels == spec["embed_dim"]
    assert len(model.blocks) == spec["depth"] and len(model.decoder_blocks) == spec["decoder_depth"]
    assert model.blocks[0].attn.num_heads == spec["num_heads"]
    assert out.pred.shape == (2, 64, 8 * 8 * 3)
    assert features.shape == (2, 2 * spec["embed_dim"])


def test_presets_match_the_standard_vit_sizes_and_small_is_default():
    assert {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in PRESETS.items()
            if k in ("vit_tiny", "vit_small", "vit_base")} == {
        "vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
    with torch.device("meta"):
        assert build_mae().arch["embed_dim"] == 384


# ----------------------------------------------------------------------------------------- masking
def test_mask_sources_explicit_mask_beats_noise_and_one_is_required():
    model, imgs = tiny(), images()
    assert model.num_keep == 16 and not hasattr(model, "mask_generator")  # masks come from blockmae.masking
    explicit = noise_mask(2, model.num_keep, seed=5)
    other_noise = torch.rand(2, N, generator=torch.Generator().manual_seed(9))
    assert torch.equal(model(imgs, mask=explicit, noise=other_noise).mask, explicit.mask)
    from_noise = model(imgs, noise=other_noise)
    assert torch.equal(from_noise.mask, mask_from_noise(other_noise, model.num_keep).mask)
    with pytest.raises(BlockMAEError, match="needs a mask"):
        model(imgs)


def test_loss_depends_only_on_masked_patches():
    model, imgs = tiny(), images()
    mask = noise_mask(2, model.num_keep)
    pred = torch.randn(2, N, PATCH * PATCH * 3, requires_grad=True)
    model.forward_loss(imgs, pred, mask.mask).backward()
    grad_norm = pred.grad.abs().sum(-1)
    assert torch.all(grad_norm[mask.mask == 0] == 0)
    assert torch.all(grad_norm[mask.mask == 1] > 0)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_mse_on_masked_patches_against_the_chosen_targets(norm_pix_loss):
    model, imgs = tiny(norm_pix_loss=norm_pix_loss), images()
    out = model(imgs, mask=noise_mask(2, model.num_keep))
    target = model.patchify(imgs)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    masked = out.mask.bool()
    expected = (out.pred - target).pow(2).mean(-1)[masked].mean()
    torch.testing.assert_close(out.loss, expected)


def test_patchify_is_mae_layout_and_unpatchify_inverts_it():
    model, imgs = tiny(), images()
    patches = model.patchify(imgs)
    # patch (row 1, col 2), pixel (row 3, col 0), channel 2 sits at index (3 * PATCH + 0) * 3 + 2
    assert patches[0, 1 * (IMG // PATCH) + 2, (3 * PATCH + 0) * 3 + 2] == imgs[0, 2, 1 * PATCH + 3, 2 * PATCH + 0]
    assert torch.equal(model.unpatchify(patches), imgs)


# ------------------------------------------------------------------------------- position variants
@pytest.mark.parametrize("pos_embed", POS_EMBEDS)
def test_encoder_is_equivariant_to_the_order_of_kept_tokens(pos_embed):
    """Same kept set in another order: same tokens, permuted (RoPE rotations follow their tokens)."""
    model, imgs = tiny(pos_embed=pos_embed), images()
    ids_keep = noise_mask(2, 16).ids_keep
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.forward_encoder(imgs, ids_keep)
        shuffled = model.forward_encoder(imgs, ids_keep[:, order])
    torch.testing.assert_close(shuffled[:, 0], base[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(shuffled[:, 1:], base[:, 1:][:, order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos_embed,position_blind", [("none", True), ("rope", False), ("sincos", False),
                                                      ("learned", False)])
def test_only_the_none_variant_ignores_where_patches_are(pos_embed, position_blind):
    """Moving image content between grid cells permutes `none`'s tokens; the others see positions."""
    model, imgs = tiny(pos_embed=pos_embed), images()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model.forward_encoder(imgs)
        moved = model.forward_encoder(shuffle_image_patches(model, imgs, perm))
    same = torch.allclose(moved[:, 1:], base[:, 1:][:, perm], atol=1e-5) and torch.allclose(
        moved[:, 0], base[:, 0], atol=1e-5)
    assert same == position_blind


def test_rope_table_is_not_saved_and_sincos_tables_are_frozen_learned_is_trained():
    assert not any("rope" in k for k in tiny(pos_embed="rope").state_dict())
    sincos, learned = tiny(pos_embed="sincos"), tiny(pos_embed="learned")
    assert not sincos.pos_embed.requires_grad and not sincos.decoder_pos_embed.requires_grad
    assert learned.pos_embed.requires_grad and learned.pos_embed.std() > 0
    assert tiny(pos_embed="none").pos_embed is None and tiny(pos_embed="rope").pos_embed is None


def test_mae_initialisation():
    model = tiny()
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    fan_out, fan_in = model.blocks[0].mlp.fc1.weight.shape
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert model.blocks[0].mlp.fc1.weight.abs().max() <= bound and model.blocks[0].mlp.fc1.bias.abs().sum() == 0
    proj = model.patch_embed.proj.weight
    assert proj.abs().max() <= (6 / (proj.shape[0] + proj[0].numel())) ** 0.5
    assert 0.01 < model.cls_token.std() < 0.04 and 0.01 < model.mask_token.std() < 0.04


# -------------------------------------------------------------------------------------- encoder API
def test_forward_features_pools_and_layers():
    model, imgs = tiny(depth=3), images()
    with torch.no_grad():
        tokens = model.forward_encoder(imgs)
        cls, avg = model.forward_features(imgs, "cls"), model.forward_features(imgs, "avg")
        both = model.forward_features(imgs, "both")
        layers = [model.forward_features(imgs, "cls", layer=i) for i in range(3)]
        first_block = model.norm(model.blocks[0](torch.cat([
            (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1),
            model.patch_embed(imgs) + model.pos_embed[:, 1:]], dim=1)))
    assert cls.shape == avg.shape == (2, 64) and both.shape == (2, 128)
    assert torch.equal(cls, tokens[:, 0]) and torch.allclose(avg, tokens[:, 1:].mean(1))
    assert torch.equal(both, torch.cat([cls, avg], -1))
    assert torch.equal(layers[2], cls) and torch.equal(model.forward_features(imgs, layer=-1), cls)
    torch.testing.assert_close(layers[0], first_block[:, 0])
    assert not torch.allclose(layers[0], layers[1])
    with pytest.raises(BlockMAEError, match="layer=3"):
        model.forward_features(imgs, layer=3)
    with pytest.raises(BlockMAEError, match="pool"):
        model.forward_features(imgs, pool="max")


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_attention_maps_are_the_real_attention_probabilities(pos_embed):
    model, imgs = tiny(depth=3, pos_embed=pos_embed), images()
    with torch.no_grad():
        before = model.forward_features(imgs)
        maps = model.attention_maps(imgs)
        after = model.forward_features(imgs)
    assert len(maps) == 3
    for attn in maps:
        assert attn.shape == (2, 2, N + 1, N + 1)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, N + 1))
    assert all(block.attn.fused_attn for block in model.blocks)  # default path restored
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    if pos_embed == "sincos":  # block 0 by hand: softmax(q k^T / sqrt(d)) from its qkv projection
        x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1),
                       model.patch_embed(imgs) + model.pos_embed[:, 1:]], dim=1)
        q, k, _ = model.blocks[0].attn.qkv(model.blocks[0].norm1(x)).reshape(2, N + 1, 3, 2, 32).permute(
            2, 0, 3, 1, 4)
        torch.testing.assert_close(maps[0], (q @ k.transpose(-1, -2) / 32**0.5).softmax(-1))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruct_undoes_the_target_normalisation_and_pastes_visible_patches(norm_pix_loss, monkeypatch):
    model, imgs = tiny(norm_pix_loss=norm_pix_loss), images()
    mask = noise_mask(2, model.num_keep)
    recon = model.reconstruct(imgs, mask)
    assert recon.shape == imgs.shape
    pasted = model.reconstruct(imgs, mask, paste_visible=True)
    visible = (mask.mask == 0)
    assert torch.equal(model.patchify(pasted)[visible], model.patchify(imgs)[visible])
    assert torch.equal(model.patchify(pasted)[~visible], model.patchify(recon)[~visible])
    # A perfect predictor (it outputs the regression targets) reconstructs the input exactly.
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: model.patch_targets(imgs)[0])
    torch.testing.assert_close(model.reconstruct(imgs, mask), imgs, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_bf16_autocast_is_finite_and_returns_fp32_loss_and_predictions(pos_embed):
    model = tiny(pos_embed=pos_embed).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(), mask=noise_mask(2, model.num_keep))
    assert out.loss.dtype == torch.float32 and out.pred.dtype == torch.float32
    assert torch.isfinite(out.loss) and torch.isfinite(out.pred).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        fp32 = model(images(), mask=noise_mask(2, model.num_keep)).loss
    assert abs(out.loss.item() - fp32.item()) < 0.05 * fp32.item()


# --------------------------------------------------------------------------------------------- I/O
def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = tiny(pos_embed="rope", mask_block=2)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.bias.normal_()
    path = save_mae(model, tmp_path / "w" / "model.safetensors", metadata={"epoch": 3, "note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left
    for source in (path, path.parent):
        encoder = load_encoder(source)
        loaded, meta = encoder.mae, encoder.metadata
        assert meta == {"epoch": 3, "note": "x"} and loaded.arch == model.arch
        assert loaded.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    run_dir = tmp_path / "run"
    save_mae(model, run_dir / "checkpoints" / "last" / "model.safetensors")
    loaded = load_encoder(run_dir).mae
    noise = torch.rand(2, N)
    assert torch.equal(loaded.eval()(images(), noise=noise).pred, model(images(), noise=noise).pred)


def test_load_errors_name_the_problem(tmp_path):
    model = tiny()
    path = save_mae(model, tmp_path / "model.safetensors")
    with pytest.raises(BlockMAEError, match="does not exist"):
        load_encoder(tmp_path / "missing.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BlockMAEError, match="no model.safetensors"):
        load_encoder(tmp_path / "empty_dir")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(BlockMAEError, match="no blockmae architecture"):
        load_encoder(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BlockMAEError, match="not a readable"):
        load_encoder(tmp_path / "junk.safetensors")

    state = load_file(str(path))
    arch = {**model.arch, "embed_dim": 128, "num_heads": 2}  # header claims a wider model
    save_file(state, str(tmp_path / "wide.safetensors"), metadata={"format": "blockmae.mae",
                                                                     "arch": json.dumps(arch)})
    with pytest.raises(BlockMAEError, match=r"cls_token has shape \(1, 1, 64\) but the model expects \(1, 1, 128\)"):
        load_encoder(tmp_path / "wide.safetensors")
    del state["norm.weight"]
    save_file(state, str(tmp_path / "short.safetensors"), metadata={"format": "blockmae.mae",
                                                                      "arch": json.dumps(model.arch)})
    with pytest.raises(BlockMAEError, match=r"missing \['norm.weight'\]"):
        load_encoder(tmp_path / "short.safetensors")
    save_file(state, str(tmp_path / "future.safetensors"), metadata={"format": "blockmae.mae",
                                                                       "arch": json.dumps({**model.arch, "x": 1})})
    with pytest.raises(BlockMAEError, match=r"unknown architecture keys \['x'\]"):
        load_encoder(tmp_path / "future.safetensors")


def test_failed_save_keeps_the_previous_file(tmp_path):
    model = tiny()
    path = save_mae(model, tmp_path / "model.safetensors", metadata={"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(BlockMAEError, match="JSON"):
        save_mae(model, path, metadata={"bad": object()})
    with pytest.raises(BlockMAEError, match=".safetensors"):
        save_mae(model, tmp_path / "model.pt")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("overrides,message", [
    ({"img_size": 30, "patch_size": 8}, "img_size=30 is not a multiple of patch_size=8"),
    ({"img_size": 32, "patch_size": 8, "mask_block": 8}, "4x4"),
    ({"embed_dim": 60, "num_heads": 8}, "embed_dim=60 is not divisible by num_heads=8"),
    ({"pos_embed": "rope", "embed_dim": 48, "num_heads": 8}, "head width"),
    ({"pos_embed": "alibi"}, "pos_embed='alibi'"),
    ({"mask_ratio": 1.0}, "mask_ratio=1.0"),
    ({"decoder_width": 3}, "unknown model argument"),
])
def test_bad_geometry_and_arguments_raise_one_line_errors(overrides, message):
    with pytest.raises(BlockMAEError, match=message):
        build_mae("vit_nano", **overrides)


def test_bad_inputs_raise_one_line_errors():
    model = tiny()
    with pytest.raises(BlockMAEError, match="unknown model preset 'vit_huge'"):
        build_mae("vit_huge")
    with pytest.raises(BlockMAEError, match=r"expects \(B, 3, 32, 32\)"):
        model(torch.zeros(2, 3, 64, 64))
    with pytest.raises(BlockMAEError, match="noise has shape"):
        model(images(), noise=torch.rand(2, N + 1))
    with pytest.raises(BlockMAEError, match="mask has shape"):
        model(images(), mask=mask_from_noise(torch.rand(3, N), 16))
