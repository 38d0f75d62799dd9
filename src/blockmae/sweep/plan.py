"""What a sweep will cost, before it runs: images to process per arm and, where this machine has
pretrained the same model at the same image size before (completed runs in a registry), the time at
the rate those runs logged."""

from __future__ import annotations

import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from blockmae.data.shapetex import DEFAULT_NUM_IMAGES
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.registry import DB_NAME, Registry
from blockmae.sweep.spec import Arm, SweepSpec, pretrain_config
from blockmae.text import table

# Train-split sizes of the datasets that are read, not generated (docs/data.md).
TRAIN_IMAGES = {"tiny-imagenet": 100_000, "cifar10": 50_000, "cifar100": 50_000}


def train_images(cfg: PretrainConfig) -> int | None:
    """Images in one epoch of `cfg`'s pretraining set (None: a folder dataset, not known before reading it)."""
    if cfg.data.dataset == "shapetex":
        return cfg.data.num_images or DEFAULT_NUM_IMAGES.get(cfg.data.split)
    if cfg.data.split != "train":
        return None
    return TRAIN_IMAGES.get(cfg.data.dataset)


def model_signature(cfg: PretrainConfig) -> tuple[Any, ...]:
    """What decides the pretraining speed of a config on a given machine (the mask ratio too: the encoder
    sees only the visible patches)."""
    m = cfg.model
    return (m.preset, m.patch_size, cfg.img_size, m.embed_dim, m.depth, m.decoder_embed_dim, m.decoder_depth,
            cfg.mask.ratio, cfg.train.precision)


@dataclass
class Rate:
    img_per_s: float
    runs: int


def measured_rates(roots: Sequence[Path]) -> dict[tuple[Any, ...], Rate]:
    """Median logged img/s of the completed pretraining runs of this host in the registries of `roots`."""
    speeds: dict[tuple[Any, ...], list[float]] = {}
    host = socket.gethostname()
    for root in roots:
        if not (Path(root) / DB_NAME).is_file():
            continue
        try:
            records = Registry(root).list_runs(kind="pretrain", status="completed")
        except BlockMAEError:
            continue  # an unreadable registry only costs us its measurements
        for rec in records:
            ips = rec.metrics.get("img_per_s")
            if rec.host != host or not ips:
                continue
            try:
                cfg = pretrain_config(rec.config)
            except BlockMAEError:
                continue
            speeds.setdefault(model_signature(cfg), []).append(float(ips))
    return {k: Rate(statistics.median(v), len(v)) for k, v in speeds.items()}


@dataclass
class ArmCost:
    arm: Arm
    images: int | None  # images processed by its pretraining run(s)
    seconds: float | None
    rate: Rate | None


def arm_costs(spec: SweepSpec, rates: dict[tuple[Any, ...], Rate]) -> list[ArmCost]:
    out = []
    for arm in spec.arms():
        per_run = [(train_images(cfg), cfg.train.epochs) for cfg in arm.configs.values()]
        images = None if any(n is None for n, _ in per_run) else sum(n * e for n, e in per_run)  # type: ignore[operator]
        rate = rates.get(model_signature(next(iter(arm.configs.values()))))
        seconds = images / rate.img_per_s if images is not None and rate is not None else None
        out.append(ArmCost(arm, images, seconds, rate))
    return out


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_images(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def format_plan(spec: SweepSpec, rates: dict[tuple[Any, ...], Rate], statuses: dict[str, str] | None = None) -> str:
    """The arms table, the evaluations and the cost estimate, as printed by `blockmae sweep plan`."""
    costs = arm_costs(spec, rates)
    lines = [f"sweep {spec.name}" + (f": {spec.title}" if spec.title else "") + f"  ({spec.path})",
             f"base {spec.base}; ablated: {', '.join(spec.ablated()) or '-'}; seeds {spec.seeds}; "
             f"baseline {spec.baseline_arm() or '-'}"]
    if spec.notes:
        lines += ["notes: " + " ".join(spec.notes.split())]
    header = ["arm", "seed", "hash", *spec.ablated(), "epochs", "images", "time"] + (["status"] if statuses else [])
    rows = []
    for cost in costs:
        arm = cost.arm
        cfg = arm.configs[max(arm.configs)]
        rows.append([arm.name, arm.seed, arm.hash, *[_show(arm.values.get(k)) for k in spec.ablated()],
                     "+".join(str(e) for e in sorted(arm.configs)) if len(arm.configs) > 1 else cfg.train.epochs,
                     format_images(cost.images) if cost.images is not None else "?",
                     format_seconds(cost.seconds) if cost.seconds is not None else "?"]
                    + ([statuses.get(arm.key, "planned")] if statuses else []))
    lines += ["", table(header, rows), ""]
    first = next(iter(spec.arms()))
    milestones = spec.milestones_of(first)
    evals = ", ".join(e.label + (f" ({e.name})" if e.label != e.name else "") + (f" on {e.dataset}" if e.dataset else "")
                      for e in spec.evaluations) or "none"
    lines.append(f"evaluations at epochs {milestones}: {evals} -> "
                 f"{len(spec.arms()) * len(milestones) * len(spec.evaluations)} evaluation runs (not in the time)")
    if spec.milestone_mode == "snapshots" and len(milestones) > 1:
        final = max(milestones)
        lines.append(f"milestone_mode snapshots: the epoch-{milestones[0]} numbers are a snapshot of a {final}-epoch "
                     f"run (its learning rate still high on the cosine schedule), not a {milestones[0]}-epoch run; "
                     f"use milestone_mode: separate for runs of each length")
    elif spec.milestone_mode == "separate":
        lines.append(f"milestone_mode separate: one full run per length {sorted(first.configs)} (each its own "
                     f"warm-up and cosine schedule)")
        short = [m for m in first.configs if first.configs[m].optim.warmup_epochs >= m]
        if short:
            lines.append(f"warning: the runs of {short} epochs are all warm-up (optim.warmup_epochs "
                         f"{first.configs[short[0]].optim.warmup_epochs})")
    known = [c for c in costs if c.images is not None]
    total_images = sum(c.images for c in known)  # type: ignore[misc]
    timed = [c for c in costs if c.seconds is not None]
    summary = f"cost: {len(costs)} pretraining arm(s), {format_images(total_images)} images to process"
    if len(known) < len(costs):
        summary += f" (+ {len(costs) - len(known)} arm(s) on a dataset of unknown size)"
    if timed:
        summary += f"; {format_seconds(sum(c.seconds for c in timed))} of pretraining one arm at a time at the rates " \
                   f"measured on {socket.gethostname()}"  # type: ignore[misc]
        if len(timed) < len(costs):
            summary += f" ({len(costs) - len(timed)} arm(s) without a measured rate)"
        used = {id(c.rate): c.rate for c in timed}
        summary += " [" + ", ".join(f"{r.img_per_s:.0f} img/s from {r.runs} run(s)" for r in used.values()) + "]"
    else:
        summary += f"; no measured rate on {socket.gethostname()} for these models (time unknown: a completed " \
                   f"pretraining of the same model and image size here gives one)"
    lines.append(summary)
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)
