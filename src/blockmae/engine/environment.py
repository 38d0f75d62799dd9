"""What a run records about where it ran (`env.json`) and where it writes (the run directory)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from blockmae.config import to_dict, to_yaml
from blockmae.engine.config import FREE_KEYS, PretrainConfig
from blockmae.fileio import write_json_atomic, write_text_atomic, writing
from blockmae.masking.stats import mask_stats
from blockmae.registry import config_hash, flatten, git_commit

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


def environment(cfg: Any, device: torch.device, world_size: int, precision: str) -> dict[str, Any]:
    """The facts needed to repeat or explain a run, written to `env.json` (pretraining and fine-tuning; a
    pretraining run also records the statistics of its mask setting)."""
    env = {
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
    }
    if isinstance(cfg, PretrainConfig):
        env["mask_stats"] = mask_record(cfg)
    return env


def mask_record(cfg: PretrainConfig) -> dict[str, Any]:
    """Statistics of the run's own mask setting (docs/masking.md), from MASK_STATS_DRAWS masks (seed 0)."""
    generator = cfg.mask_generator()
    stats = mask_stats(generator, draws=MASK_STATS_DRAWS, seed=0)
    return {"setting": generator.describe(), **dataclasses.asdict(stats),
            "note": f"{MASK_STATS_DRAWS} draws; `blockmae masks --stats` uses 10,000 by default"}


def run_dir_for(cfg: PretrainConfig) -> Path:
    """`run.dir` if set, else `<output_root>/<name>-<hash>`, the hash (8 hex digits) of the settings that
    change the training (all but `FREE_KEYS`): the same command finds the same run dir, and resumes it."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    settings = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in FREE_KEYS and k != "run.milestones"}
    return Path(cfg.run.output_root) / f"{cfg.run.name}-{config_hash(settings)[:8]}"


def write_run_files(run_dir: Path, cfg: Any, device: torch.device, world_size: int, precision: str,
                    resumed_from: Path | None = None, step: int = 0,
                    accepted_changes: dict[str, Any] | None = None) -> None:
    """`config.yaml` (the resolved config) and `env.json` (first start; each resume appended to `resumes`,
    with the trajectory changes the user accepted)."""
    run_dir = Path(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
        env = environment(cfg, device, world_size, precision)
        env_path = run_dir / "env.json"
        if resumed_from is not None and env_path.is_file():
            first = json.loads(env_path.read_text())
            first.setdefault("resumes", []).append(
                {**env, "resumed_from": str(resumed_from), "step": step,
                 "accepted_changes": {k: list(v) for k, v in (accepted_changes or {}).items()}})
            env = first
        write_json_atomic(env_path, env, sort_keys=True)
