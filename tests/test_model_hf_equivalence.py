"""Our MAE is numerically the same function as Hugging Face's ViTMAEForPreTraining (random masks, sincos)."""

from __future__ import annotations

import pytest
import torch

from blockmae.models import build_mae, from_hf_vitmae_state_dict
from blockmae.models.hf import build_hf_vitmae

from conftest import transformers_or_skip  # noqa: E402

transformers = transformers_or_skip()
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding  # noqa: E402


def _hf_mae_layout_table(grid: int, dim: int) -> torch.Tensor:
    """ViTMAE's own initial table: its builder, halves swapped to the released-checkpoint layout."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    return torch.cat([table[..., dim // 2:], table[..., : dim // 2]], dim=-1).unsqueeze(0)


def _twin_models(img_size: int, patch_size: int, norm_pix_loss: bool):
    torch.manual_seed(0)
    ours = build_mae("vit_nano", img_size=img_size, patch_size=patch_size, depth=2, decoder_depth=2,
                     norm_pix_loss=norm_pix_loss, mask_family="random", mask_block=1)
    hf = build_hf_vitmae(ours.arch)
    grid = img_size // patch_size
    with torch.no_grad():
        # A freshly built ViTMAE leaves its position tables at zero; give it the tables its
        # initialize_weights() would build, so the copied weights carry real positions.
        hf.vit.embeddings.position_embeddings.copy_(_hf_mae_layout_table(grid, ours.arch["embed_dim"]))
        hf.decoder.decoder_pos_embed.copy_(_hf_mae_layout_table(grid, ours.arch["decoder_embed_dim"]))
    ours.load_state_dict(from_hf_vitmae_state_dict(hf.state_dict()))
    return ours, hf


@pytest.mark.parametrize("img_size,patch_size,norm_pix_loss", [(32, 4, True), (32, 8, True), (32, 4, False)])
def test_same_mask_predictions_loss_and_gradients_as_vitmae(img_size, patch_size, norm_pix_loss):
    ours, hf = _twin_models(img_size, patch_size, norm_pix_loss)
    num_patches = (img_size // patch_size) ** 2
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randn(3, 3, img_size, img_size, generator=gen)
    noise = torch.rand(3, num_patches, generator=gen)

    ref = hf(pixel_values=imgs, noise=noise)
    out = ours(imgs, noise=noise)

    assert torch.equal(out.mask, ref.mask)
    assert torch.equal(out.ids_restore, ref.ids_restore)
    torch.testing.assert_close(out.pred, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)

    ref.loss.backward()
    out.loss.backward()
    ref_grads = from_hf_vitmae_state_dict({n: p.grad for n, p in hf.named_parameters() if p.grad is not None})
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert set(ref_grads) == set(our_grads)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sincos_tables_match_vitmae_initialisation():
    model = build_mae("vit_nano", img_size=32, patch_size=4)
    torch.testing.assert_close(model.pos_embed.data, _hf_mae_layout_table(8, 64), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.decoder_pos_embed.data, _hf_mae_layout_table(8, 64), rtol=0, atol=1e-6)


def test_vit_base_16_at_224_has_the_reference_parameter_count():
    with torch.device("meta"):
        ours = build_mae("vit_base", img_size=224, patch_size=16, decoder_embed_dim=512, decoder_depth=8,
                         decoder_num_heads=16, mask_family="random", mask_block=1)
        hf = build_hf_vitmae(ours.arch)
    count = lambda model, trainable: sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)  # noqa: E731
    assert count(ours, trainable=False) == count(hf, trainable=False) == 111_907_840
    assert count(ours, trainable=True) == count(hf, trainable=True)


def test_benchmark_peers_do_the_same_work():
    """`blockmae bench model` compares equal architectures: equal step FLOPs, same trainable parameters."""
    from blockmae.bench.model import _step_flops

    ours, hf = _twin_models(32, 4, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)  # the same random masks on both sides
    assert (_step_flops(ours, lambda: ours(imgs, noise=noise).loss)
            == _step_flops(hf, lambda: hf(pixel_values=imgs, noise=noise).loss) > 0)


def test_bench_model_command_parses(capsys):
    from blockmae.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "model", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out
