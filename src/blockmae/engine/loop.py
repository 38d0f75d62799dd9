"""The training loop that pretraining and fine-tuning share.

`TrainingLoop` owns everything about a run but its step and its end-of-epoch work: claiming the run dir
(its lock; rank 0 alone repairs an interrupted checkpoint swap and picks an intact, checksum-validated
checkpoint to resume from), the position (epoch, optimiser steps into it, steps and images so far), gradient
accumulation with DDP's no_sync and AMP's scaler, signals, the stop/checkpoint agreement (one all-reduce per
log line), checkpoint cadence and the logs (metrics.jsonl, TensorBoard, the bar on a terminal, a plain line
per log interval elsewhere).

A subclass supplies `_setup` (data as `self.loader`, model, optimiser, then `_start_position()` and
`_wrap_model()`), `_forward` (the loss of one micro-batch), `end_of_epoch` (evaluations and monitors,
adding their numbers to the epoch's metrics line) and, where it needs them, `_check_resume`,
`_extra_state`, `_restore_extra` and `after_epoch_saved`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from blockmae.config import to_dict
from blockmae.engine import checkpoint as ckpt
from blockmae.engine import distributed as dist
from blockmae.engine.environment import run_dir_for, write_run_files
from blockmae.lock import RunLock
from blockmae.engine.logs import LogWindow, RunLogger, memory_mb, plain_progress_line, progress_bar
from blockmae.engine.optim import build_scheduler, optimizer_step
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


@contextlib.contextmanager
def started(loop: type[TrainingLoop], cfg: Any, **options: Any) -> Iterator[TrainingLoop]:
    """This process's run of `loop(cfg, info, device, **options)` (one rank under torchrun, or alone), its run
    dir claimed; the lock and the process group are given back however the run ends."""
    info = dist.torchrun_env()
    device = dist.resolve_device(cfg.train.device, info)
    dist.init_distributed(info, device)
    trainer = None
    try:
        trainer = loop(cfg, info, device, **options)
        yield trainer
    finally:
        if trainer is not None:
            trainer.release()
        dist.cleanup()


class NonFiniteLossError(BlockMAEError):
    """The loss became NaN or infinite; the last checkpoint on disk is still the last good one."""


def claim_run_dir(cfg: Any, info: dist.DistInfo) -> tuple[Path, RunLock | None, Path | None]:
    """(run dir, its lock, checkpoint to resume from) on every rank.

    Rank 0 alone locks the run dir, repairs an interrupted checkpoint swap and checks the checkpoints of
    run.resume or else the run dir (passing over damaged ones, saying so); the other ranks wait for its
    answer, so no rank renames or deletes what another is reading. An error on rank 0 is raised on every rank.
    """
    lock, answer = None, None
    if info.is_main:
        try:
            run_dir = run_dir_for(cfg)
            lock = RunLock(run_dir).acquire()
            resume = cfg.run.resume
            where = Path(resume) if resume else run_dir
            found, notes = ckpt.intact_checkpoint(where)
            if resume and found is None:
                raise BlockMAEError(f"run.resume={resume}: no checkpoint there (expected a checkpoint dir "
                                    f"with {ckpt.META}, or a run dir with checkpoints/last)")
            for note in notes:
                print(f"warning: {note}; resuming from {found} instead", file=sys.stderr, flush=True)
            answer = {"run_dir": str(run_dir), "resume": str(found) if found else None}
        except BaseException as err:
            if lock is not None:
                lock.release()
            dist.tell_other_ranks(err)
            raise
    answer = dist.broadcast_object(answer)
    dist.hear_from_main(answer)
    return Path(answer["run_dir"]), lock, Path(answer["resume"]) if answer["resume"] else None


class TrainingLoop:
    """One training run (one process of it under torchrun); see the module's docstring for the division of work."""

    kind = "train"  # meta.json's "kind"
    # micro-batches of even size (mixup pairs a batch with its reverse)
    even_micro_batches = False
    # writes model.safetensors of a checkpoint (None: models.io.save_mae)
    save_weights: Callable[..., Any] | None = None

    def __init__(self, cfg: Any, info: dist.DistInfo, device: torch.device) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.precision = resolve_precision(cfg.train.precision, device)
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        accum, world = cfg.train.accum_steps, info.world_size
        micro, rest = divmod(cfg.train.batch_size, accum * world)
        if rest or (self.even_micro_batches and micro % 2):
            even = " of even size" if self.even_micro_batches else ""
            raise BlockMAEError(f"train.batch_size {cfg.train.batch_size} must split into accum_steps x ranks = "
                                f"{accum} x {world} micro-batches{even}; the global batch must split evenly")
        self.micro_batch = micro  # per rank, per forward
        self.autocast = torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
                                       enabled=self.precision in AUTOCAST_DTYPES)
        self.accepted_changes: dict[str, tuple[Any, Any]] = {}
        self.run_dir, self.lock, self.resume_from = claim_run_dir(cfg, info)
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the run dir's lock (rank 0); idempotent."""
        if self.lock is not None:
            self.lock.release()

    # ---- what a subclass supplies ----------------------------------------------------------------

    def _setup(self) -> None:
        raise NotImplementedError

    def _forward(self, images: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        """The loss of micro-batch `micro` of the current optimiser step (self.step), under self.autocast."""
        raise NotImplementedError

    def end_of_epoch(self, record: dict[str, Any]) -> None:
        """Work at the end of an epoch, before its metrics line and its `last` checkpoint (evaluations,
        monitors): add numbers to `record`, the epoch's line. Runs on every rank (self.epoch counts it done)."""

    def after_epoch_saved(self) -> None:
        """Work once `last` holds the finished epoch (milestone checkpoints, figures)."""

    def _check_resume(self, meta: dict, where: Path) -> None:
        """Refuse (BlockMAEError) a checkpoint made with settings this run may not continue."""

    def _extra_state(self) -> dict[str, Any]:
        """The subclass's part of state.pt."""
        return {}

    def _restore_extra(self, state: dict[str, Any]) -> None:
        """Take back what `_extra_state` saved."""

    def _details(self) -> str:
        """The end of the 'run dir: ...' line."""
        return f"lr {self.lr:.3g}"

    # ---- setup helpers ---------------------------------------------------------------------------

    def _count_steps(self, split: str) -> int:
        """Optimiser steps per epoch of self.loader; BlockMAEError when `split` is too small for one."""
        accum = self.cfg.train.accum_steps
        steps = len(self.loader) // accum
        if steps < 1:
            raise BlockMAEError(f"{split} has fewer than accum_steps = {accum} batches of {self.micro_batch}; "
                                f"lower train.batch_size")
        return steps

    def _start_position(self) -> dict | None:
        """Scheduler, scaler and position: the start, or the checkpoint to resume from (returns its state)."""
        cfg = self.cfg
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        # The position in global terms: epochs done, optimiser steps into this epoch, steps and images so far.
        self.epoch, self.epoch_step, self.step, self.images_seen = 0, 0, 0, 0
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        self.metrics_bytes = 0
        return self._load(self.resume_from) if self.resume_from is not None else None

    def _wrap_model(self) -> None:
        self.train_model: torch.nn.Module = dist.wrap_ddp(self.model, self.device, self.info)
        if self.cfg.train.compile:
            self.train_model = torch.compile(self.train_model)

    def _load(self, where: Path) -> dict:
        """Restore weights, optimiser and position from checkpoint `where`; returns its state."""
        meta = ckpt.read_meta(where)
        self._check_resume(meta, where)
        saved = meta.get("config", {})
        ckpt.load_weights(where, self.model)
        state = ckpt.load_state(where)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        saved_batch = saved.get("train", {}).get("batch_size", self.cfg.train.batch_size)
        if "epoch_step" in state:
            epoch_step, images = state["epoch_step"], state["images_seen"]
        else:  # checkpoints before 2026-12 counted micro-batches
            epoch_step = state["batch"] // saved.get("train", {}).get("accum_steps", 1)
            images = state["step"] * saved_batch
        # Global terms: the images into this epoch stay the same if an accepted change resized the batch.
        epoch_step = min(epoch_step * saved_batch // self.cfg.train.batch_size, self.steps_per_epoch)
        self.epoch, self.epoch_step, self.images_seen = state["epoch"], epoch_step, images
        self.step = self.epoch * self.steps_per_epoch + self.epoch_step  # == the saved step when unchanged
        self.epoch_stats = dict(state["epoch_stats"])
        self._restore_extra(state)
        # Metrics logged after this checkpoint will be logged again: cut them off.
        same_run = Path(where).resolve().parent.parent == self.run_dir.resolve()
        self.metrics_bytes = meta.get("metrics_bytes", 0) if same_run else 0
        if self.info.is_main and self.epoch < self.cfg.train.epochs:
            print(f"resuming {self.run_dir} from {self._position()}; checkpoint {where}", flush=True)
        return state

    def _position(self) -> str:
        """'epoch 2, step 13 (5 of 8 steps into the epoch)', with the epoch counted from 1 as the bar does."""
        where = ("the start of the epoch" if self.epoch_step == 0 else
                 f"{self.epoch_step} of {self.steps_per_epoch} steps into the epoch")
        return f"epoch {self.epoch + 1}, step {self.step} ({where})"

    # ---- one optimiser step ----------------------------------------------------------------------

    def _train_step(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Forward/backward over accum_steps micro-batches, then one optimiser step; returns (loss, grad_norm,
        data_time) with the loss and grad norm left on the device (no sync)."""
        accum = self.cfg.train.accum_steps
        loss_sum = torch.zeros((), device=self.device)
        data_time = 0.0
        self.scheduler.step_update(self.step)
        for m in range(accum):
            t0 = time.perf_counter()
            images, labels = next(batches)
            data_time += time.perf_counter() - t0
            sync = contextlib.nullcontext()
            if self.info.enabled and m < accum - 1:
                sync = self._ddp().no_sync()  # all-reduce gradients once, on the last micro-batch
            with sync:
                loss = self._forward(images, labels, m)
                scaled = loss.float() / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach().float()
        grad_norm = optimizer_step(self.model, self.optimizer, self.scaler, self.cfg.optim.clip_grad)
        self.step += 1
        self.epoch_step += 1
        self.images_seen += self.cfg.train.batch_size
        return loss_sum / accum, grad_norm, data_time

    def _ddp(self) -> Any:
        model = self.train_model
        return getattr(model, "_orig_mod", model)  # under torch.compile the DDP wrapper is inside

    # ---- the loop --------------------------------------------------------------------------------

    def before_epochs(self) -> None:
        """Work once before the first epoch of this process (rank 0's figure images, ...)."""

    def run(self) -> Path:
        cfg, main = self.cfg, self.info.is_main
        if self.epoch >= cfg.train.epochs:
            if main:
                print(f"run {self.run_dir} is already complete ({self.epoch} epochs); nothing to do", flush=True)
            return self.run_dir
        self.logger = RunLogger(self.run_dir, self.step, self.metrics_bytes) if main else None
        if main:
            write_run_files(self.run_dir, cfg, self.device, self.info.world_size, self.precision, self.resume_from,
                            self.step, self.accepted_changes)
            if self.accepted_changes:
                self.logger.write({"kind": "resume", "epoch": self.epoch, "step": self.step,
                                   "changes": {k: list(v) for k, v in self.accepted_changes.items()}}, self.step)
            print(f"run dir: {self.run_dir}  ({self.device}, {self.precision}, {self.info.world_size} rank(s), "
                  f"{self.steps_per_epoch} steps/epoch, {self._details()})", flush=True)
        self.last_ckpt_time = time.monotonic()
        self.started = (time.monotonic(), self.step)  # for the ETA
        self.plain_logs = main and not sys.stderr.isatty()  # no bar: a line per log interval instead
        self.before_epochs()
        self.stop_signal: int | None = None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.epoch < cfg.train.epochs:
                self._run_epoch()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.logger is not None:
                self.logger.close()
        return self.run_dir

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM (e.g. SLURM preemption) or Ctrl-C: checkpoint at the next step boundary, then stop."""
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: quit now
        self.stop_signal = signum
        if self.info.is_main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  f"(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def _stop(self, save: bool = True) -> None:
        if save:
            self._save_last()
        if self.info.is_main:
            print(f"stopped at {self._position()}; checkpoint {ckpt.checkpoints_dir(self.run_dir) / 'last'}; "
                  f"the same command resumes", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def _run_epoch(self) -> None:
        cfg, epoch = self.cfg, self.epoch
        accum = cfg.train.accum_steps
        self.loader.set_epoch(epoch)
        batches = iter(self.loader.iter_from(self.epoch_step * accum))
        window = LogWindow(self.device)
        epoch_start, epoch_images = time.perf_counter(), 0
        bar = progress_bar(self.info.is_main, self.steps_per_epoch, self.epoch_step,
                           f"epoch {epoch + 1}/{cfg.train.epochs}")
        stopping = False
        try:
            while self.epoch_step < self.steps_per_epoch:
                loss, grad_norm, data_time = self._train_step(batches)
                window.add(loss, grad_norm, data_time, cfg.train.batch_size)
                epoch_images += cfg.train.batch_size
                bar.update(1)
                by_steps = cfg.run.ckpt_every_steps and self.step % cfg.run.ckpt_every_steps == 0
                # Stop after this step on a signal to any rank (all ranks agree: one tiny all-reduce per step).
                stop_here = dist.any_rank(self.stop_signal is not None, self.device)
                if self.step % cfg.run.log_every == 0 or by_steps or stop_here:
                    stats = self._sync(window)
                    self._log_window(stats, bar)
                    if stats["stop"]:
                        if self.epoch_step < self.steps_per_epoch:
                            self._stop()
                        stopping = True  # the epoch's last step: finish the epoch first, then stop
                        break
                    if (by_steps or stats["time_for_ckpt"]) and self.epoch_step < self.steps_per_epoch:
                        self._save_last()
            tail_steps = window.steps  # steps since the last log line (_sync resets the window)
            stats = self._sync(window)
            stopping = stopping or stats["stop"]
            if tail_steps:
                self._log_window(stats, bar)
        finally:
            bar.close()
        self.epoch, self.epoch_step = epoch + 1, 0
        seconds = time.perf_counter() - epoch_start
        record = {"kind": "epoch", "epoch": self.epoch, "step": self.step,
                  "loss": self.epoch_stats["loss_sum"] / max(1, self.epoch_stats["count"])}
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        record.update(lr=self._lr(), img_per_s=epoch_images / seconds, epoch_time_s=seconds)
        self.end_of_epoch(record)
        if self.logger is not None:
            self.logger.write({**record, "memory_mb": memory_mb(self.device)}, self.step)
        self._save_last()
        self.after_epoch_saved()
        if stopping and self.epoch < cfg.train.epochs:
            self._stop(save=False)  # `last` holds the end of this epoch

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _sync(self, window: LogWindow) -> dict[str, float]:
        """Everything ranks must agree on, in one all-reduce: window sums, non-finite flag, checkpoint time, stop."""
        minutes = self.cfg.run.ckpt_every_minutes
        due = self.info.is_main and minutes > 0 and time.monotonic() - self.last_ckpt_time >= 60 * minutes
        flags = torch.tensor([float(due), float(self.stop_signal is not None)], device=self.device)
        packed = torch.cat([torch.stack([window.loss_sum, window.grad_norm_sum.float(), window.bad.float()]), flags])
        packed = dist.all_reduce_sum(packed).tolist()
        world = self.info.world_size
        loss = packed[0] / world / max(1, window.steps)
        if packed[2] > 0 or not np.isfinite(loss):
            self._fail_non_finite()
        self.epoch_stats["loss_sum"] += packed[0] / world
        self.epoch_stats["count"] += window.steps
        stats = {"loss": loss, "grad_norm": packed[1] / world / max(1, window.steps), "time_for_ckpt": packed[3] > 0,
                 "stop": packed[4] > 0, **window.rates()}
        window.reset()
        return stats

    def _log_window(self, stats: dict[str, float], bar: Any) -> None:
        if self.logger is None:
            return
        record = {"kind": "step", "epoch": self.epoch + self.epoch_step / self.steps_per_epoch,
                  "step": self.step, "loss": stats["loss"], "lr": self._lr(), "grad_norm": stats["grad_norm"],
                  "img_per_s": stats["img_per_s"], "data_time": stats["data_time"],
                  "memory_mb": memory_mb(self.device)}
        self.logger.write(record, self.step)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['img_per_s']:.0f}")
        if self.plain_logs:
            since, first_step = self.started
            per_step = (time.monotonic() - since) / max(1, self.step - first_step)
            print(plain_progress_line(record, self.epoch, self.cfg.train.epochs, self.epoch_step,
                                      self.steps_per_epoch, per_step * (self.total_steps - self.step)), flush=True)

    def _fail_non_finite(self) -> None:
        last = ckpt.find_checkpoint(self.run_dir, repair=self.info.is_main)  # rank 0 alone renames
        kept = (f"the last good checkpoint is {last} (epoch {ckpt.read_meta(last)['epoch']}, step "
                f"{ckpt.read_meta(last)['step']})" if last else "no checkpoint was written before it")
        raise NonFiniteLossError(f"the loss became non-finite near step {self.step} (epoch {self.epoch + 1}); {kept}; "
                                 f"lower optim.base_lr, set optim.clip_grad, or use train.precision=bf16/fp32")

    # ---- checkpoints ---------------------------------------------------------------------------

    def _save(self, directory: Path) -> None:
        if not self.info.is_main:
            return
        state = {"optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                 "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                 "images_seen": self.images_seen, "epoch_stats": dict(self.epoch_stats), **self._extra_state()}
        meta = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                "images_seen": self.images_seen, "total_steps": self.total_steps,
                "complete": self.epoch >= self.cfg.train.epochs, "arch": self.arch, "kind": self.kind,
                "config": to_dict(self.cfg), "world_size": self.info.world_size,
                "metrics_bytes": self.logger.tell() if self.logger else 0,
                "saved_at": _dt.datetime.now().isoformat(timespec="seconds")}
        ckpt.save_checkpoint(directory, self.model, state, meta, save_weights=self.save_weights)

    def _save_last(self) -> None:
        self._save(ckpt.checkpoints_dir(self.run_dir) / "last")
        self.last_ckpt_time = time.monotonic()
