"""Packaging a finished pretraining run as a reference encoder (`blockmae weights package`): its MAE in
float16 with sorted header metadata (the same run packages to the same bytes), its metrics.jsonl verbatim
and a manifest of what made it, staged under a hidden name and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import torch

from blockmae.config import load_config, to_dict
from blockmae.engine import checkpoint as ckpt
from blockmae.engine.config import PretrainConfig
from blockmae.errors import BlockMAEError
from blockmae.fileio import replace_dir, sha256_file, write_text_atomic, writing
from blockmae.masking import canonical_mask
from blockmae.models.factory import load_encoder
from blockmae.models.io import save_mae
from blockmae.references.store import (
    MANIFEST_NAME, METRICS_NAME, REQUIRED_FILES, SCHEMA, WEIGHTS_DTYPE, WEIGHTS_NAME, Reference, config_sha256,
    load_reference, metrics_rows, plain_file_name,
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BlockMAEError(f"{path} is not a JSON object")
    return data


def _finished_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """checkpoints/last of a complete, intact run (looked at only: the run dir is not repaired or changed)."""
    last = ckpt.checkpoints_dir(run_dir) / "last"
    problem = ckpt.checkpoint_problem(last)
    if problem:
        raise BlockMAEError(f"{last}: {problem}; package a finished pretraining run dir")
    meta = ckpt.read_meta(last)
    if not meta.get("complete"):
        raise BlockMAEError(f"the run in {run_dir} is not finished (epoch {meta.get('epoch')} of "
                            f"{meta.get('config', {}).get('train', {}).get('epochs')}); finish it first")
    return last, meta


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _device_record(env: dict[str, Any]) -> dict[str, Any]:
    device = {**env.get("device", {}), "precision": env.get("precision"), "world_size": env.get("world_size")}
    # /proc/cpuinfo describes the machine packaging now: it is the training CPU only on the training host.
    if device.get("type") == "cpu" and env.get("host") == socket.gethostname():
        model = _cpu_model()
        if model:
            device["cpu_model"] = model
            device["cpu_model_source"] = "/proc/cpuinfo of the training host, read when packaging"
    return device


def _wall_time(epochs: list[dict[str, Any]], record: dict[str, Any] | None) -> tuple[float | None, str]:
    times = [r.get("epoch_time_s") for r in epochs]
    if epochs and all(isinstance(t, (int, float)) for t in times):
        return float(sum(times)), (f"sum of epoch_time_s over the {len(epochs)} epoch rows of metrics.jsonl: the "
                                   "training loop only (no start-up, data generation or checkpoint writing)")
    row = (record or {}).get("row", {})
    if isinstance(row.get("started_at"), (int, float)) and isinstance(row.get("ended_at"), (int, float)):
        return float(row["ended_at"] - row["started_at"]), "run_record.json started_at -> ended_at (whole run)"
    return None, "unknown: metrics.jsonl has no epoch_time_s and there is no run_record.json"


def _check_identity(config: Any, block: int | None, seed: int | None, run_dir: Path) -> tuple[int, int]:
    family, run_block = canonical_mask(config.mask.family, config.mask.block)
    if family not in ("random", "block"):
        raise BlockMAEError(f"the run in {run_dir} masks with mask.family={config.mask.family}; reference encoders "
                            f"are random (1x1) or square-block masking")
    if block is not None and block != run_block:
        raise BlockMAEError(f"--block {block} but the run in {run_dir} was trained with {family} masking, "
                            f"block {run_block}")
    if seed is not None and seed != config.run.seed:
        raise BlockMAEError(f"--seed {seed} but the run in {run_dir} has run.seed={config.run.seed}")
    return run_block, config.run.seed


def write_half_precision(checkpoint: Path, path: Path, metadata: dict[str, Any]) -> int:
    """The checkpoint's MAE in float16 at `path` (save_mae); returns its parameter count."""
    model = load_encoder(checkpoint).mae
    model = model.to(torch.float16)
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise BlockMAEError(f"{checkpoint}: a weight does not fit in float16 (overflow); this run cannot be shipped "
                            f"as a float16 reference")
    save_mae(model, path, metadata=metadata)
    sort_header_metadata(path)
    return sum(p.numel() for p in model.parameters())


def sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place and at the same length.

    safetensors writes the metadata in hash-map order, which changes from one process to the next, so the
    same weights would get another sha256 at each packaging; sorted, the bytes depend on the weights only."""
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # a reordering keeps the length; anything else leaves the file as written
            return
        fh.seek(8)
        fh.write(text.ljust(size, b" "))  # safetensors pads its header with spaces


def package_reference(
    run_dir: str | Path, out_root: str | Path, ref_id: str, command: str, evaluation: dict[str, Any] | None = None,
    *, package_command: list[str] | None = None, block: int | None = None, seed: int | None = None,
    evaluate: Callable[[Path], dict[str, Any]] | None = None,
) -> Reference:
    """Build `out_root/ref_id/` from the finished pretraining run in `run_dir`.

    `command` is the command that trained the run; `block`/`seed`, when given, must match its config.
    `evaluate(weights_path)`, when given, is called on the float16 weights before the manifest is written
    and its result is stored as `evaluation` (in place of the dict passed). The folder is built beside its
    target under a hidden name, manifest last, then renamed into place: an earlier reference of that id
    stays whole until the new one is complete."""
    run_dir, out_root = Path(run_dir), Path(out_root)
    if not plain_file_name(ref_id) or ref_id.startswith("."):
        raise BlockMAEError(f"reference id {ref_id!r} must be a plain folder name")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise BlockMAEError(f"{run_dir} is not a pretraining run dir: {', '.join(missing)} missing")
    config = load_config(PretrainConfig, run_dir / "config.yaml")
    run_block, run_seed = _check_identity(config, block, seed, run_dir)
    last, meta = _finished_checkpoint(run_dir)
    env = _read_json(run_dir / "env.json")
    rows = metrics_rows(run_dir / METRICS_NAME)
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    steps = [r for r in rows if r.get("kind") == "step"]
    if not epochs:
        raise BlockMAEError(f"{run_dir / METRICS_NAME} has no epoch rows; is the run finished?")
    record_path = run_dir / "run_record.json"
    record = _read_json(record_path) if record_path.is_file() else None
    wall_time, wall_note = _wall_time(epochs, record)
    batch = config.train.batch_size
    images_seen = meta.get("images_seen", steps[-1]["step"] * batch if steps else None)
    packages = env.get("packages", {})

    target = out_root / ref_id
    # Hidden (list_references passes over it) and per process (two packagings of one id do not mix).
    staging = out_root / f".{ref_id}.staging-{os.getpid()}"
    try:
        with writing(target):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            weights_file = staging / WEIGHTS_NAME
            parameters = write_half_precision(last, weights_file, {"reference": ref_id, "epoch": meta.get("epoch"),
                                                                   "step": meta.get("step")})
            shutil.copyfile(run_dir / METRICS_NAME, staging / METRICS_NAME)
        if evaluate is not None:
            evaluation = evaluate(weights_file)
        manifest = {
            "schema": SCHEMA,
            "id": ref_id,
            "block": run_block,
            "seed": run_seed,
            "mask": {"family": config.mask.family, "block": config.mask.block, "ratio": config.mask.ratio,
                     "align": config.mask.align},
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(weights_file),
                        "bytes": weights_file.stat().st_size, "dtype": WEIGHTS_DTYPE, "parameters": parameters},
            "metrics_file": {"file": METRICS_NAME, "sha256": sha256_file(staging / METRICS_NAME)},
            "config": to_dict(config),
            "config_sha256": config_sha256(to_dict(config)),
            "command": command,
            "env_command": env.get("command"),
            "package_command": package_command,
            "git_commit": env.get("git_commit"),
            "versions": {"python": env.get("python"),
                         **{name: packages.get(name) for name in ("torch", "torchvision", "timm", "blockmae")}},
            "device": _device_record(env),
            "trained_on": env.get("device", {}).get("type"),
            "run_id": (record or {}).get("row", {}).get("id"),
            "images_seen": images_seen,
            "images_seen_note": "optimiser steps x train.batch_size (the global batch), from checkpoints/last/meta.json",
            "steps": meta.get("step"),
            "epochs": meta.get("epoch"),
            "final_loss": epochs[-1]["loss"],
            "final_loss_note": "mean training loss of the last epoch (its epoch row in metrics.jsonl)",
            "wall_time_s": wall_time,
            "wall_time_note": wall_note,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trained_at": env.get("started_at"),
            "resumes": len(env.get("resumes", [])),  # env.json's device and command are of the first start
            "evaluation": evaluation,
        }
        if evaluation is not None and not isinstance(evaluation, dict):
            raise BlockMAEError(f"the evaluation must be a mapping of results, got {type(evaluation).__name__}")
        try:
            text = json.dumps(manifest, indent=2)
        except (TypeError, ValueError) as err:
            raise BlockMAEError(f"the manifest of {ref_id} is not JSON-serialisable ({err})") from None
        with writing(target):
            write_text_atomic(staging / MANIFEST_NAME, text + "\n")  # last: a folder with a manifest is complete
            replace_dir(staging, target, out_root / f".{ref_id}.old")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_reference(target)
