"""A diagnostic's encoder (``models.factory.load_encoder``) and probe head: given, reused from the registry,
or trained now (diagnostics/plugin.py says when)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf

from blockmae.config import load_config, to_dict
from blockmae.errors import BlockMAEError
from blockmae.evaluation.cli_probe import run_probe
from blockmae.evaluation.cli_shape_bias import encoder_for_head
from blockmae.evaluation.config import ProbeConfig
from blockmae.evaluation.linear import load_head
from blockmae.models.factory import RANDOM, Encoder, load_encoder
from blockmae.registry import Registry

# Probe settings that do not change the trained head (left out when looking for a probe to reuse).
_PROBE_KEYS_IGNORED = ("name", "run_dir", "output_root", "device", "checkpoint", "weights_hash")
_PROBE_DATA_KEYS_IGNORED = ("batch_size", "cache_features")


@dataclass
class Probe:
    """A linear-probe head and where it came from."""

    head: Any  # LinearProbeHead on the device
    meta: dict[str, Any]  # the head's metadata (dataset, class ids, pool, layer, weights hash, ...)
    run_dir: Path | None
    run_id: str | None
    config: dict[str, Any]  # the probe run's config (ProbeConfig as a dict), {} when unknown
    metrics: dict[str, Any]  # the probe run's metrics (top1 on its eval split, ...)
    origin: str  # "given", "reused" or "trained"

    def describe(self) -> str:
        top1 = self.metrics.get("top1")
        acc = f", top-1 {top1:.4f} on {self.config.get('data', {}).get('dataset', '?')}" if top1 is not None else ""
        return f"probe {self.origin}: {self.run_dir} (run {self.run_id}{acc})"


def pretraining_data(checkpoint: str) -> dict[str, Any] | None:
    """The `data` section of the pretraining run holding `checkpoint` (its config.yaml, or a reference
    folder's manifest.json, which holds the run's resolved config), or None."""
    if checkpoint == RANDOM:
        return None
    path = Path(checkpoint).resolve()
    for folder in [path, *path.parents][:4]:
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))["config"]["data"]
            except (OSError, ValueError, KeyError, TypeError):
                data = None
            return dict(data) if isinstance(data, dict) else None
        config = folder / "config.yaml"
        if config.is_file():
            data = OmegaConf.to_container(OmegaConf.load(config)).get("data")  # type: ignore[union-attr]
            return dict(data) if isinstance(data, dict) else None
    return None


def _reuse_key(config: Mapping[str, Any]) -> str:
    """The probe settings that decide the head (JSON, for comparison)."""
    kept = {k: v for k, v in config.items() if k not in _PROBE_KEYS_IGNORED}
    kept["data"] = {k: v for k, v in dict(kept.get("data", {})).items() if k not in _PROBE_DATA_KEYS_IGNORED}
    return json.dumps(kept, sort_keys=True, default=str)


def find_reusable_probe(registry: Any, weights_hash: str, config: Mapping[str, Any]) -> Any | None:
    """The latest completed probe run for these weights with the same settings and its head on disk."""
    wanted = _reuse_key(config)
    for record in reversed(registry.list_runs(kind="probe", status="completed")):
        if record.config.get("weights_hash") != weights_hash or _reuse_key(record.config) != wanted:
            continue
        if record.run_dir and (Path(record.run_dir) / "head.safetensors").is_file():
            return record
    return None


def probe_config(args: argparse.Namespace, checkpoint: str) -> Any:
    """The ProbeConfig of the standard linear probe of `checkpoint` on the diagnostic's dataset."""
    overrides = [f"checkpoint={checkpoint}", "kind=linear", f"output_root={args.output_root}",
                 f"device={args.device}", f"autocast={bool(args.autocast)}"]
    if checkpoint == RANDOM:
        overrides += [f"encoder.preset={args.preset}", f"encoder.img_size={args.img_size}",
                      f"encoder.patch_size={args.patch_size}", f"encoder.seed={args.init_seed}"]
        if args.arch_from:
            overrides.append(f"encoder.arch_from={args.arch_from}")
    cfg = load_config(ProbeConfig, args.probe_config, overrides + list(args.probe_set))
    explicit = {o.split("=", 1)[0] for o in args.probe_set}
    pretrained = pretraining_data(checkpoint) or {}
    dataset = args.data or pretrained.get("dataset")
    if dataset is None and checkpoint != RANDOM:
        raise BlockMAEError(f"cannot tell which dataset {checkpoint} was pretrained on (no config.yaml beside it); "
                            f"pass --data NAME (and --root DIR)")
    if dataset is not None and "data.dataset" not in explicit:
        cfg.data.dataset = dataset
    if cfg.data.dataset == pretrained.get("dataset"):
        if "data.root" not in explicit and args.root is None:
            cfg.data.root = pretrained.get("root")
        if "data.options" not in explicit and not cfg.data.options:
            cfg.data.options = dict(pretrained.get("options") or {})
    if args.root is not None and "data.root" not in explicit:
        cfg.data.root = args.root
    if cfg.data.dataset != "shapetex":
        cfg.data.num_images = None
    cfg.data.eval_split = None  # validate() sets the dataset's default
    cfg.validate()
    return cfg


def _read_probe_run(run_dir: Path) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    results = run_dir / "results.json"
    if not results.is_file():
        return None, {}, {}
    data = json.loads(results.read_text())
    return data.get("run_id"), dict(data.get("config", {})), dict(data.get("metrics", {}))


def resolve_probe(args: argparse.Namespace, device: torch.device) -> tuple[Encoder, Probe]:
    """The encoder and its probe head: given (--probe), reused from the registry, or trained now."""
    if args.probe:
        head, meta = load_head(args.probe, device)
        encoder = encoder_for_head(meta, args.checkpoint, device)
        probe_dir = Path(args.probe) if Path(args.probe).is_dir() else Path(args.probe).parent
        run_id, config, metrics = _read_probe_run(probe_dir)
        return encoder, Probe(head, meta, probe_dir, run_id, config, metrics, "given")
    if not args.checkpoint:
        raise BlockMAEError("pass --checkpoint PATH (or 'random'), or --probe RUN")
    encoder = load_diagnostic_encoder(args, device)
    cfg = probe_config(args, args.checkpoint)

    registry = Registry(args.output_root)
    record = find_reusable_probe(registry, encoder.weights_hash, to_dict(cfg))
    if record is not None:
        origin, run_dir = "reused", Path(record.run_dir)
    else:
        print(f"training the linear probe of {args.checkpoint} on {cfg.data.dataset} "
              f"({cfg.linear.epochs} epochs; --probe RUN uses an existing one)", file=sys.stderr)
        outcome = run_probe(cfg, encoder=encoder, verbose=False)
        origin, run_dir = "trained", outcome.run_dir
    head, meta = load_head(run_dir, device)
    run_id, config, metrics = _read_probe_run(run_dir)
    return encoder, Probe(head, meta, run_dir, run_id, config, metrics, origin)


def load_diagnostic_encoder(args: argparse.Namespace, device: torch.device) -> Encoder:
    """The encoder --checkpoint names (with --preset/--img-size/--patch-size/--arch-from/--init-seed for random)."""
    if not args.checkpoint:
        raise BlockMAEError("pass --checkpoint PATH (or 'random')")
    return load_encoder(args.checkpoint, device, preset=args.preset, img_size=args.img_size,
                        patch_size=args.patch_size, seed=args.init_seed, arch_from=args.arch_from)
