"""The quickstart's settings (configs/quickstart.yaml, configs/quickstart_gpu.yaml) and its arms."""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from blockmae.config import check_numbers, from_dict, load_config, resolve_config_path, shipped_configs_dir
from blockmae.diagnostics.by_name import diagnostic_arguments, diagnostic_modules
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import ProbeConfig
from blockmae.masking import block_spec, canonical_mask

# Shipped in the package (`--config quickstart` names the same file), so an installed wheel finds them.
CPU_CONFIG = shipped_configs_dir() / "quickstart.yaml"
# On a GPU the quickstart can afford the pretraining that the question needs (docs/quickstart.md); the
# shipped reference encoders were trained with this file.
GPU_CONFIG = shipped_configs_dir() / "quickstart_gpu.yaml"
BASELINE = "random-init"


@dataclass
class QuickstartConfig:
    """Schema of configs/quickstart.yaml. `pretrain` is the engine's schema, shared by every arm."""

    blocks: List[int] = field(default_factory=lambda: [1, 2, 4])
    # Your run: pretrain the arms here too (`--train`). Off, the quickstart is the answer alone; on without
    # references (or with from_scratch) the arms are always trained.
    train: bool = False
    # Seconds your run (its pretraining and evaluation) may take; the pretraining is fitted to it. None:
    # pretrain.train.epochs as given.
    budget_seconds: Optional[float] = None
    reconstruction_images: int = 6
    shape_bias_images: Optional[int] = 1000  # images per ShapeTex test split (cue_conflict, shape_only, texture_only)
    # The answer first: evaluate the shipped reference encoders (blockmae weights list) beside random init.
    references: bool = True
    # Train the arms with the references' own recipe (their manifests' config), no budget, and compare.
    from_scratch: bool = False
    # `blockmae eval NAME` diagnostics run on the answer's encoders: name -> its command-line options
    # (`num_images: 300` -> --num-images 300). A diagnostic added later joins by adding its name here;
    # null (diagnostics=null on the command line) runs none.
    diagnostics: Optional[Dict[str, Any]] = None
    # The seed indices whose encoders (every arm's and random init's) get the diagnostics; null: every seed.
    diagnostics_seeds: Optional[List[int]] = field(default_factory=lambda: [0])
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # evaluation's schema; checkpoint/kind set per arm

    def validate(self) -> None:
        check_numbers(self)
        if not self.blocks or any(b < 1 for b in self.blocks) or len(set(self.blocks)) != len(self.blocks):
            raise BlockMAEError(f"blocks must be distinct block sizes >= 1 (e.g. [1, 2, 4]), got {self.blocks}")
        if self.diagnostics_seeds is not None and any(s < 0 for s in self.diagnostics_seeds):
            raise BlockMAEError(f"diagnostics_seeds must be seed indices >= 0 or null, got {self.diagnostics_seeds}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise BlockMAEError(f"budget_seconds must be positive or null, got {self.budget_seconds}")

        unknown = sorted(set(self.diagnostics or {}) - set(diagnostic_modules()))
        if unknown:
            raise BlockMAEError(f"unknown diagnostics {unknown}; choose among {sorted(diagnostic_modules())}")
        for name, options in (self.diagnostics or {}).items():
            if not isinstance(options, dict):
                raise BlockMAEError(f"diagnostics.{name} must map option names to values, got {options!r}")
            try:  # bad options fail here, before anything runs, not when the diagnostic's turn comes
                diagnostic_arguments(name, options, ["--checkpoint", "random"])
            except BlockMAEError as err:
                raise BlockMAEError(f"diagnostics.{name}: {err}") from None
        for block in self.blocks:
            arm_pretrain_config(self.pretrain, block, Path("."), Path(".")).validate()


def arm_name(block: int) -> str:
    return block_spec(block).arm_name


def mask_phrase(block: int) -> str:
    return block_spec(block).phrase


def arm_key(block: int) -> str:
    return f"block{block}"


def arm_pretrain_config(base: PretrainConfig, block: int, out: Path, run_dir: Path) -> PretrainConfig:
    """The arm's pretraining config: the shared one with its own mask, run dir and name."""
    cfg = copy.deepcopy(base)
    cfg.mask.family, cfg.mask.block = canonical_mask("block", block)
    cfg.run.output_root = str(out)
    cfg.run.dir = str(run_dir)
    cfg.run.name = f"quickstart-{arm_key(block)}"
    return cfg


def default_config_path() -> Path:
    """The shipped quickstart_gpu.yaml where CUDA is available, else quickstart.yaml (the CPU budget)."""
    return GPU_CONFIG if torch.cuda.is_available() else CPU_CONFIG


def load_quickstart_config(args: argparse.Namespace) -> QuickstartConfig:
    """The settings named by the command line (file, --budget-seconds, --seed, --train, --from-scratch,
    overrides)."""
    path = resolve_config_path(args.config or default_config_path(), "quickstart config")
    if not args.config:
        print(f"settings: {path} (pass --config to choose another)", file=sys.stderr, flush=True)
    overrides = list(args.overrides)
    if args.budget_seconds is not None:
        overrides.append(f"budget_seconds={args.budget_seconds}")
    if args.seed is not None:
        overrides.append(f"pretrain.run.seed={args.seed}")
    if getattr(args, "train", False):
        overrides.append("train=true")
    if getattr(args, "from_scratch", False):
        overrides += ["train=true", "from_scratch=true", "budget_seconds=null"]
    return load_config(QuickstartConfig, path, overrides)


def reference_recipe(cfg: QuickstartConfig, manifest_config: dict[str, Any]) -> QuickstartConfig:
    """`cfg` with the pretraining recipe of a reference (its manifest's resolved config): the same sizes,
    optimiser, data and model, with this quickstart's seed and no budget."""
    recipe = copy.deepcopy(manifest_config)
    recipe.setdefault("run", {})["seed"] = cfg.pretrain.run.seed
    out = copy.deepcopy(cfg)
    out.pretrain = from_dict(PretrainConfig, recipe)
    out.budget_seconds = None
    return out
