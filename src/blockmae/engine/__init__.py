"""Pretraining engine: typed config, training loop, checkpoints, torchrun/DDP support."""

from blockmae.engine.config import PretrainConfig
from blockmae.engine.pretrain import pretrain

__all__ = ["PretrainConfig", "pretrain"]
