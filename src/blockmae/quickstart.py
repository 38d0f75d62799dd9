"""`blockmae quickstart`: the project's question on ShapeTex, end to end, in minutes on a CPU.

Pretrains one small ViT per masking arm (random 1x1, 2x2 and 4x4 blocks; same images, same epochs),
then for each arm and for a random-init encoder runs the linear probe, the k-NN probe and the ShapeTex
shape-bias test, draws reconstructions and writes `report.md` (blockmae.report). Every run lands in the
registry of the output folder, so `blockmae runs --root DIR` lists them.

Re-running into the same folder resumes: stages whose registry run completed are skipped, an
interrupted pretraining continues from its last checkpoint. A folder holding a quickstart with other
settings, or anything that is not a quickstart, is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from blockmae.config import load_config, to_dict, to_yaml
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.report import write_text_atomic

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
CONFIG_NAME = "quickstart.yaml"
STATE_NAME = "quickstart_state.json"
BASELINE = "random-init"


@dataclass
class QuickstartConfig:
    """Schema of configs/quickstart.yaml. `pretrain` is the engine's schema, shared by every arm."""

    blocks: List[int] = field(default_factory=lambda: [1, 2, 4])
    budget_seconds: Optional[float] = None  # None: pretrain.train.epochs; else epochs fitted to this budget
    reconstruction_images: int = 6
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def validate(self) -> None:
        if not self.blocks or any(b < 1 for b in self.blocks) or len(set(self.blocks)) != len(self.blocks):
            raise BlockMAEError(f"blocks must be distinct block sizes >= 1 (e.g. [1, 2, 4]), got {self.blocks}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise BlockMAEError(f"budget_seconds must be positive or null, got {self.budget_seconds}")
        for block in self.blocks:
            arm_pretrain_config(self.pretrain, block, Path("."), Path(".")).validate()


def arm_name(block: int) -> str:
    return "1x1 (MAE)" if block == 1 else f"{block}x{block} blocks"


def arm_key(block: int) -> str:
    return f"block{block}"


def arm_pretrain_config(base: PretrainConfig, block: int, out: Path, run_dir: Path) -> PretrainConfig:
    """The arm's pretraining config: the shared one with its own mask, run dir and name."""
    cfg = copy.deepcopy(base)
    cfg.mask.family = "random" if block == 1 else "block"
    cfg.mask.block = block
    cfg.run.output_root = str(out)
    cfg.run.dir = str(run_dir)
    cfg.run.name = f"quickstart-{arm_key(block)}"
    return cfg


# ---------------------------------------------------------------------------------------------
# The output folder: refuse foreign content, resume our own


class Stages:
    """Completed stages of a quickstart folder: stage key -> registry run id (quickstart_state.json)."""

    def __init__(self, out: Path, registry: Any) -> None:
        self.path = out / STATE_NAME
        self.registry = registry
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, key: str) -> str | None:
        """The stage's run id if its registry run completed, else None."""
        run_id = self.data.get("runs", {}).get(key)
        if run_id is None:
            return None
        try:
            return run_id if self.registry.get(run_id).status == "completed" else None
        except BlockMAEError:
            return None

    def record(self, key: str, run_id: str) -> None:
        self.data.setdefault("runs", {})[key] = run_id
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def prepare_output(out: Path, cfg: QuickstartConfig) -> bool:
    """Create or check the output folder; True when resuming an earlier quickstart with the same settings."""
    stored = out / CONFIG_NAME
    wanted = to_dict(cfg)
    if stored.is_file():
        from omegaconf import OmegaConf

        previous = OmegaConf.to_container(OmegaConf.load(stored), resolve=True)
        diffs = _differences(previous, wanted)
        if diffs:
            raise BlockMAEError(
                f"{out} holds a quickstart with other settings ({'; '.join(diffs[:3])}); "
                f"use a new --out folder or delete {out} to start over"
            )
        return True
    if out.exists() and any(out.iterdir()):
        raise BlockMAEError(f"{out} exists and is not a quickstart folder (no {CONFIG_NAME}); use a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored, to_yaml(cfg))
    return False


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """One line per stage: `[k/n elapsed] stage: what happened`."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.start = total, 0, time.monotonic()

    def _clock(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def run(self, label: str, fn: Callable[[], str]) -> None:
        self.count += 1
        print(f"[{self.count}/{self.total} {self._clock()}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        summary = fn()
        print(f"[{self.count}/{self.total} {self._clock()}] {label}: {summary} ({time.monotonic() - t0:.0f} s)",
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder (default: outputs/quickstart)")
    parser.add_argument("--config", default=None, help=f"quickstart config (default: {REPO_CONFIG.name} of this repository)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="fit the pretraining epochs to this total budget (default: the config's epochs)")
    parser.add_argument("--seed", type=int, default=None, help="seed of pretraining and probes (default: the config's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. pretrain.train.epochs=12 pretrain.data.num_images=8000")


def load_quickstart_config(args: argparse.Namespace) -> QuickstartConfig:
    path = Path(args.config) if args.config else REPO_CONFIG
    overrides = list(args.overrides)
    if args.budget_seconds is not None:
        overrides.append(f"budget_seconds={args.budget_seconds}")
    if args.seed is not None:
        overrides.append(f"pretrain.run.seed={args.seed}")
    return load_config(QuickstartConfig, path if path.is_file() or args.config else None, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_quickstart_config(args)
    report = run_quickstart(cfg, Path(args.out))
    print(f"report: {report}")
    return 0
