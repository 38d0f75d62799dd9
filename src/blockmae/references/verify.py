"""Checking a reference against its manifest (checksums, sizes, the weights' dtype and architecture, the
numbers its metrics.jsonl recomputes), and what reads a reference through the engine or the models: its
architecture and its loss curve. `blockmae weights verify` runs :func:`verify_reference`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError, safe_open

from blockmae.engine.config import PretrainConfig
from blockmae.engine.logs import loss_curve as curve_of
from blockmae.errors import BlockMAEError
from blockmae.fileio import sha256_file
from blockmae.masking import canonical_mask
from blockmae.models import PRESETS
from blockmae.models.io import FORMAT
from blockmae.references.store import WEIGHTS_DTYPE, Reference, config_sha256, metrics_rows, reference_id


def loss_curve(ref: Reference) -> tuple[list[int], list[float]]:
    """(images seen, loss) at every logged optimiser step of the reference's training run.

    Images seen = step x train.batch_size: the engine's batch_size is the global batch of one optimiser
    step (per-rank batch x ranks x accum_steps), so it is not multiplied by the world size again."""
    return curve_of(metrics_rows(ref.metrics_path), int(ref.manifest["config"]["train"]["batch_size"]))


def _pretrain_config(config: dict[str, Any]) -> Any:
    """The manifest's config as the engine's PretrainConfig (checked by OmegaConf against the schema)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), config))
    except OmegaConfBaseException as err:
        raise BlockMAEError(f"not a pretraining config ({str(err).splitlines()[0]})") from None


