"""Training checkpoints: weights (safetensors), training state (weights_only-safe), metadata.

A checkpoint is a directory `{model.safetensors, state.pt, meta.json}`. It is written into
`<name>.tmp`, every file fsynced, then renamed into place, so a crash at any moment leaves either
the old or the new checkpoint whole (the `last` swap goes through `last.old`; see `find_checkpoint`).
`state.pt` holds only tensors and Python primitives and loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from blockmae.engine.config import FREE_KEYS
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, fsync_dir, replace_dir, sha256_file, write_json_atomic, writing
from blockmae.models.io import load_compatible_state, save_mae
from blockmae.registry import flatten

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"  # written last: a directory with meta.json is complete


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def milestone_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def save_checkpoint(directory: Path, model: torch.nn.Module, state: dict, meta: dict,
                    save_weights: Callable[..., Any] | None = None) -> Path:
    """Write the checkpoint `directory` atomically (replacing an older one of the same name).

    `save_weights(model, path, metadata=...)` writes `model.safetensors` (default: models.io.save_mae; the
    fine-tuning engine passes its classifier's writer). meta.json, written last, holds the sha256 of the
    other files, so that a truncated or damaged file is recognised on resume (`checkpoint_problem`). A
    failed write (full disk, ...) leaves no temp files and raises a one-line BlockMAEError; the previous
    checkpoint of that name is untouched.
    """
    save_weights = save_weights or save_mae

    directory = Path(directory)
    parent = directory.parent
    tmp = parent / (directory.name + ".tmp")
    old = parent / (directory.name + ".old")
    try:
        with writing(directory):
            parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_weights(model, tmp / WEIGHTS, metadata={"epoch": meta.get("epoch"), "step": meta.get("step")})
            with atomic_path(tmp / STATE) as state_tmp:
                torch.save(state, state_tmp)
            meta = {**meta, "sha256": {name: sha256_file(tmp / name) for name in (WEIGHTS, STATE)}}
            write_json_atomic(tmp / META, meta, sort_keys=True)
            fsync_dir(tmp)
            # `last.old` (fixed name): find_checkpoint recovers from a crash between the two renames.
            replace_dir(tmp, directory, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (WEIGHTS, STATE, META))


def find_checkpoint(path: str | Path, repair: bool = True) -> Path | None:
    """The checkpoint directory that `path` names: a checkpoint dir, or a run dir (its `last`).

    Recovers from a crash in the middle of replacing `last`: a complete and intact `last.tmp` (the new
    one) or else `last.old` (the previous one) is renamed back to `last`. `repair=False` only looks
    (under DDP only rank 0 repairs; the others wait for it).
    """
    path = Path(path)
    if _complete(path):
        return path
    ckpts = checkpoints_dir(path)
    last = ckpts / "last"
    if _complete(last):
        return last
    if not repair:
        return None
    for candidate in (ckpts / "last.tmp", ckpts / "last.old"):
        if _complete(candidate) and checkpoint_problem(candidate) is None:
            shutil.rmtree(last, ignore_errors=True)
            os.replace(candidate, last)
            return last
    return None


def read_meta(directory: Path) -> dict:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BlockMAEError(f"checkpoint file {path} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise BlockMAEError(f"checkpoint file {path} is not a JSON object")
    return meta


def checkpoint_problem(directory: Path) -> str | None:
    """What is wrong with checkpoint `directory` ('state.pt: checksum mismatch', ...), None if it is intact.

    Checkpoints written before checksums were stored are checked for their files only.
    """
    directory = Path(directory)
    missing = [name for name in (WEIGHTS, STATE, META) if not (directory / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        meta = read_meta(directory)
    except BlockMAEError:
        return f"{META} is unreadable"
    for name, expected in meta.get("sha256", {}).items():
        if sha256_file(directory / name) != expected:
            return f"{name} does not match its checksum (truncated or damaged)"
    return None


def resume_candidates(run_dir: Path) -> list[Path]:
    """`last`, then the milestone snapshots, newest first."""
    ckpts = checkpoints_dir(run_dir)
    milestones = sorted(ckpts.glob("epoch_[0-9]*"), reverse=True) if ckpts.is_dir() else []
    return [ckpts / "last", *(m for m in milestones if m.is_dir() and not m.name.endswith((".tmp", ".old")))]


def intact_checkpoint(path: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from in `path` (a checkpoint dir, or a run dir: `last`, else the newest
    intact milestone) and a note per damaged checkpoint that was passed over.

    BlockMAEError, saying what to delete, when `path` holds checkpoints and none of them is intact.
    """
    path = Path(path)
    found = find_checkpoint(path)
    if found == path:  # a checkpoint dir named directly: that one or nothing
        problem = checkpoint_problem(path)
        if problem:
            raise BlockMAEError(f"checkpoint {path} is damaged: {problem}")
        return path, []
    notes: list[str] = []
    for candidate in resume_candidates(path):
        if not candidate.exists():
            continue
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate, notes
        notes.append(f"{candidate} is damaged ({problem})")
    if notes:
        raise BlockMAEError(f"{'; '.join(notes)}; no intact checkpoint is left to resume from: delete "
                            f"{checkpoints_dir(path)} to start this run again from scratch, or use another run.dir")
    return None, []


def load_state(directory: Path) -> dict:
    path = Path(directory) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # old checkpoints carry no checksum
        raise BlockMAEError(f"checkpoint file {path} is unreadable ({str(err).splitlines()[0]}); resume from "
                            f"another checkpoint (run.resume=...) or delete it") from None


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    path = Path(directory) / WEIGHTS
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:  # old checkpoints carry no checksum
        raise BlockMAEError(f"checkpoint file {path} is unreadable ({err}); resume from another checkpoint "
                            f"(run.resume=...) or delete it") from None
    load_compatible_state(model, weights, source=str(path))


# --- RNG state: everything as tensors / primitives so that weights_only loading works ---

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- compatibility of a checkpoint with the config that wants to continue it ---

ABSENT = "<absent>"


def config_changes(saved: dict, current: dict, epoch: int) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (checkpoint's value, current value)} for the settings that differ and would change the
    training trajectory: all but `FREE_KEYS`, and milestones only where they fall in epochs already run."""
    a, b = flatten(saved), flatten(current)
    changes = {}
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, ABSENT), b.get(key, ABSENT)
        if old == new or key in FREE_KEYS:
            continue
        if key == "run.milestones" and all(m > epoch for m in set(old or []) ^ set(new or [])):
            continue  # snapshots still to come: nothing already run depends on them
        changes[key] = (old, new)
    return changes


def check_architecture(meta: dict, arch: dict, where: Path) -> None:
    """BlockMAEError naming the differences between a checkpoint's architecture and the current model's
    (these can never be accepted: the weights would not fit)."""
    a, b = flatten({"model": meta.get("arch", {})}), flatten({"model": arch})
    problems = [f"{k} {a.get(k, ABSENT)} vs {b.get(k, ABSENT)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise BlockMAEError(f"checkpoint {where} was made with another architecture (checkpoint vs now): {shown}; "
                            f"use another run.dir, or set these back to the checkpoint's values")
