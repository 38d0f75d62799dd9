"""The pretraining loop: config -> data -> model -> AdamW/cosine -> logs, checkpoints, figures.

Randomness that decides what is trained on is a pure function of (seed, epoch, step): the loader's
order and augmentation come from (seed, epoch, batch), the masks of optimiser step s from (seed, s),
drawn for the step's whole global batch (so they do not depend on accum_steps or the ranks). With the
weights, optimiser state, RNG state and position (epoch, optimiser steps into it) restored, a resumed run
is therefore the same run, bit for bit on the CPU. Crops and masks are drawn for the global batch and
each rank takes its rows, so a run on W ranks sees the same images and masks as a run on one.

One process writes a run dir at a time (`engine.lock`); the run dir defaults to a name derived from the
settings, so the same command finds its run again and resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import random
import resource
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
from blockmae.engine.config import PretrainConfig
from blockmae.engine.environment import run_dir_for, write_run_files
from blockmae.engine.lock import RunLock
from blockmae.engine.optim import build_optimizer, build_scheduler, optimizer_step
from blockmae.errors import BlockMAEError
from blockmae.fileio import output_error, write_json_atomic, write_text_atomic, writing

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FIGURE_SEED = 1234  # fixed masks for the figures, so that milestones are comparable


# What the loop calls at the end of a monitored epoch: the bare model -> metrics of that moment.
Monitor = Callable[[torch.nn.Module], dict[str, float]]


class NonFiniteLossError(BlockMAEError):
    """The loss became NaN or infinite; the last checkpoint on disk is still the last good one."""


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _map_mask(mask: Any, fn) -> Any:
    """Apply `fn` to every tensor field of a Mask (moving it, taking rows)."""
    changes = {f.name: fn(getattr(mask, f.name)) for f in dataclasses.fields(mask)
               if isinstance(getattr(mask, f.name), torch.Tensor)}
    return dataclasses.replace(mask, **changes)


class Pretrainer:
    """One pretraining run (one process of it under torchrun)."""

    def __init__(self, cfg: PretrainConfig, info: dist.DistInfo, device: torch.device,
                 monitor: Monitor | None = None) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.monitor = monitor if info.is_main and cfg.monitor.every else None
        self.precision = resolve_precision(cfg.train.precision, device)
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        world_batch = cfg.train.accum_steps * info.world_size
        if cfg.train.batch_size % world_batch:
            raise BlockMAEError(f"train.batch_size {cfg.train.batch_size} is not divisible by accum_steps x ranks "
                                f"= {cfg.train.accum_steps} x {info.world_size}; the global batch must split evenly")
        self.micro_batch = cfg.train.batch_size // world_batch  # per rank, per forward
        if cfg.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

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

    def _setup(self) -> None:
        cfg, info, device = self.cfg, self.info, self.device
        self._build_data()
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        from blockmae.models import build_mae

        self.model = build_mae(cfg.model.preset, **cfg.model_kwargs()).to(device)
        self.grid = cfg.img_size // self.model.arch["patch_size"]
        self.mask_generator = cfg.mask_generator()
        self.mask_rng = torch.Generator(device=device)
        self.lr = cfg.optim.resolved_lr(cfg.train.batch_size)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr, fused=device.type == "cuda")
        self.steps_per_epoch = len(self.loader) // cfg.train.accum_steps
        if self.steps_per_epoch < 1:
            raise BlockMAEError(f"the {cfg.data.dataset} {cfg.data.split} split has fewer than accum_steps = "
                                f"{cfg.train.accum_steps} batches of {self.micro_batch}; lower train.batch_size")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

        # The position in global terms: epochs done, optimiser steps into this epoch, steps and images so far.
        self.epoch, self.epoch_step, self.step, self.images_seen = 0, 0, 0, 0
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        self.metrics_bytes = 0
        self.accepted_changes: dict[str, tuple[Any, Any]] = {}
        rng = self._load(self.resume_from) if self.resume_from is not None else None
        seed_everything(cfg.run.seed + info.rank + 1_000_003 * self.step)  # per-rank streams
        if rng is not None and info.is_main:
            ckpt.set_rng_state(rng)  # after seeding: rank 0 continues the saved stream exactly

        self.train_model: torch.nn.Module = dist.wrap_ddp(self.model, device, info)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)

    # ---- setup ------------------------------------------------------------------------------

    def _build_data(self) -> None:
        cfg = self.cfg.data
        if cfg.loader == "torchvision":
            if not cfg.root:
                raise BlockMAEError("data.loader=torchvision reads a <class>/<image> folder: set data.root")
            self.loader = _FolderBatches(self.cfg, self.micro_batch, self.device, self.info.rank,
                                         self.info.world_size)
            return
        from blockmae.data import load_dataset
        from blockmae.data.augment import BatchAugment
        from blockmae.data.loader import TensorBatchLoader

        options = dict(cfg.options)
        if cfg.num_images is not None:
            options["num_images"] = cfg.num_images
        try:
            dataset = load_dataset(cfg.dataset, cfg.split, root=cfg.root, image_size=cfg.image_size, **options)
        except BlockMAEError:
            if "num_images" not in options:
                raise
            # Report a more basic problem (a missing root, ...) before the option: the dataset without it
            options.pop("num_images")
            load_dataset(cfg.dataset, cfg.split, root=cfg.root, image_size=cfg.image_size, **options)
            raise
        augment = None
        if cfg.augment:
            augment = BatchAugment(self.cfg.img_size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio),
                                   hflip=cfg.hflip, interpolation=cfg.interpolation)
        self.loader = TensorBatchLoader(dataset, self.micro_batch, self.device, augment, shuffle=True,
                                        drop_last=True, seed=self.cfg.run.seed, rank=self.info.rank,
                                        world_size=self.info.world_size, image_size=self.cfg.img_size)

    def _load(self, where: Path) -> dict:
        """Restore weights, optimiser and position from checkpoint `where`; returns its RNG state."""
        meta = ckpt.read_meta(where)
        ckpt.check_architecture(meta, self.model.arch, where)
        saved = meta.get("config", {})
        self.accepted_changes = self._accept_changes(ckpt.config_changes(saved, to_dict(self.cfg),
                                                                         meta.get("epoch", 0)), where)
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
        # Metrics logged after this checkpoint will be logged again: cut them off.
        same_run = Path(where).resolve().parent.parent == self.run_dir.resolve()
        self.metrics_bytes = meta.get("metrics_bytes", 0) if same_run else 0
        if self.info.is_main and self.epoch < self.cfg.train.epochs:
            print(f"resuming {self.run_dir} from {self._position()}; checkpoint {where}", flush=True)
        return state["rng"]

    def _accept_changes(self, changes: dict[str, tuple[Any, Any]], where: Path) -> dict[str, tuple[Any, Any]]:
        """The changes that run.allow_changes names; BlockMAEError listing the others."""
        allowed = set(self.cfg.run.allow_changes)

        def accepted(key: str) -> bool:
            parts = key.split(".")
            return "all" in allowed or any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))

        refused = {k: v for k, v in changes.items() if not accepted(k)}
        if refused:
            listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in refused.items())
            raise BlockMAEError(f"{where} was trained with other settings that change the training ({listed}); "
                                f"set them back, use another run.dir, or accept them with "
                                f"run.allow_changes=[{','.join(refused)}]")
        if changes and self.info.is_main:
            listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items())
            print(f"accepting changed settings (run.allow_changes): {listed}", flush=True)
        return changes

    def _position(self) -> str:
        """'epoch 2, step 13 (5 of 8 steps into the epoch)', with the epoch counted from 1 as the bar does."""
        where = ("the start of the epoch" if self.epoch_step == 0 else
                 f"{self.epoch_step} of {self.steps_per_epoch} steps into the epoch")
        return f"epoch {self.epoch + 1}, step {self.step} ({where})"

    # ---- one optimiser step -----------------------------------------------------------------

    def _masks(self, micro: int, rows: int) -> Any:
        """The masks of micro-batch `micro` of the current step on this rank: the step's masks are drawn for
        its whole global batch from (seed, step), so they depend neither on accum_steps nor on the ranks."""
        if micro == 0:
            self.mask_rng.manual_seed(self.cfg.run.seed * 1_000_003 + self.step)
            self.step_masks = self.mask_generator(self.cfg.train.batch_size, device=self.device,
                                                  generator=self.mask_rng)
        global_rows = rows * self.info.world_size
        mask = _map_mask(self.step_masks, lambda t: t[micro * global_rows:(micro + 1) * global_rows])
        if not self.info.enabled:
            return mask
        keep = dist.rows_of_rank(global_rows, self.info)
        return _map_mask(mask, lambda t: t[keep])

    def _train_step(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Forward/backward over accum_steps micro-batches, then one AdamW step; returns (loss, grad_norm,
        data_time) with the loss and grad norm left on the device (no sync)."""
        accum = self.cfg.train.accum_steps
        autocast = torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
                                  enabled=self.precision in AUTOCAST_DTYPES)
        loss_sum = torch.zeros((), device=self.device)
        data_time = 0.0
        self.scheduler.step_update(self.step)
        for m in range(accum):
            t0 = time.perf_counter()
            images, _ = next(batches)
            data_time += time.perf_counter() - t0
            mask = self._masks(m, images.shape[0])
            sync = contextlib.nullcontext()
            if self.info.enabled and m < accum - 1:
                sync = self._ddp().no_sync()  # all-reduce gradients once, on the last micro-batch
            with sync:
                with autocast:
                    loss = self.train_model(images, mask=mask).loss
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

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> Path:
        cfg, main = self.cfg, self.info.is_main
        if self.epoch >= cfg.train.epochs:
            if main:
                print(f"run {self.run_dir} is already complete ({self.epoch} epochs); nothing to do", flush=True)
            return self.run_dir
        self.logger = RunLogger(self.run_dir, self.step, self.metrics_bytes) if main else None
        if main:
            self._write_run_files()
            if self.accepted_changes:
                self.logger.write({"kind": "resume", "epoch": self.epoch, "step": self.step,
                                   "changes": {k: list(v) for k, v in self.accepted_changes.items()}}, self.step)
            print(f"run dir: {self.run_dir}  ({self.device}, {self.precision}, {self.info.world_size} rank(s), "
                  f"{self.steps_per_epoch} steps/epoch, lr {self.lr:.3g})", flush=True)
        self.last_ckpt_time = time.monotonic()
        self.figure_batch = self._figure_images() if main and cfg.run.recon_images else None
        self.stop_signal: int | None = None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.step == 0:
                self._measure()  # the learning curve starts at the initial weights
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
                # A single process stops at once; ranks agree on stopping at the next sync.
                stop_here = self.stop_signal is not None and not self.info.enabled
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
        epoch_loss = self.epoch_stats["loss_sum"] / max(1, self.epoch_stats["count"])
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        if self.logger is not None:
            self.logger.write({"kind": "epoch", "epoch": self.epoch, "step": self.step, "loss": epoch_loss,
                               "lr": self._lr(), "img_per_s": epoch_images / seconds,
                               "epoch_time_s": seconds, "memory_mb": memory_mb(self.device)}, self.step)
        if self.epoch % max(cfg.monitor.every, 1) == 0 or self.epoch == cfg.train.epochs:
            self._measure()
        self._save_last()
        if self.epoch in self.cfg.run.milestones:
            self._save(ckpt.checkpoints_dir(self.run_dir) / ckpt.milestone_name(self.epoch))
        if self.epoch in self.cfg.run.milestones or self.epoch == self.cfg.train.epochs:
            self._draw_reconstructions()
        if stopping and self.epoch < cfg.train.epochs:
            self._stop(save=False)  # `last` holds the end of this epoch

    def _measure(self) -> None:
        """The online monitor's record at this point (rank 0; the other ranks wait at the next all-reduce)."""
        if self.monitor is None or self.logger is None:
            return
        start = time.perf_counter()
        record = {"kind": "monitor", "epoch": self.epoch, "step": self.step,
                  "images_seen": self.step * self.cfg.train.batch_size, **self.monitor(self.model)}
        record["monitor_time_s"] = time.perf_counter() - start
        self.logger.write(record, self.step)
        print("monitor " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in record.items() if k != "kind"), flush=True)

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _sync(self, window: "LogWindow") -> dict[str, float]:
        """Everything ranks must agree on, in one all-reduce: window sums, non-finite flag, checkpoint time."""
        minutes = self.cfg.run.ckpt_every_minutes
        due = self.info.is_main and minutes > 0 and time.monotonic() - self.last_ckpt_time >= 60 * minutes
        flags = torch.tensor([float(due), float(self.stop_signal is not None)], device=self.device)
        packed = torch.cat([torch.stack([window.loss_sum, window.grad_norm_sum, window.bad.float()]), flags])
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

    def _fail_non_finite(self) -> None:
        last = ckpt.find_checkpoint(self.run_dir, repair=self.info.is_main)  # rank 0 alone renames
        kept = (f"the last good checkpoint is {last} (epoch {ckpt.read_meta(last)['epoch']}, step "
                f"{ckpt.read_meta(last)['step']})" if last else "no checkpoint was written before it")
        raise NonFiniteLossError(f"the loss became non-finite near step {self.step} (epoch {self.epoch + 1}); {kept}; "
                                 f"lower optim.base_lr, set optim.clip_grad, or use train.precision=bf16/fp32")

    # ---- checkpoints and files ------------------------------------------------------------

    def _state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                "images_seen": self.images_seen, "epoch_stats": dict(self.epoch_stats), "rng": ckpt.rng_state()}

    def _save(self, directory: Path) -> None:
        if not self.info.is_main:
            return
        meta = {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step,
                "images_seen": self.images_seen, "total_steps": self.total_steps,
                "complete": self.epoch >= self.cfg.train.epochs, "arch": self.model.arch,
                "config": to_dict(self.cfg), "world_size": self.info.world_size,
                "metrics_bytes": self.logger.tell() if self.logger else 0,
                "saved_at": _dt.datetime.now().isoformat(timespec="seconds")}
        ckpt.save_checkpoint(directory, self.model, self._state(), meta)

    def _save_last(self) -> None:
        self._save(ckpt.checkpoints_dir(self.run_dir) / "last")
        self.last_ckpt_time = time.monotonic()

    def _write_run_files(self) -> None:
        write_run_files(self.run_dir, self.cfg, self.device, self.info.world_size, self.precision, self.resume_from,
                        self.step, self.accepted_changes)

    def _figure_images(self) -> torch.Tensor | None:
        from blockmae.data import load_dataset
        from blockmae.data.augment import normalize

        cfg = self.cfg.data
        options = dict(cfg.options)
        if cfg.dataset == "shapetex":
            options["num_images"] = max(64, self.cfg.run.recon_images)
        try:
            val = load_dataset(cfg.dataset, self.cfg.val_split(), root=cfg.root, image_size=self.cfg.img_size,
                               **options)
        except BlockMAEError as err:
            print(f"warning: no reconstruction figures ({err})", file=sys.stderr, flush=True)
            return None
        count = min(self.cfg.run.recon_images, len(val))
        index = torch.linspace(0, len(val) - 1, count).long()  # spread over the split (and its classes)
        return normalize(val.images[index].to(self.device))

    def _figure_masks(self) -> dict[str, Any]:
        """The run's own mask, then random / 2x2 / 4x4 blocks (those that fit and differ), fixed seeds."""
        from blockmae.masking import DEFAULT_ALIGN, is_random_masking, mask_label
        from blockmae.visualisation.cli import standard_masks

        m, count = self.cfg.mask, self.figure_batch.shape[0]
        own = self.mask_generator(count, generator=torch.Generator().manual_seed(FIGURE_SEED))
        masks = {f"{mask_label(m.family, m.block, m.ratio, m.align)} (run)": own}
        same_as_run = None  # the standard mask that is the run's own one
        if is_random_masking(m.family, m.block):
            same_as_run = "random"
        elif m.family == "block" and m.align == DEFAULT_ALIGN:
            same_as_run = f"{m.block}x{m.block} blocks"
        for name, mask in standard_masks(self.model.arch, count, seed=FIGURE_SEED, ratio=m.ratio).items():
            if name != same_as_run:
                masks[name] = mask
        return {name: _map_mask(mask, lambda t: t.to(self.device)) for name, mask in masks.items()}

    def _draw_reconstructions(self) -> None:
        if self.figure_batch is None:
            return
        from blockmae.visualisation.reconstructions import reconstruction_figure

        path = self.run_dir / "figures" / f"reconstructions_epoch_{self.epoch:04d}.png"
        with writing(path):
            reconstruction_figure(self.model, self.figure_batch, self._figure_masks(), path,
                                  title=f"{self.run_dir.name}: epoch {self.epoch}")


