import math

import pytest
import torch
from torch import nn

from blockmae.engine.config import OptimConfig
from blockmae.engine.optim import build_optimizer, build_scheduler, no_weight_decay_names, optimizer_step


def mae_lr(step, lr, min_lr, warmup, total):
    """MAE's lr_sched.adjust_learning_rate, per iteration."""
    if step < warmup:
        return lr * step / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.fixed = nn.Parameter(torch.zeros(1, 5, 8), requires_grad=False)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.conv = nn.Conv2d(3, 8, 2)


def _decay_of(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_weight_decay_only_on_weight_matrices():
    model = Toy()
    decay = _decay_of(model, build_optimizer(model, OptimConfig(), lr=1e-3))
    assert {n for n, wd in decay.items() if wd > 0} == {"proj.weight", "conv.weight"}
    assert decay["proj.weight"] == 0.05
    assert {n for n, wd in decay.items() if wd == 0} == {
        "cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "proj.bias", "norm.weight", "norm.bias",
        "conv.bias"}
    assert "fixed" not in decay  # frozen (e.g. sin-cos) tables are not optimised at all


def test_adamw_betas_from_config():
    opt = build_optimizer(Toy(), OptimConfig(betas=[0.9, 0.95]), lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)


@pytest.mark.parametrize("warmup_epochs, min_lr", [(2.0, 0.0), (0.5, 1e-5), (0.0, 0.0)])
def test_schedule_is_mae_warmup_then_cosine_per_iteration(warmup_epochs, min_lr):
    steps_per_epoch, epochs, lr = 10, 6, 3e-4
    cfg = OptimConfig(warmup_epochs=warmup_epochs, min_lr=min_lr)
    opt = build_optimizer(Toy(), cfg, lr=lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch, epochs)
    warmup, total = round(warmup_epochs * steps_per_epoch), steps_per_epoch * epochs
    for step in range(total):
        sched.step_update(step)
        expected = mae_lr(step, lr, min_lr, warmup, total)
        assert all(g["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15) for g in opt.param_groups), step
    if warmup:
        sched.step_update(warmup // 2)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * (warmup // 2) / warmup)
    sched.step_update(warmup)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)  # the peak right after warm-up
    sched.step_update(total)
    assert opt.param_groups[0]["lr"] == pytest.approx(min_lr)


def test_mae_model_groups():
    """On the real model: every trainable 1-D tensor, token and learned position table is undecayed."""
    from blockmae.models import build_mae

    model = build_mae("vit_nano", img_size=32, patch_size=4, pos_embed="learned")
    decay = _decay_of(model, build_optimizer(model, OptimConfig(), lr=1e-3))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(decay) == trainable
    undecayed = {n for n, wd in decay.items() if wd == 0}
    assert {"cls_token", "mask_token", "pos_embed", "norm.weight", "blocks.0.norm1.bias"} <= undecayed
    assert {n for n in trainable if model.get_parameter(n).ndim <= 1} <= undecayed
    assert {n for n, wd in decay.items() if wd > 0} == {
        n for n in trainable if model.get_parameter(n).ndim >= 2 and not n.endswith(("_token", "pos_embed"))}
    assert "patch_embed.proj.weight" in decay and decay["patch_embed.proj.weight"] == 0.05


def test_mae_no_decay_set_is_exact():
    """The exact undecayed names of a vit_nano (2 encoder blocks, 1 decoder block): the tokens and learned
    position table (3-D, so only the name patterns keep them undecayed, whatever timm's own matching does),
    every norm and every bias; the frozen decoder sin-cos table is not optimised at all."""
    from blockmae.models import build_mae

    model = build_mae("vit_nano", img_size=32, patch_size=4, pos_embed="learned")
    decay = _decay_of(model, build_optimizer(model, OptimConfig(), lr=1e-3))
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias", "norm2.weight", "norm2.bias",
                 "mlp.fc1.bias", "mlp.fc2.bias"]
    blocks = ["blocks.0", "blocks.1", "decoder_blocks.0"]
    assert {n for n, wd in decay.items() if wd == 0} == {
        "cls_token", "mask_token", "pos_embed", "patch_embed.proj.bias", "norm.weight", "norm.bias",
        "decoder_embed.bias", "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.bias",
        *(f"{b}.{s}" for b in blocks for s in per_block)}
    assert "decoder_pos_embed" not in decay
    assert no_weight_decay_names(model) == ["cls_token", "decoder_pos_embed", "mask_token", "pos_embed"]


def test_measuring_the_grad_norm_leaves_the_grads_untouched():
    """clip_grad=None returns the global L2 norm (the value of torch's get_total_norm where it exists) and
    steps with the gradients unscaled: SGD at lr 1 moves every weight by exactly its gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))
    model(torch.randn(5, 8)).pow(2).sum().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected = torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())).item()
    reference = (torch.nn.utils.get_total_norm(list(grads.values()))
                 if hasattr(torch.nn.utils, "get_total_norm") else None)

    norm = optimizer_step(model, torch.optim.SGD(model.parameters(), lr=1.0), scaler=None, clip_grad=None)
    assert norm.item() == pytest.approx(expected, rel=1e-6)
    if reference is not None:
        assert torch.equal(norm, reference)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n] - grads[n]), n
        assert p.grad is None
