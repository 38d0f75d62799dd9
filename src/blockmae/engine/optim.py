"""MAE's optimiser and schedule, from timm's building blocks.

AdamW with weight decay on weight matrices only (biases, norms, cls/mask tokens and position
embeddings excluded), and a per-iteration linear warm-up from 0 followed by a cosine decay to
`min_lr` (timm's CosineLRScheduler stepped per optimiser update).
"""

from __future__ import annotations

import fnmatch
import logging
import math

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from blockmae.engine.config import OptimConfig

# Tokens and position tables are 3-D parameters, so the 1-D rule alone would decay them.
NO_DECAY_PATTERNS = ("*pos_embed*", "*cls_token*", "*mask_token*", "*dist_token*", "*reg_token*")


def no_weight_decay_names(model: torch.nn.Module) -> list[str]:
    """The model's parameter names that match its declared `no_weight_decay()` or NO_DECAY_PATTERNS.

    Resolved to exact names here because timm before 1.0.21 compares the list by equality only: a
    wildcard passed through would silently decay the tokens and position tables."""
    declared = getattr(model, "no_weight_decay", None)
    patterns = (set(declared()) if callable(declared) else set()) | set(NO_DECAY_PATTERNS)
    return sorted(name for name, _ in model.named_parameters()
                  if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns))


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float, fused: bool = False) -> torch.optim.AdamW:
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=no_weight_decay_names(model))
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> CosineLRScheduler:
    """Stepped with `step_update(step)` where step counts optimiser updates from 0."""
    total = steps_per_epoch * epochs
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    cosine = logging.getLogger("timm.scheduler.cosine_lr")
    level = cosine.level
    if total - warmup <= 1:  # all warm-up (short test runs): timm warns that the cosine does nothing
        cosine.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
                                 warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    finally:
        cosine.setLevel(level)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   clip_grad: float | None) -> torch.Tensor:
    """Unscale (fp16), clip to `clip_grad` (None: only measure), step, zero the gradients; returns the global
    grad norm on the device (no sync)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    # An infinite max norm scales by exactly 1, so "only measure" is the clipping call itself: the same norm
    # as torch.nn.utils.get_total_norm, which needs torch >= 2.6.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, math.inf if clip_grad is None else clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
