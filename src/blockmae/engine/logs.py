"""A run's logs: metrics.jsonl and TensorBoard (RunLogger), the sums between log lines (LogWindow), the
progress bar, and the readers of metrics.jsonl used by the registry, the references and the reports."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from blockmae.fileio import output_error, writing


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class LogWindow:
    """Sums over the optimiser steps since the last log line, kept on the device until a sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.grad_norm_sum = torch.zeros((), device=self.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.steps, self.images, self.data_time = 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, data_time: float, images: int) -> None:
        """One optimiser step; `images` counts the global batch (all ranks)."""
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm.float()
        self.bad |= ~torch.isfinite(loss)
        self.steps += 1
        self.images += images
        self.data_time += data_time

    def rates(self) -> dict[str, float]:
        seconds = max(1e-9, time.perf_counter() - self.start)  # measured after the sync: device work included
        return {"img_per_s": self.images / seconds, "data_time": self.data_time / max(1, self.steps)}


class RunLogger:
    """metrics.jsonl (cut back to `resume_bytes` on resume) and TensorBoard events under tb/."""

    def __init__(self, run_dir: Path, step: int, resume_bytes: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        with writing(self.path):
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.truncate(resume_bytes if step else 0)
            self.file = open(self.path, "a")
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step)

    def write(self, record: dict, step: int) -> None:
        line = json.dumps(record) + "\n"
        start = self.file.tell()
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as err:
            with contextlib.suppress(OSError):  # no half line left for the reader (and the resume) to trip on
                self.file.truncate(start)
            raise output_error(err, self.path) from None
        prefix = record["kind"] if record["kind"] in ("epoch", "monitor") else "train"
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        self.tb.flush()

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk was reported already
            self.file.close()
        self.tb.close()


def progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    # Quiet when stderr is not a terminal (CI, log files) and on every rank but 0.
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                disable=not (enabled and sys.stderr.isatty()))


def plain_progress_line(record: dict[str, Any], epoch: int, epochs: int, epoch_step: int, steps_per_epoch: int,
                        eta_seconds: float) -> str:
    """One log interval as a line for a file (SLURM's .out, nohup, CI), where the bar is off: where the run is,
    its loss, lr, speed, the time left and the peak memory (as MAE's MetricLogger prints)."""
    eta = _dt.timedelta(seconds=round(max(0.0, eta_seconds)))
    return (f"epoch {epoch + 1}/{epochs}  step {epoch_step}/{steps_per_epoch}  loss {record['loss']:.4f}  "
            f"lr {record['lr']:.2e}  {record['img_per_s']:.0f} img/s  ETA {eta}  mem {record['memory_mb']:.0f} MB")


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order; only those of `kind` ("step" or "epoch") if given."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def loss_curve(records: list[dict[str, Any]], batch_size: int) -> tuple[list[int], list[float]]:
    """(images seen, loss) at every logged optimiser step of metrics.jsonl records. `batch_size` is the
    run's train.batch_size, the global batch of one optimiser step (not multiplied by ranks again)."""
    steps = [r for r in records if r.get("kind") == "step"]
    return [int(r["step"]) * int(batch_size) for r in steps], [float(r["loss"]) for r in steps]
