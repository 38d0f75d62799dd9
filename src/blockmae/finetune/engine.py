"""The fine-tuning loop: pretrained encoder -> timm ViT classifier -> MAE's recipe -> top-1/top-5 per epoch.

The encoder becomes a timm ``VisionTransformer`` (``Eva`` for RoPE; models/export.py: the same function),
so drop path, layer-wise lr decay (``create_optimizer_v2(layer_decay=...)``), ``Mixup`` and the losses are
timm's. The run directory, checkpoints, logs (metrics.jsonl + TensorBoard), environment record and
registry row are the pretraining engine's.

Resumable bit for bit: the order and augmentation of every image come from (seed, epoch, image index)
(data.loader's seeded per-image transforms; the batched path's (seed, epoch, batch)), and the global RNGs
(drop path, mixup) are reseeded from (seed, rank, step) before every optimiser step, so a run restored
from a checkpoint at step s draws what the uninterrupted run drew after step s.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from blockmae.config import to_dict
from blockmae.engine import checkpoint as ckpt
from blockmae.engine import distributed as dist
from blockmae.engine.environment import run_dir_for, write_run_files
from blockmae.engine.optim import build_scheduler, optimizer_step
from blockmae.engine.logs import LogWindow, RunLogger, memory_mb, progress_bar
from blockmae.engine.loop import AUTOCAST_DTYPES, resolve_precision, seed_everything
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, write_json_atomic
from blockmae.finetune.config import FinetuneConfig
from blockmae.registry import flatten

RANDOM = "random"
WEIGHTS_FORMAT = "blockmae.finetune"
# Settings a resumed run must share with the checkpoint (epochs may grow; paths, logging, device may change).
_MUST_MATCH = ("checkpoint", "model.", "data.dataset", "data.train_split", "data.num_images", "data.options",
               "data.rand_augment", "data.crop_scale", "data.reprob", "data.interpolation", "mix.",
               "train.batch_size", "train.accum_steps", "optim.", "run.seed")


# ------------------------------------------------------------------------------------------- pieces
def load_pretrained(cfg: FinetuneConfig) -> tuple[Any, str]:
    """(the blockmae MAE whose encoder is fine-tuned, the parent recorded in the registry)."""
    from blockmae.evaluation.features import load_encoder
    from blockmae.models.io import load_mae

    m = cfg.model
    if cfg.checkpoint == RANDOM:
        arch = dict(load_mae(m.arch_from)[0].arch) if m.arch_from else None
        encoder = load_encoder(RANDOM, m.preset, m.img_size, m.patch_size, cfg.run.seed, arch=arch)
        return encoder.model, RANDOM
    model, _ = load_mae(cfg.checkpoint)
    return model, str(_run_dir_of(Path(cfg.checkpoint)))


def _run_dir_of(path: Path) -> Path:
    """The run directory a checkpoint path belongs to (run dir, checkpoints/<name>, or its weights file)."""
    path = path.resolve()
    if path.is_file():
        path = path.parent
    return path.parent.parent if path.parent.name == "checkpoints" else path


def build_classifier(mae: Any, num_classes: int, pool: str, drop_path: float, train_blocks: int | None) -> nn.Module:
    """The encoder as a timm ViT with a fresh head. ``avg``: MAE's global pool (final norm replaced by a
    fresh fc_norm after pooling); ``train_blocks=k``: everything below the last k blocks frozen (MAE fig. 9)."""
    from timm.layers import trunc_normal_

    from blockmae.models.export import to_timm_vit

    vit = to_timm_vit(mae, pool=pool, num_classes=num_classes, fc_norm=pool == "avg", drop_path_rate=drop_path)
    trunc_normal_(vit.head.weight, std=2e-5)  # MAE: a near-zero head, so early updates go to the head
    nn.init.zeros_(vit.head.bias)
    if train_blocks is not None:
        depth = len(vit.blocks)
        if train_blocks > depth:
            raise BlockMAEError(f"model.train_blocks={train_blocks} but the encoder has {depth} blocks")
        for name, param in vit.named_parameters():
            trainable = name.startswith(("norm.", "fc_norm.", "head."))
            if name.startswith("blocks."):
                trainable = int(name.split(".")[1]) >= depth - train_blocks
            param.requires_grad_(trainable)
    return vit


def save_classifier(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """The classifier's weights (safetensors) with what rebuilds it: timm name and model args, classes."""
    from safetensors.torch import save_file

    header = {"format": WEIGHTS_FORMAT, "timm": json.dumps(model.blockmae_timm), "metadata": json.dumps(metadata or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return Path(path)


def load_classifier(path: str | Path) -> nn.Module:
    """A fine-tuned classifier saved by this engine (a run dir, checkpoint dir or weights file) as a timm model."""
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    from blockmae.models.io import load_compatible_state, resolve_weights_path

    file = resolve_weights_path(path)
    with safe_open(str(file), framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != WEIGHTS_FORMAT:
        raise BlockMAEError(f"{file} is not a fine-tuned classifier (format {header.get('format')!r})")
    spec = json.loads(header["timm"])
    model = timm.create_model(spec["name"], pretrained=False, num_classes=spec["num_classes"], **spec["model_args"])
    load_compatible_state(model, load_file(str(file)), source=str(file))
    return model


class _TensorImages:
    """An ImageTensorDataset seen as the ImageFolder data.loader.folder_loader reads (samples, loader,
    transform), so the per-sample PIL path gets its per-image seeding, rank shards and resume skipping."""

    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset, self.transform, self.root = dataset, transform, dataset.name
        self.samples = [(i, int(label)) for i, label in enumerate(dataset.labels.tolist())]

    def __len__(self) -> int:
        return len(self.samples)

    def loader(self, index: int) -> Any:
        from PIL import Image

        return Image.fromarray(self.dataset.images[index].permute(1, 2, 0).numpy())


class _AugmentedBatches:
    """Training batches: timm's RandAugment transform per sample in DataLoader workers (data.rand_augment
    set), or the batched on-device crop + flip of data/augment.py (rand_augment null)."""

    def __init__(self, cfg: FinetuneConfig, dataset: Any, image_size: int, batch_size: int, device: torch.device,
                 info: dist.DistInfo) -> None:
        from blockmae.data.augment import IMAGENET_MEAN, IMAGENET_STD

        d, self.cfg, self.device, self.info, self.epoch = cfg.data, cfg, device, info, 0
        self.batch_size = batch_size
        if d.rand_augment:
            from timm.data import create_transform

            transform = create_transform(image_size, is_training=True, scale=tuple(d.crop_scale),
                                         auto_augment=d.rand_augment, interpolation=d.interpolation,
                                         re_prob=d.reprob, re_mode="pixel", re_count=1,
                                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
            self.images = _TensorImages(dataset, transform)
            self.tensor_loader = None
            self.batches = len(self._folder_loader(0))
        else:
            from blockmae.data.augment import BatchAugment
            from blockmae.data.loader import TensorBatchLoader

            augment = BatchAugment(image_size, scale=tuple(d.crop_scale), hflip=True, interpolation=d.interpolation)
            self.tensor_loader = TensorBatchLoader(dataset, batch_size, device, augment, shuffle=True,
                                                   drop_last=True, seed=cfg.run.seed, rank=info.rank,
                                                   world_size=info.world_size, image_size=image_size)
            self.batches = len(self.tensor_loader)

    def _folder_loader(self, start_batch: int) -> Any:
        from blockmae.data.loader import folder_loader

        return folder_loader(self.images, self.batch_size, shuffle=True, drop_last=True,
                             seed=self.cfg.run.seed * 1_000_003 + self.epoch, workers=self.cfg.data.workers,
                             pin_memory=self.device.type == "cuda", rank=self.info.rank,
                             world_size=self.info.world_size, start_batch=start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.tensor_loader is not None:
            self.tensor_loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self.batches

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensor_loader is not None:
            yield from self.tensor_loader.iter_from(start_batch)
            return
        for images, labels in self._folder_loader(start_batch):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, image_size: int, batch_size: int, device: torch.device,
             autocast: Any) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on every image of ``dataset`` (no augmentation)."""
    from blockmae.data.loader import TensorBatchLoader

    was_training = model.training
    model.eval()
    loader = TensorBatchLoader(dataset, batch_size, device, augment=None, shuffle=False, drop_last=False,
                               image_size=image_size)
    top1 = top5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    for images, labels in loader:
        with autocast:
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels[:, None]
        top1 = top1 + hits[:, 0].sum()
        top5 = top5 + hits.any(dim=1).sum()
    model.train(was_training)
    n = len(dataset)
    return {"top1": float(top1) / n, "top5": float(top5) / n, "eval_loss": float(loss_sum) / n, "num_eval": n}


# --------------------------------------------------------------------------------------------- loop
class Finetuner:
    """One fine-tuning run (one process of it under torchrun)."""

    def __init__(self, cfg: FinetuneConfig, info: dist.DistInfo, device: torch.device) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2

        self.cfg, self.info, self.device = cfg, info, device
        self.precision = resolve_precision(cfg.train.precision, device)
        if cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)
        accum, world = cfg.train.accum_steps, info.world_size
        if cfg.train.batch_size % (accum * world) or (cfg.train.batch_size // (accum * world)) % 2:
            raise BlockMAEError(f"train.batch_size {cfg.train.batch_size} must split into accum_steps x ranks = "
                                f"{accum} x {world} micro-batches of even size")
        self.micro_batch = cfg.train.batch_size // (accum * world)
        run_dir = run_dir_for(cfg) if info.is_main else None
        self.run_dir = Path(dist.broadcast_object(str(run_dir) if run_dir else None))
        self.resume_from = ckpt.find_checkpoint(self.run_dir)

        mae, self.parent = load_pretrained(cfg)
        self.image_size = int(mae.arch["img_size"])
        self.train_ds, self.eval_ds = (self._load_split(s) for s in (cfg.data.train_split, cfg.data.eval_split))
        self.num_classes = self.train_ds.num_classes
        self.loader = _AugmentedBatches(cfg, self.train_ds, self.image_size, self.micro_batch, device, info)
        self.steps_per_epoch = len(self.loader) // accum
        if self.steps_per_epoch < 1:
            raise BlockMAEError(f"{cfg.data.dataset} {cfg.data.train_split} has fewer than {accum} batches of "
                                f"{self.micro_batch}; lower train.batch_size")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs

        seed_everything(cfg.run.seed)  # the same fresh head (and fc_norm) on every rank
        from blockmae.models.export import timm_model_args, timm_model_name

        self.model = build_classifier(mae, self.num_classes, cfg.model.pool, cfg.model.drop_path,
                                      cfg.model.train_blocks).to(device)
        self.model.blockmae_timm = {  # what rebuilds it (save_classifier's header)
            "name": timm_model_name(mae.arch), "num_classes": self.num_classes,
            "model_args": timm_model_args(mae.arch, cfg.model.pool, fc_norm=cfg.model.pool == "avg")}
        self.arch = dict(mae.arch)
        self.lr = cfg.optim.resolved_lr(cfg.train.batch_size)
        o = cfg.optim
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=self.lr, weight_decay=o.weight_decay,
                                             layer_decay=o.layer_decay if o.layer_decay < 1 else None,
                                             betas=tuple(o.betas))
        self.scheduler = build_scheduler(self.optimizer, o, self.steps_per_epoch, cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        m = cfg.mix
        self.mixup = Mixup(mixup_alpha=m.mixup, cutmix_alpha=m.cutmix, prob=m.prob, switch_prob=m.switch_prob,
                           label_smoothing=m.label_smoothing, num_classes=self.num_classes) if cfg.mixing else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif m.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(m.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        self.metrics_bytes = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.train_model = dist.wrap_ddp(self.model, device, info)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        self.autocast = torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
                                       enabled=self.precision in AUTOCAST_DTYPES)

    def _load_split(self, split: str) -> Any:
        from blockmae.data import load_dataset

        d = self.cfg.data
        options = dict(d.options)
        if d.num_images is not None:
            if d.dataset != "shapetex":
                raise BlockMAEError("data.num_images applies to shapetex only; remove it for " + d.dataset)
            options["num_images"] = d.num_images
        return load_dataset(d.dataset, split, root=d.root, image_size=self.image_size, **options)

    # ---- resume --------------------------------------------------------------------------------
    def _check_compatible(self, meta: dict, where: Path) -> None:
        saved, now = flatten(meta.get("config", {})), flatten(to_dict(self.cfg))
        keys = sorted(k for k in set(saved) | set(now) if k == "checkpoint" or k.startswith(_MUST_MATCH[1:]))
        problems = [f"{k} {saved.get(k, '<absent>')} vs {now.get(k, '<absent>')}" for k in keys
                    if saved.get(k) != now.get(k)]
        if problems:
            raise BlockMAEError(f"checkpoint {where} was made with another config (checkpoint vs now): "
                                f"{'; '.join(problems[:4])}; use another run.dir or set these back")

    def _load(self, where: Path) -> None:
        meta = ckpt.read_meta(where)
        self._check_compatible(meta, where)
        ckpt.load_weights(where, self.model)
        state = ckpt.load_state(where)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.epoch_stats = dict(state["epoch_stats"])
        self.history = json.loads(state["history"])
        self.metrics_bytes = meta.get("metrics_bytes", 0)
        if self.info.is_main:
            print(f"resuming from {where} (epoch {self.epoch}, batch {self.batch}, step {self.step})", flush=True)

    def _save_last(self) -> None:
        self.last_ckpt_time = time.monotonic()
        if not self.info.is_main:
            return
        state = {"optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                 "epoch": self.epoch, "batch": self.batch, "step": self.step,
                 "epoch_stats": dict(self.epoch_stats), "history": json.dumps(self.history)}
        meta = {"epoch": self.epoch, "batch": self.batch, "step": self.step, "total_steps": self.total_steps,
                "complete": self.epoch >= self.cfg.train.epochs, "arch": self.arch, "kind": "finetune",
                "config": to_dict(self.cfg), "world_size": self.info.world_size,
                "metrics_bytes": self.logger.tell() if self.logger else 0,
                "saved_at": _dt.datetime.now().isoformat(timespec="seconds")}
        ckpt.save_checkpoint(ckpt.checkpoints_dir(self.run_dir) / "last", self.model, state, meta,
                             save_weights=save_classifier)

    # ---- one optimiser step --------------------------------------------------------------------
    def _train_step(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor, float]:
        accum = self.cfg.train.accum_steps
        # Drop path and mixup draw from the global RNGs: a function of (seed, rank, step), hence resumable.
        seed_everything(self.cfg.run.seed * 1_000_003 + self.step * 1_009 + self.info.rank)
        self.scheduler.step_update(self.step)
        loss_sum = torch.zeros((), device=self.device)
        data_time = 0.0
        for m in range(accum):
            t0 = time.perf_counter()
            images, labels = next(batches)
            data_time += time.perf_counter() - t0
            targets = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            sync = contextlib.nullcontext()
            if self.info.enabled and m < accum - 1:
                sync = getattr(self.train_model, "_orig_mod", self.train_model).no_sync()
            with sync:
                with self.autocast:
                    logits = self.train_model(images)
                loss = self.criterion(logits.float(), targets)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        grad_norm = optimizer_step(self.model, self.optimizer, self.scaler, self.cfg.optim.clip_grad)
        self.step += 1
        self.batch += accum
        return loss_sum / accum, grad_norm, data_time

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.info.is_main
        self.logger = RunLogger(self.run_dir, self.step, self.metrics_bytes) if main else None
        if main:
            write_run_files(self.run_dir, cfg, self.device, self.info.world_size, self.precision, self.resume_from,
                            self.step)
            print(f"run dir: {self.run_dir}  ({self.device}, {self.precision}, {self.info.world_size} rank(s), "
                  f"{self.steps_per_epoch} steps/epoch, {self.num_classes} classes, lr {self.lr:.3g}, "
                  f"parent {self.parent})", flush=True)
        self.last_ckpt_time = time.monotonic()
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
        return self.results()

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.info.is_main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping",
                  file=sys.stderr, flush=True)

    def _run_epoch(self) -> None:
        cfg, accum = self.cfg, self.cfg.train.accum_steps
        self.loader.set_epoch(self.epoch)
        batches = iter(self.loader.iter_from(self.batch))
        window = LogWindow(self.device)
        start, images = time.perf_counter(), 0
        bar = progress_bar(self.info.is_main, self.steps_per_epoch, self.batch // accum,
                        f"epoch {self.epoch + 1}/{cfg.train.epochs}")
        try:
            while self.batch < self.steps_per_epoch * accum:
                loss, grad_norm, data_time = self._train_step(batches)
                window.add(loss, grad_norm, data_time, cfg.train.batch_size)
                images += cfg.train.batch_size
                bar.update(1)
                by_steps = cfg.run.ckpt_every_steps and self.step % cfg.run.ckpt_every_steps == 0
                # A single process stops at once; ranks only at steps they all stop at (they all-reduce there).
                stop_here = self.stop_signal is not None and not self.info.enabled
                if self.step % cfg.run.log_every == 0 or by_steps or stop_here:
                    self._log_window(window, bar)
                    minutes = cfg.run.ckpt_every_minutes
                    by_time = minutes > 0 and time.monotonic() - self.last_ckpt_time >= 60 * minutes
                    # Every rank takes rank 0's decision.
                    stop, due = dist.broadcast_object((self.stop_signal is not None, bool(by_steps or by_time)))
                    if stop:
                        self._save_last()
                        raise KeyboardInterrupt
                    if due and self.batch < self.steps_per_epoch * accum:
                        self._save_last()
            if window.steps:
                self._log_window(window, bar)
        finally:
            bar.close()
        self.epoch, self.batch = self.epoch + 1, 0
        seconds = time.perf_counter() - start
        train_loss = self.epoch_stats["loss_sum"] / max(1, self.epoch_stats["count"])
        self.epoch_stats = {"loss_sum": 0.0, "count": 0}
        scores = evaluate(self.model, self.eval_ds, self.image_size, cfg.data.eval_batch_size, self.device,
                          self.autocast)
        record = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss, **scores}
        self.history.append(record)
        if self.logger is not None:
            self.logger.write({"kind": "epoch", **record, "lr": self._lr(), "img_per_s": images / seconds,
                               "epoch_time_s": seconds, "memory_mb": memory_mb(self.device)}, self.step)
            print(f"epoch {self.epoch}/{cfg.train.epochs}: train loss {train_loss:.4f}  {cfg.data.eval_split} "
                  f"top1 {scores['top1']:.4f} top5 {scores['top5']:.4f}  ({images / seconds:.0f} img/s)", flush=True)
        self._save_last()

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _log_window(self, window: LogWindow, bar: Any) -> None:
        packed = dist.all_reduce_sum(torch.stack([window.loss_sum, window.grad_norm_sum.float(),
                                                  window.bad.float()])).tolist()
        world, steps = self.info.world_size, max(1, window.steps)
        if packed[2] > 0:
            raise BlockMAEError(f"the loss became non-finite near step {self.step}; lower optim.base_lr or set "
                                f"optim.clip_grad (the last good checkpoint is in {ckpt.checkpoints_dir(self.run_dir)})")
        self.epoch_stats["loss_sum"] += packed[0] / world
        self.epoch_stats["count"] += window.steps
        rates = window.rates()
        if self.logger is not None:
            epoch = self.epoch + self.batch / (self.steps_per_epoch * self.cfg.train.accum_steps)
            record = {"kind": "step", "epoch": epoch,
                      "step": self.step, "loss": packed[0] / world / steps, "lr": self._lr(),
                      "grad_norm": packed[1] / world / steps, **rates, "memory_mb": memory_mb(self.device)}
            self.logger.write(record, self.step)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{rates['img_per_s']:.0f}")
        window.reset()

    def results(self) -> dict[str, Any]:
        """Final epoch's top-1/top-5 (with 95% Wilson intervals) and the best epoch, labelled as such."""
        from blockmae.report import wilson_interval

        if not self.history:
            return {}
        final = self.history[-1]
        best = max(self.history, key=lambda r: (r["top1"], -r["epoch"]))
        n = final["num_eval"]
        out = {"epochs": final["epoch"], "top1": final["top1"], "top5": final["top5"], "eval_loss": final["eval_loss"],
               "num_eval": n, "best_epoch": best["epoch"], "best_top1": best["top1"], "best_top5": best["top5"]}
        for key in ("top1", "top5"):
            interval = wilson_interval(final[key], n)
            out[f"{key}_ci95"] = [interval.low, interval.high]
        return out


def finetune(cfg: FinetuneConfig) -> tuple[Path, dict[str, Any]]:
    """Run (or resume) one fine-tuning run; returns (run directory, results)."""
    info = dist.torchrun_env()
    device = dist.resolve_device(cfg.train.device, info)
    dist.init_distributed(info, device)
    try:
        trainer = Finetuner(cfg, info, device)
        run_id = None
        if info.is_main and cfg.run.registry:
            from blockmae.registry import Registry

            with Registry(cfg.run.output_root).track("finetune", trainer.run_dir, to_dict(cfg),
                                                     parent=trainer.parent, name=cfg.run.name) as record:
                results = trainer.run()
                record.metrics.update(results)
            run_id = record.id
        else:
            results = trainer.run()
        if info.is_main:
            write_json_atomic(trainer.run_dir / "results.json", {"run_id": run_id, "config": to_dict(cfg),
                                                                 "metrics": results, "history": trainer.history})
        return trainer.run_dir, results
    finally:
        dist.cleanup()


def format_results(cfg: FinetuneConfig, results: dict[str, Any]) -> str:
    low, high = results["top1_ci95"]
    return (f"{cfg.data.dataset} {cfg.data.eval_split} ({results['num_eval']} images): final epoch "
            f"{results['epochs']}: top1 {results['top1']:.4f} [95% CI {low:.4f}, {high:.4f}]  top5 "
            f"{results['top5']:.4f};  best epoch {results['best_epoch']}: top1 {results['best_top1']:.4f} "
            f"(best-epoch numbers are selected on the eval split: report the final epoch)")
