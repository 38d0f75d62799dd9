"""torchrun / DistributedDataParallel support: one process per device, rank 0 writes.

Launch with `torchrun --nproc_per_node G -m blockmae pretrain ...`; torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which is how a distributed run is detected. Backend: NCCL
on CUDA, gloo otherwise.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from blockmae.data.loader import rank_rows
from blockmae.errors import BlockMAEError, ReportedError, error_line

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> DistInfo:
    """The rank layout torchrun put in the environment (a single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(preference: str, info: DistInfo | None = None, key: str = "train.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; under torchrun each rank takes cuda:LOCAL_RANK.

    `key` names the setting in error messages (the probes call it `device`).
    """
    info = info or DistInfo()
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise BlockMAEError(f"{key}=cuda but no CUDA device is available; use {key}=auto or cpu")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    if preference == "mps" and not torch.backends.mps.is_available():
        raise BlockMAEError(f"{key}=mps but MPS is not available; use {key}=auto or cpu")
    try:
        return torch.device(preference)
    except RuntimeError:
        raise BlockMAEError(f"unknown {key} '{preference}'; use auto, cpu, cuda or mps") from None


def init_distributed(info: DistInfo, device: torch.device) -> None:
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); a no-op in a single process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of `obj` on every rank (e.g. a run directory named with a timestamp)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_first(fn: Callable[[], T], info: "DistInfo") -> T:
    """`fn()` on rank 0, then on the other ranks (e.g. loading a dataset whose cache rank 0 builds and the
    others then read, instead of every rank building it and swapping the folder). An error on rank 0 is
    raised on every rank, the others not running `fn`."""
    if not info.enabled:
        return fn()
    if info.is_main:
        try:
            result = fn()
        except BaseException as err:
            tell_other_ranks(err)
            raise
        broadcast_object({})
        return result
    hear_from_main(broadcast_object(None))
    return fn()


def tell_other_ranks(err: BaseException) -> None:
    """Rank 0, failing: send `err`'s message to the ranks waiting for its answer (`hear_from_main`), then wait
    until each has printed it, since torchrun stops every worker as soon as rank 0 exits."""
    broadcast_object({"error": str(err) if isinstance(err, BlockMAEError) else "rank 0 failed"})
    barrier()


def hear_from_main(answer: dict) -> None:
    """The other ranks: raise rank 0's error (`tell_other_ranks`) if `answer` carries one, printed here first."""
    if "error" in answer:
        print(error_line(answer["error"]), file=sys.stderr, flush=True)
        barrier()
        raise ReportedError(answer["error"])


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on some rank (one one-number all-reduce; `flag` itself in a single process)."""
    if not dist.is_initialized():
        return flag
    return all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    if not info.enabled:
        return model

    device_ids = [device.index] if device.type == "cuda" else None
    # Buffers (rotary tables) are fixed: synced once at start, not before every forward.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        no_buffer_sync = {"forward_sync_buffers": False}
    else:  # torch < 2.14
        no_buffer_sync = {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)


def rows_of_rank(batch_size: int, info: DistInfo) -> slice:
    """Which rows of a global (all-rank) batch belong to this rank: the loaders' rule (rank_rows)."""
    return rank_rows(batch_size, info.rank, info.world_size)
