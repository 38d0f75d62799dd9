"""What a run records about where it ran (`env.json`) and where it writes (the run directory)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from blockmae.engine.config import PretrainConfig
from blockmae.masking.stats import mask_stats
from blockmae.registry import git_commit

MASK_STATS_DRAWS = 2_000  # fewer than `blockmae masks --stats` (10,000): start-up stays short

PACKAGES = ("blockmae", "torch", "torchvision", "timm", "numpy", "omegaconf", "safetensors", "tensorboard",
            "matplotlib", "tqdm")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def environment(cfg: PretrainConfig, device: torch.device, world_size: int, precision: str) -> dict[str, Any]:
    """The facts needed to repeat or explain a run, written to `env.json`."""
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device_description(device),
        "precision": precision,
        "world_size": world_size,
        "seed": cfg.run.seed,
        "command": sys.argv,
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "mask_stats": mask_record(cfg),
    }


def mask_record(cfg: PretrainConfig) -> dict[str, Any]:
    """Statistics of the run's own mask setting (docs/masking.md), from MASK_STATS_DRAWS masks (seed 0)."""
    generator = cfg.mask_generator()
    stats = mask_stats(generator, draws=MASK_STATS_DRAWS, seed=0)
    return {"setting": generator.describe(), **dataclasses.asdict(stats),
            "note": f"{MASK_STATS_DRAWS} draws; `blockmae masks --stats` uses 10,000 by default"}


def new_run_dir(cfg: PretrainConfig) -> Path:
    """`run.dir` if set, else a fresh `<output_root>/<name>-<timestamp>`."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.output_root) / f"{cfg.run.name}-{stamp}"
