"""The pretraining configuration: one typed schema, checked by OmegaConf (see `blockmae.config`).

Defaults are the small-dataset (Tiny-ImageNet, 64 px) recipe documented in docs/training.md:
MAE's optimiser (AdamW, betas (0.9, 0.95), weight decay 0.05, lr = base_lr x batch / 256, linear
warm-up then cosine) with a batch and warm-up sized for 100,000 images instead of 1.28 million.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from blockmae.config import check_numbers
from blockmae.data.augment import INTERPOLATIONS
from blockmae.errors import BlockMAEError
from blockmae.masking import ALIGNS, DEFAULT_ALIGN, FAMILIES, MaskGenerator
from blockmae.models import PRESETS
from blockmae.models.mae import POS_EMBEDS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "mps", "cpu")
LOADERS = ("cached", "torchvision")
# Settings that decide where and how a run executes and what it logs, not what it computes: they may
# differ between a checkpoint and the run continuing it, and they do not enter the default run dir's name.
# Everything else (model, mask, data, optimiser, epochs, batch, accum_steps, precision, seed) changes the
# trajectory and is refused on resume unless listed in run.allow_changes. run.milestones may change for
# epochs not yet run (checked in checkpoint.config_changes).
FREE_KEYS = frozenset({
    "run.dir", "run.output_root", "run.name", "run.resume", "run.registry", "run.allow_changes", "run.log_every",
    "run.ckpt_every_minutes", "run.ckpt_every_steps", "run.recon_images", "run.deterministic",
    "train.device", "train.cpu_threads", "train.compile", "data.root", "data.workers", "data.val_split",
    "monitor.every", "monitor.num_images", "monitor.k", "monitor.temperature",
})
# Splits used for the fixed reconstruction images when `data.val_split` is not set.
DEFAULT_VAL_SPLIT = {"cifar10": "test", "cifar100": "test"}


@dataclass
class ModelConfig:
    """A preset of `blockmae.models.PRESETS` plus overrides; None keeps the preset's value."""

    preset: str = "vit_small"
    img_size: Optional[int] = None  # None: data.image_size
    patch_size: Optional[int] = 8
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    pos_embed: str = "sincos"
    norm_pix_loss: bool = True


@dataclass
class MaskConfig:
    family: str = "block"
    block: int = 2
    ratio: float = 0.75
    align: str = DEFAULT_ALIGN  # free placement; grid and shifted for the ablation (docs/masking.md)


@dataclass
class DataConfig:
    dataset: str = "tiny-imagenet"
    root: Optional[str] = None  # None: the dataset's default cache/root
    split: str = "train"
    val_split: Optional[str] = None  # images for the reconstruction figures; None: "val" ("test" for CIFAR)
    image_size: int = 64
    num_images: Optional[int] = None  # ShapeTex only: size of the generated split
    options: Dict[str, Any] = field(default_factory=dict)  # more load_dataset options (texture_correlation, ...)
    augment: bool = True  # False: images are only normalised (no crop, no flip)
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    interpolation: str = "bilinear"
    # cached: uint8 tensors + batched on-device augmentation; torchvision: ImageFolder + DataLoader over
    # data.root (a <class>/<image> tree too big for memory; sharded over DDP ranks like the cached path)
    loader: str = "cached"
    workers: int = 4  # torchvision loader only


@dataclass
class TrainConfig:
    epochs: int = 800
    batch_size: int = 512  # effective (global) batch: per-rank batch x world size x accum_steps
    accum_steps: int = 1
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    device: str = "auto"
    cpu_threads: Optional[int] = None  # torch CPU threads; None: torch's default (all cores)


@dataclass
class OptimConfig:
    base_lr: float = 1.5e-4
    lr: Optional[float] = None  # None: base_lr x batch_size / 256
    min_lr: float = 0.0
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: Optional[float] = None  # max global grad norm; None: no clipping (the norm is still logged)

    def resolved_lr(self, batch_size: int) -> float:
        return self.lr if self.lr is not None else self.base_lr * batch_size / 256


@dataclass
class RunConfig:
    dir: Optional[str] = None  # None: <output_root>/<name>-<hash of the settings>: the same command resumes
    output_root: str = "outputs"
    name: str = "pretrain"
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20  # optimiser steps between metrics.jsonl lines
    ckpt_every_minutes: float = 10.0  # mid-epoch `last` checkpoints; 0 disables
    ckpt_every_steps: int = 0  # also every N optimiser steps; 0 disables
    milestones: List[int] = field(default_factory=lambda: [20, 50, 200, 400, 800])
    recon_images: int = 8  # validation images in the reconstruction figures; 0 disables the figures
    resume: Optional[str] = None  # a run dir or checkpoint dir; None: resume from run.dir if it holds one
    registry: bool = True  # record the run in <output_root>/registry.sqlite
    # settings that may differ from the checkpoint's on resume although they change the training (keys, or
    # sections such as "optim", or "all"); see FREE_KEYS for those that never need it
    allow_changes: List[str] = field(default_factory=list)


