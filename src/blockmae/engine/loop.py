"""What every training loop shares: precision, seeding, and claiming the run dir (lock, rank-0 repair,
checksum-validated resume)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

from blockmae.engine import checkpoint as ckpt
from blockmae.engine import distributed as dist
from blockmae.engine.config import PretrainConfig
from blockmae.engine.environment import run_dir_for
from blockmae.engine.lock import RunLock
from blockmae.errors import BlockMAEError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def claim_run_dir(cfg: PretrainConfig, info: dist.DistInfo) -> tuple[Path, RunLock | None, Path | None]:
    """(run dir, its lock, checkpoint to resume from) on every rank.

    Rank 0 alone locks the run dir, repairs an interrupted checkpoint swap and checks the checkpoints
    (passing over damaged ones, saying so); the other ranks wait for its answer, so no rank renames or
    deletes what another is reading. An error on rank 0 is raised on every rank.
    """
    lock, answer = None, None
    if info.is_main:
        try:
            run_dir = run_dir_for(cfg)
            lock = RunLock(run_dir).acquire()
            where = Path(cfg.run.resume) if cfg.run.resume else run_dir
            found, notes = ckpt.intact_checkpoint(where)
            if cfg.run.resume and found is None:
                raise BlockMAEError(f"run.resume={cfg.run.resume}: no checkpoint there (expected a checkpoint dir "
                                    f"with {ckpt.META}, or a run dir with checkpoints/last)")
            for note in notes:
                print(f"warning: {note}; resuming from {found} instead", file=sys.stderr, flush=True)
            answer = {"run_dir": str(run_dir), "resume": str(found) if found else None}
        except BaseException as err:
            if lock is not None:
                lock.release()
            dist.broadcast_object({"error": str(err)} if isinstance(err, BlockMAEError) else {"error": "rank 0 failed"})
            raise
    answer = dist.broadcast_object(answer)
    if "error" in answer:
        raise BlockMAEError(answer["error"])
    return Path(answer["run_dir"]), lock, Path(answer["resume"]) if answer["resume"] else None
