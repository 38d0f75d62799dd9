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

from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, fsync_dir, replace_dir, write_json_atomic
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
    fine-tuning engine passes its classifier's writer)."""
    from blockmae.models.io import save_mae

    save_weights = save_weights or save_mae

    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / (directory.name + ".tmp")
    old = parent / (directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / WEIGHTS, metadata={"epoch": meta.get("epoch"), "step": meta.get("step")})
    with atomic_path(tmp / STATE) as state_tmp:
        torch.save(state, state_tmp)
    write_json_atomic(tmp / META, meta, sort_keys=True)
    fsync_dir(tmp)
    # `last.old` (fixed name): find_checkpoint recovers from a crash between the two renames.
    replace_dir(tmp, directory, old)
    return directory


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (WEIGHTS, STATE, META))


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory that `path` names: a checkpoint dir, or a run dir (its `last`).

    Recovers from a crash in the middle of replacing `last`: a complete `last.tmp` (the new one)
    or else `last.old` (the previous one) is renamed back to `last`.
    """
    path = Path(path)
    if _complete(path):
        return path
    ckpts = checkpoints_dir(path)
    last = ckpts / "last"
    if _complete(last):
        return last
    for candidate in (ckpts / "last.tmp", ckpts / "last.old"):
        if _complete(candidate):
            shutil.rmtree(last, ignore_errors=True)
            os.replace(candidate, last)
            return last
    return None


def read_meta(directory: Path) -> dict:
    return json.loads((Path(directory) / META).read_text())


def load_state(directory: Path) -> dict:
    return torch.load(Path(directory) / STATE, map_location="cpu", weights_only=True)


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    from blockmae.models.io import load_compatible_state

    path = Path(directory) / WEIGHTS
    load_compatible_state(model, load_file(str(path)), source=str(path))


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

# Config keys that must agree for a resumed run to be the same run (epochs may grow; output paths,
# logging, checkpoint cadence, device and precision may change).
_MUST_MATCH = ("mask", "data.dataset", "data.split", "data.image_size", "data.num_images", "data.options",
               "train.batch_size", "run.seed")


def _mismatches(saved: dict, current: dict, prefix: str) -> list[str]:
    a, b = flatten({prefix: saved}), flatten({prefix: current})
    return [f"{k} {a.get(k, '<absent>')} vs {b.get(k, '<absent>')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def check_compatible(meta: dict, arch: dict, config: dict, where: Path) -> None:
    """BlockMAEError naming the first differences between a checkpoint and the current run."""
    problems = _mismatches(meta.get("arch", {}), arch, "model")
    for key in _MUST_MATCH:
        section, _, leaf = key.partition(".")
        saved = meta.get("config", {}).get(section, {})
        current = config.get(section, {})
        if leaf:
            saved, current = {leaf: saved.get(leaf)}, {leaf: current.get(leaf)}
        problems += _mismatches(saved, current, section)
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise BlockMAEError(f"checkpoint {where} was made with another config (checkpoint vs now): {shown}; "
                            f"use another run.dir, or set these back to the checkpoint's values")