def expected_arch(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture (models.mae arch keys) that a pretraining run of `config` builds."""
    cfg = _pretrain_config(config)
    if cfg.model.preset not in PRESETS:
        raise BlockMAEError(f"unknown model.preset {cfg.model.preset!r}")
    overrides = {k: v for k, v in cfg.model_kwargs().items() if v is not None}  # None: the preset's value
    return {**PRESETS[cfg.model.preset], **overrides}


def weights_arch(ref: Reference) -> dict[str, Any]:
    """The architecture recorded in the reference's weights file (what models.factory.load_encoder builds)."""
    header, _ = _weights_header(ref.weights_path)
    if "arch" not in header:
        raise BlockMAEError(f"{ref.weights_path} has no blockmae architecture in its header")
    return dict(json.loads(header["arch"]))


def _weights_header(path: Path) -> tuple[dict[str, str], set[str]]:
    """(safetensors header metadata, the tensors' dtypes) without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {}), {handle.get_slice(k).get_dtype() for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise BlockMAEError(f"not a readable safetensors file ({str(err).splitlines()[0]})") from None


def _architecture_problems(ref: Reference) -> list[str]:
    try:
        header, dtypes = _weights_header(ref.weights_path)
    except BlockMAEError as err:
        return [f"{ref.weights_path.name}: {err}"]
    problems = []
    if dtypes != {"F16"}:
        problems.append(f"{ref.weights_path.name}: tensors are {', '.join(sorted(dtypes)) or 'absent'}, "
                        f"not {WEIGHTS_DTYPE} (F16) only")
    if header.get("format") != FORMAT or "arch" not in header:
        return problems + [f"{ref.weights_path.name}: no blockmae architecture in its header (not written by save_mae)"]
    try:
        arch = json.loads(header["arch"])
        expected = expected_arch(ref.manifest["config"])
    except ValueError:
        return problems + [f"{ref.weights_path.name}: the header's architecture is not valid JSON"]
    except BlockMAEError as err:
        return problems + [f"the manifest's config: {err}"]
    for key, value in expected.items():
        if arch.get(key) != value:
            problems.append(f"{ref.weights_path.name}: architecture has {key}={arch.get(key)!r} but the manifest's "
                            f"config gives {value!r}")
    return problems


def _identity_problems(ref: Reference) -> list[str]:
    """The manifest's block and seed agree with its config (and its id with both)."""
    config = ref.manifest["config"]
    mask, run = config.get("mask", {}), config.get("run", {})
    problems = []
    try:
        family, block = canonical_mask(mask.get("family"), int(mask.get("block")))
    except (TypeError, ValueError):
        return ["the manifest's config has no mask.family and mask.block"]
    if family not in ("random", "block") or block != ref.block:
        problems.append(f"manifest block {ref.block} disagrees with the config's mask ({family}, block {block})")
    if run.get("seed") != ref.seed:
        problems.append(f"manifest seed {ref.seed} disagrees with the config's run.seed {run.get('seed')}")
    if ref.id != reference_id(ref.block, ref.seed):
        problems.append(f"id {ref.id!r} is not {reference_id(ref.block, ref.seed)!r} (block {ref.block}, seed {ref.seed})")
    return problems


def verify_reference(ref: Reference) -> list[str]:
    """What is wrong with `ref` (an empty list: nothing): missing files, checksums or sizes that differ from
    the manifest, weights whose architecture or dtype disagree with it."""
    problems = []
    weights, metrics = ref.manifest["weights"], ref.manifest["metrics_file"]
    if weights.get("dtype") != WEIGHTS_DTYPE:
        problems.append(f"manifest weights.dtype is {weights.get('dtype')!r}, not {WEIGHTS_DTYPE!r}")
    problems += _identity_problems(ref)
    if not ref.weights_path.is_file():
        problems.append(f"{ref.weights_path.name} is missing")
    else:
        size = ref.weights_path.stat().st_size
        if size != weights["bytes"]:
            problems.append(f"{ref.weights_path.name} has {size} bytes, the manifest says {weights['bytes']}")
        if sha256_file(ref.weights_path) != weights["sha256"]:
            problems.append(f"{ref.weights_path.name}: sha256 mismatch with the manifest (damaged or replaced)")
        problems += _architecture_problems(ref)
    if not ref.metrics_path.is_file():
        problems.append(f"{ref.metrics_path.name} is missing")
    elif sha256_file(ref.metrics_path) != metrics["sha256"]:
        problems.append(f"{ref.metrics_path.name}: sha256 mismatch with the manifest (damaged or replaced)")
    else:
        problems += _claim_problems(ref)
    return problems


def _claim_problems(ref: Reference) -> list[str]:
    """The manifest's numbers that metrics.jsonl (checksummed), the weights and the config can recompute:
    final loss, epochs, steps, images seen, parameters, the config's hash. (Its evaluation would need the
    probe rerun.)"""
    try:
        epochs = [r for r in metrics_rows(ref.metrics_path) if r.get("kind") == "epoch"]
    except BlockMAEError as err:
        return [str(err)]
    if not epochs:
        return [f"{ref.metrics_path.name} has no epoch rows to check the manifest's numbers against"]
    last, m = epochs[-1], ref.manifest
    problems = []
    if m.get("final_loss") is not None and not math.isclose(float(m["final_loss"]), float(last.get("loss", "nan")),
                                                             rel_tol=1e-9):
        problems.append(f"manifest final_loss {m['final_loss']} is not the last epoch's loss in "
                        f"{ref.metrics_path.name} ({last.get('loss')})")
    if m.get("epochs") is not None and m["epochs"] != last.get("epoch"):
        problems.append(f"manifest epochs {m['epochs']} is not the last epoch in {ref.metrics_path.name} "
                        f"({last.get('epoch')})")
    if m.get("steps") is not None and m["steps"] != last.get("step"):
        problems.append(f"manifest steps {m['steps']} is not the last step in {ref.metrics_path.name} "
                        f"({last.get('step')})")
    try:
        images = int(last["step"]) * int(m["config"]["train"]["batch_size"])
    except (KeyError, TypeError, ValueError):
        images = None
    if m.get("images_seen") is not None and images is not None and m["images_seen"] != images:
        problems.append(f"manifest images_seen {m['images_seen']} is not steps x train.batch_size = {images} "
                        f"(from {ref.metrics_path.name})")
    claimed = m["weights"].get("parameters")
    if claimed is not None and ref.weights_path.is_file():
        try:
            with safe_open(str(ref.weights_path), framework="pt") as handle:
                counted = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
        except (SafetensorError, OSError, ValueError):
            counted = claimed  # an unreadable file is reported by the architecture check
        if counted != claimed:
            problems.append(f"manifest weights.parameters {claimed:,} is not the {counted:,} values in "
                            f"{ref.weights_path.name}")
    if m.get("config_sha256") is not None and m["config_sha256"] != config_sha256(m["config"]):
        problems.append("manifest config_sha256 does not match its config (the config was edited)")
    return problems