class _FolderBatches:
    """The torchvision path (ImageFolder + PIL transforms + DataLoader) with the cached loader's interface.

    Each epoch's order and crops are seeded by (seed, epoch) and the image index, and each rank takes its
    share of every global batch, so they do not depend on the number of workers or ranks, and a resumed
    epoch skips its first batches without reading them.
    """

    def __init__(self, cfg: PretrainConfig, batch_size: int, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> None:
        from blockmae.data.loader import folder_loader, image_folder

        self.cfg, self.device, self.epoch = cfg, device, 0
        data = cfg.data
        folder = image_folder(data.root, cfg.img_size, train=data.augment, scale=tuple(data.crop_scale),
                              ratio=tuple(data.crop_ratio), hflip=data.hflip, interpolation=data.interpolation)
        self.make = lambda seed, start: folder_loader(  # the folder is scanned once, not every epoch
            folder, batch_size, shuffle=True, drop_last=True, seed=seed, workers=data.workers,
            pin_memory=device.type == "cuda", rank=rank, world_size=world_size, start_batch=start)
        self.batches = len(self.make(cfg.run.seed, 0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.make(self.cfg.run.seed * 1_000_003 + self.epoch, start_batch):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


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
        from torch.utils.tensorboard import SummaryWriter

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
    from tqdm.auto import tqdm

    # Quiet when stderr is not a terminal (CI, log files) and on every rank but 0.
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                disable=not (enabled and sys.stderr.isatty()))


def pretrain(cfg: PretrainConfig, monitor: Monitor | None = None) -> Path:
    """Run (or resume) one pretraining run; returns its run directory.

    `monitor(model) -> {name: value}` is called on rank 0 every `cfg.monitor.every` epochs (and before the
    first step and after the last) when that is set; its record goes to metrics.jsonl and TensorBoard
    (`blockmae.evaluation.monitor.pretrain_monitored` supplies the online k-NN / linear monitor)."""
    info = dist.torchrun_env()
    device = dist.resolve_device(cfg.train.device, info)
    dist.init_distributed(info, device)
    trainer = None
    try:
        trainer = Pretrainer(cfg, info, device, monitor)
        finished = trainer.epoch >= cfg.train.epochs
        if finished or not (info.is_main and cfg.run.registry):
            return trainer.run()
        from blockmae.registry import Registry

        parent = str(trainer.resume_from) if trainer.resume_from else None
        with writing(cfg.run.output_root):
            registry = Registry(cfg.run.output_root)
        with registry.track("pretrain", trainer.run_dir, to_dict(cfg), parent=parent, name=cfg.run.name) as record:
            run_dir = trainer.run()
            record.metrics.update(_final_metrics(run_dir))
            for line in read_metrics(run_dir, "epoch"):  # the registry keeps every milestone, not only the last
                if line.get("epoch") in cfg.run.milestones:
                    registry.log_metrics(record.id, {k: v for k, v in line.items() if k != "kind"}, line["epoch"])
        return run_dir
    finally:
        if trainer is not None:
            trainer.release()
        dist.cleanup()


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


def _final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last epoch line of metrics.jsonl (loss, lr, img/s ...)."""
    epochs = read_metrics(run_dir, "epoch")
    return {k: v for k, v in (epochs[-1] if epochs else {}).items() if k != "kind"}
