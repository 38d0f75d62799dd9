"""ProbeConfig: the schema of `configs/linear_probe.yaml` (loaded with blockmae.config.load_config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from blockmae.config import check_numbers
from blockmae.errors import BlockMAEError
from blockmae.models.mae import POOLS

OPTIMIZERS = ("lars", "sgd", "adamw")
PROBE_KINDS = ("linear", "knn", "both")


@dataclass
class EncoderConfig:
    """How to read the frozen encoder; `preset`/`img_size`/`patch_size`/`seed` build checkpoint=random."""

    preset: str = "vit_micro"  # architecture of checkpoint=random (ignored when loading a checkpoint)
    arch_from: Optional[str] = None  # checkpoint=random: copy this checkpoint's architecture (not its weights)
    img_size: int = 32  # input size of checkpoint=random; a loaded checkpoint keeps its own
    patch_size: int = 4  # patch size of checkpoint=random
    pool: str = "cls"  # cls | avg | both (concatenated)
    layer: Optional[int] = None  # features after this encoder block (None: the final normed output)
    seed: int = 0  # init seed of checkpoint=random

    RANGES: ClassVar[dict[str, str]] = {"img_size": ">=1", "patch_size": ">=1", "layer": ">=0", "seed": ">=0"}


@dataclass
class DataConfig:
    """Dataset probed: train split for the head/k-NN bank, eval split for the numbers."""

    dataset: str = "shapetex"  # shapetex | tiny-imagenet | cifar10 | cifar100 | dtd | folder
    root: Optional[str] = None  # dataset root (not needed for shapetex)
    train_split: str = "train"
    eval_split: Optional[str] = None  # None: test for cifar10/cifar100/dtd, val otherwise
    num_images: Optional[int] = None  # images per split (None: all; shapetex: generated, else a class-balanced subset)
    seed: int = 0  # seed of the class-balanced subset of a real dataset (num_images)
    options: Dict[str, Any] = field(default_factory=dict)  # more load_dataset options (texture_correlation, ...)
    batch_size: int = 256  # feature extraction batch
    cache_features: bool = True  # cache extracted features under output_root/feature_cache

    RANGES: ClassVar[dict[str, str]] = {"num_images": ">=1", "seed": ">=0", "batch_size": ">=1"}


EVAL_SPLITS = {"cifar10": "test", "cifar100": "test", "dtd": "test"}


@dataclass
class LinearConfig:
    """MAE's linear-probe head training (BatchNorm without affine + Linear)."""

    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | lars (large batches, MAE's 16384) | adamw; see docs/evaluation.md
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256 (MAE's rule)
    weight_decay: float = 0.0
    momentum: float = 0.9  # lars and sgd
    trust_coeff: float = 0.001  # lars: trust ratio coefficient (MAE's and timm's 0.001)
    warmup_epochs: int = 10
    augment: bool = False  # True: MAE path, encoder forward with augmentation every epoch (slow)
    seed: int = 0

    RANGES: ClassVar[dict[str, str]] = {"epochs": ">=1", "batch_size": ">=2", "base_lr": ">0", "weight_decay": ">=0",
                                        "momentum": "0..1", "trust_coeff": ">0", "warmup_epochs": ">=0", "seed": ">=0"}

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BlockMAEError(f"linear.optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'")
        if self.epochs < 1 or self.batch_size < 2:
            raise BlockMAEError("linear.epochs must be >= 1 and linear.batch_size >= 2 (BatchNorm needs 2 samples)")
        if not self.trust_coeff > 0:
            raise BlockMAEError(f"linear.trust_coeff must be > 0, not {self.trust_coeff}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise BlockMAEError(f"linear.warmup_epochs must be in [0, linear.epochs={self.epochs}]")


@dataclass
class KNNConfig:
    k: int = 20
    temperature: float = 0.07

    RANGES: ClassVar[dict[str, str]] = {"k": ">=1", "temperature": ">0"}


@dataclass
class ProbeConfig:
    """`blockmae probe` / `train/train_linear.py`: linear and/or k-NN probe of a frozen encoder."""

    checkpoint: str = "random"  # a .safetensors file, a checkpoint dir or a run dir; or random (untrained baseline)
    kind: str = "linear"  # linear | knn | both
    name: Optional[str] = None  # run name (default: derived from checkpoint and dataset)
    output_root: str = "outputs"  # registry.sqlite lives here; the run goes to output_root/probes/<run>
    run_dir: Optional[str] = None  # explicit run directory (default: output_root/probes/<name>-<time>)
    device: str = "auto"  # auto | cpu | cuda | mps
    autocast: bool = False  # bf16 autocast for feature extraction
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)

    def validate(self) -> None:
        check_numbers(self)
        if self.kind not in PROBE_KINDS:
            raise BlockMAEError(f"kind must be one of {', '.join(PROBE_KINDS)}, not '{self.kind}'")
        if self.encoder.pool not in POOLS:
            raise BlockMAEError(f"encoder.pool must be one of {', '.join(POOLS)}, not '{self.encoder.pool}'")
        if self.knn.k < 1 or self.knn.temperature <= 0:
            raise BlockMAEError("knn.k must be >= 1 and knn.temperature > 0")
        self.linear.validate()
        if self.data.num_images is not None and self.data.num_images < 1:
            raise BlockMAEError(f"data.num_images must be positive (or null for all images), got {self.data.num_images}")
        if self.data.eval_split is None:
            self.data.eval_split = EVAL_SPLITS.get(self.data.dataset, "val")