@dataclass
class MonitorConfig:
    """The online monitor (blockmae.evaluation.monitor): k-NN and linear accuracy on held-out images."""

    every: int = 0  # epochs between measurements (and one before training, one at the end); 0 = off
    num_images: int = 1000  # labelled training images for the classifiers, and as many held-out per split
    k: int = 20
    temperature: float = 0.07


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    @property
    def img_size(self) -> int:
        return self.model.img_size or self.data.image_size

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `build_mae(preset, **kwargs)`: the overrides that are set, and the mask."""
        names = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                 "decoder_num_heads", "mlp_ratio", "pos_embed", "norm_pix_loss")
        kwargs = {n: getattr(self.model, n) for n in names if getattr(self.model, n) is not None}
        kwargs.update(img_size=self.img_size, mask_ratio=self.mask.ratio, mask_family=self.mask.family,
                      mask_block=self.mask.block, mask_align=self.mask.align)
        return kwargs

    def val_split(self) -> str:
        return self.data.val_split or DEFAULT_VAL_SPLIT.get(self.data.dataset, "val")

    def validate(self) -> None:
        check_numbers(self)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("train.device", self.train.device, DEVICES)
        _choice("mask.family", self.mask.family, FAMILIES)
        _choice("mask.align", self.mask.align, ALIGNS)
        _choice("model.pos_embed", self.model.pos_embed, POS_EMBEDS)
        _choice("data.loader", self.data.loader, LOADERS)
        _choice("data.interpolation", self.data.interpolation, INTERPOLATIONS)
        _positive("train.epochs", self.train.epochs)
        _positive("train.batch_size", self.train.batch_size)
        _positive("train.accum_steps", self.train.accum_steps)
        _positive("run.log_every", self.run.log_every)
        if self.monitor.every < 0:
            raise BlockMAEError(f"monitor.every must be >= 0 (0 = off), got {self.monitor.every}")
        _positive("monitor.num_images", self.monitor.num_images)
        _positive("monitor.k", self.monitor.k)
        if not self.monitor.temperature > 0:
            raise BlockMAEError(f"monitor.temperature must be > 0, got {self.monitor.temperature}")
        if self.train.cpu_threads is not None:
            _positive("train.cpu_threads", self.train.cpu_threads)
        _positive("data.image_size", self.data.image_size)
        if self.train.batch_size % self.train.accum_steps:
            raise BlockMAEError(f"train.batch_size {self.train.batch_size} is not divisible by train.accum_steps "
                                f"{self.train.accum_steps}; the effective batch must split into equal micro-batches")
        if not 0.0 < self.mask.ratio < 1.0:
            raise BlockMAEError(f"mask.ratio must be in (0, 1), got {self.mask.ratio}")
        if self.mask.block < 1:
            raise BlockMAEError(f"mask.block must be >= 1, got {self.mask.block}")
        if self.mask.family == "random" and self.mask.block != 1:
            raise BlockMAEError(f"mask.family=random masks single patches; set mask.block=1 "
                                f"(got {self.mask.block}) or use mask.family=block")
        _pair("data.crop_scale", self.data.crop_scale)  # ranges are checked by BatchAugment
        _pair("data.crop_ratio", self.data.crop_ratio)
        b1, b2 = _pair("optim.betas", self.optim.betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise BlockMAEError(f"optim.betas must lie in [0, 1), got {self.optim.betas}")
        if self.optim.base_lr <= 0 or (self.optim.lr is not None and self.optim.lr <= 0):
            raise BlockMAEError("optim.base_lr and optim.lr must be positive")
        if self.optim.min_lr < 0 or self.optim.warmup_epochs < 0 or self.optim.weight_decay < 0:
            raise BlockMAEError("optim.min_lr, optim.warmup_epochs and optim.weight_decay must be >= 0")
        if self.optim.clip_grad is not None and self.optim.clip_grad <= 0:
            raise BlockMAEError(f"optim.clip_grad must be positive or null, got {self.optim.clip_grad}")
        if any(m < 1 for m in self.run.milestones):
            raise BlockMAEError(f"run.milestones must be epochs >= 1, got {self.run.milestones}")
        if self.run.ckpt_every_minutes < 0 or self.run.ckpt_every_steps < 0 or self.run.recon_images < 0:
            raise BlockMAEError("run.ckpt_every_minutes, run.ckpt_every_steps and run.recon_images must be >= 0")
        self._validate_geometry()

    def _validate_geometry(self) -> None:
        self.mask_generator()

    def patch_size(self) -> int:
        """model.patch_size, or the preset's when it is null."""
        patch = self.model.patch_size
        if patch is None:
            if self.model.preset not in PRESETS:
                raise BlockMAEError(f"unknown model.preset '{self.model.preset}'; "
                                    f"choose one of {', '.join(sorted(PRESETS))}")
            patch = PRESETS[self.model.preset].get("patch_size", 16)
        if patch < 1 or self.img_size % patch:
            raise BlockMAEError(f"image size {self.img_size} is not a multiple of model.patch_size {patch}")
        return patch

    def mask_generator(self) -> MaskGenerator:
        """The run's mask generator on its patch grid; its errors name the mask.* keys and the geometry."""
        m, patch = self.mask, self.patch_size()
        try:
            return MaskGenerator(self.img_size // patch, m.ratio, family=m.family, block=m.block, align=m.align)
        except BlockMAEError as err:
            raise BlockMAEError(f"mask.family={m.family} mask.block={m.block} mask.ratio={m.ratio} "
                                f"mask.align={m.align} ({self.img_size} px / patch {patch}): {err}") from None


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BlockMAEError(f"{key} must be one of {', '.join(choices)}; got '{value}'")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise BlockMAEError(f"{key} must be >= 1, got {value}")


def _pair(key: str, values: List[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise BlockMAEError(f"{key} must be two numbers [min, max], got {values}")
    return float(values[0]), float(values[1])
