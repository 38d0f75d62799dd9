"""FinetuneConfig: the schema of `configs/finetune.yaml` (loaded with blockmae.config.load_config).

Defaults are MAE's fine-tuning recipe (He et al. 2022, appendix A.2, table 9; the official repo's
FINETUNE.md) scaled to 64 px datasets of ~100k images: AdamW (betas 0.9/0.999, weight decay 0.05),
lr = base_lr x batch / 256 with layer-wise decay 0.75, 5 warm-up epochs then cosine, drop path 0.1,
RandAugment (9, 0.5), random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1, global pooling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from blockmae.config import check_numbers
from blockmae.engine.config import DEVICES, PRECISIONS, OptimConfig, TrainConfig
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import EVAL_SPLITS
from blockmae.models.factory import RANDOM, is_foreign

POOLS = ("avg", "cls")


@dataclass
class FinetuneModelConfig:
    pool: str = "avg"  # avg: mean of the patch tokens + a fresh fc_norm (MAE's global pool); cls: the cls token
    drop_path: float = 0.1  # stochastic depth rate (timm's drop_path_rate, linear over the blocks)
    train_blocks: Optional[int] = None  # partial fine-tuning: only the last k blocks (+ norms, head); None: all
    # checkpoint=random (the baseline): this architecture, untrained ...
    preset: str = "vit_small"
    img_size: int = 64
    patch_size: int = 8
    arch_from: Optional[str] = None  # ... or that of this checkpoint (its weights are not used)


@dataclass
class FinetuneDataConfig:
    dataset: str = "tiny-imagenet"
    root: Optional[str] = None
    train_split: str = "train"
    eval_split: Optional[str] = None  # None: test for cifar10/cifar100/dtd, val otherwise
    num_images: Optional[int] = None  # shapetex only: images per split
    options: Dict[str, Any] = field(default_factory=dict)  # more load_dataset options
    # timm RandAugment spec (MAE: rand-m9-mstd0.5-inc1); mmax9 clips the noisy magnitude at 9, not 10: at 10
    # timm's increasing posterize keeps 0 bits, which Pillow >= 10 refuses. null: crop + flip only (batched)
    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1-mmax9"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    reprob: float = 0.25  # random erasing probability (pixel mode)
    interpolation: str = "bicubic"
    workers: int = 4  # per-sample PIL augmentation runs in DataLoader workers
    eval_batch_size: int = 256

    RANGES: ClassVar[dict[str, str]] = {"num_images": ">=1", "workers": ">=0", "eval_batch_size": ">=1",
                                        "crop_scale": "0..1", "reprob": "0..1"}


@dataclass
class MixConfig:
    mixup: float = 0.8  # mixup alpha; 0 disables
    cutmix: float = 1.0  # cutmix alpha; 0 disables
    prob: float = 1.0  # probability of mixing a batch
    switch_prob: float = 0.5  # mixup <-> cutmix
    label_smoothing: float = 0.1

    RANGES: ClassVar[dict[str, str]] = {"mixup": ">=0", "cutmix": ">=0", "prob": "0..1", "switch_prob": "0..1"}


@dataclass
class FinetuneTrainConfig(TrainConfig):
    epochs: int = 100
    batch_size: int = 256


@dataclass
class FinetuneOptimConfig(OptimConfig):
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float = 0.75  # lr scale per block from the head down (1.0: none)


@dataclass
class FinetuneRunConfig:
    dir: Optional[str] = None  # None: <output_root>/<name>-<hash of the settings>: the same command resumes
    output_root: str = "outputs"
    name: str = "finetune"
    seed: int = 0
    log_every: int = 20
    ckpt_every_minutes: float = 10.0
    ckpt_every_steps: int = 0
    resume: Optional[str] = None  # a run dir or checkpoint dir; None: resume from run.dir if it holds one
    registry: bool = True


@dataclass
class FinetuneConfig:
    """`blockmae finetune` / `train/train_finetune.py`."""

    checkpoint: str = "random"  # a blockmae checkpoint / run dir, or random (the untrained baseline)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)

    def validate(self) -> None:
        check_numbers(self)
        if self.checkpoint != RANDOM and is_foreign(self.checkpoint):
            raise BlockMAEError(f"checkpoint={self.checkpoint}: fine-tuning reads blockmae checkpoints only, not "
                                f"foreign encoders (timm:, mae:, hf:); probe it with `blockmae probe`, or fine-tune "
                                f"it with timm's own scripts")
        checks = [
            (self.model.pool in POOLS, f"model.pool must be one of {', '.join(POOLS)}, not '{self.model.pool}'"),
            (0.0 <= self.model.drop_path < 1.0, "model.drop_path must be in [0, 1)"),
            (self.model.train_blocks is None or self.model.train_blocks >= 0, "model.train_blocks must be >= 0 or null"),
            (self.train.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}"),
            (self.train.device in DEVICES, f"train.device must be one of {', '.join(DEVICES)}"),
            (self.train.epochs >= 1 and self.train.accum_steps >= 1, "train.epochs and train.accum_steps must be >= 1"),
            (self.train.batch_size >= 2 and self.train.batch_size % (2 * self.train.accum_steps) == 0,
             "train.batch_size must split into accum_steps micro-batches of even size (mixup pairs a batch "
             "with its reverse)"),
            (0.0 < self.optim.layer_decay <= 1.0, "optim.layer_decay must be in (0, 1]"),
            (self.optim.base_lr > 0 and self.optim.warmup_epochs >= 0 and self.optim.weight_decay >= 0,
             "optim.base_lr must be positive, optim.warmup_epochs and optim.weight_decay >= 0"),
            (len(self.optim.betas) == 2 and len(self.data.crop_scale) == 2, "optim.betas and data.crop_scale are pairs"),
            (min(self.mix.mixup, self.mix.cutmix) >= 0 and 0 <= self.mix.prob <= 1
             and 0 <= self.mix.label_smoothing < 1, "mix.mixup/cutmix >= 0, mix.prob in [0, 1], "
             "mix.label_smoothing in [0, 1)"),
            (0.0 <= self.data.reprob <= 1.0, "data.reprob must be in [0, 1]"),
            (self.run.log_every >= 1 and self.run.ckpt_every_steps >= 0, "run.log_every >= 1, run.ckpt_every_steps >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise BlockMAEError(message)
        if self.data.eval_split is None:
            self.data.eval_split = EVAL_SPLITS.get(self.data.dataset, "val")

    @property
    def mixing(self) -> bool:
        return self.mix.prob > 0 and (self.mix.mixup > 0 or self.mix.cutmix > 0)
