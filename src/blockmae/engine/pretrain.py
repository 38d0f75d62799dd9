"""The pretraining loop: config -> data -> model -> AdamW/cosine -> logs, checkpoints, figures.

Randomness that decides what is trained on is a pure function of (seed, epoch, step): the loader's
order and augmentation come from (seed, epoch, batch), the masks of optimiser step s from (seed, s),
drawn for the step's whole global batch (so they do not depend on accum_steps or the ranks). With the
weights, optimiser state, RNG state and position (epoch, optimiser steps into it) restored, a resumed run
is therefore the same run, bit for bit on the CPU. Crops and masks are drawn for the global batch and
each rank takes its rows, so a run on W ranks sees the same images and masks as a run on one.

One process writes a run dir at a time (`lock`); the run dir defaults to a name derived from the
settings, so the same command finds its run again and resumes it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from blockmae.config import to_dict
from blockmae.data import load_dataset
from blockmae.data.augment import BatchAugment, normalize
from blockmae.data.loader import TensorBatchLoader, folder_loader, image_folder
from blockmae.engine import checkpoint as ckpt, distributed as dist
from blockmae.engine.config import PretrainConfig
from blockmae.engine.logs import read_metrics
from blockmae.engine.loop import TrainingLoop, seed_everything, started
from blockmae.engine.optim import build_optimizer
from blockmae.errors import BlockMAEError
from blockmae.fileio import writing
from blockmae.masking import MaskSpec, standard_masks
from blockmae.models import build_mae
from blockmae.registry import Registry
from blockmae.visualisation.reconstructions import reconstruction_figure

FIGURE_SEED = 1234  # fixed masks for the figures, so that milestones are comparable

# What the loop calls at the end of a monitored epoch: the bare model -> metrics of that moment.
Monitor = Callable[[torch.nn.Module], dict[str, float]]


def _map_mask(mask: Any, fn) -> Any:
    """Apply `fn` to every tensor field of a Mask (moving it, taking rows)."""
    changes = {f.name: fn(getattr(mask, f.name)) for f in dataclasses.fields(mask)
               if isinstance(getattr(mask, f.name), torch.Tensor)}
    return dataclasses.replace(mask, **changes)


class Pretrainer(TrainingLoop):
    """One pretraining run (one process of it under torchrun): MAE's masked reconstruction as the step,
    milestone checkpoints and reconstruction figures at the end of an epoch."""

    kind = "pretrain"

    def __init__(self, cfg: PretrainConfig, info: dist.DistInfo, device: torch.device,
                 monitor: Monitor | None = None) -> None:
        self.monitor = monitor if info.is_main and cfg.monitor.every else None
        if cfg.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        super().__init__(cfg, info, device)

    def _setup(self) -> None:
        cfg, info, device = self.cfg, self.info, self.device
        self._build_data()
        seed_everything(cfg.run.seed)  # identical initial weights on every rank
        self.model = build_mae(cfg.model.preset, **cfg.model_kwargs()).to(device)
        self.arch = self.model.arch
        self.grid = cfg.img_size // self.model.arch["patch_size"]
        self.mask_generator = cfg.mask_generator()
        self.mask_rng = torch.Generator(device=device)
        self.lr = cfg.optim.resolved_lr(cfg.train.batch_size)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr, fused=device.type == "cuda")
        self.steps_per_epoch = self._count_steps(f"the {cfg.data.dataset} {cfg.data.split} split")
        state = self._start_position()
        seed_everything(cfg.run.seed + info.rank + 1_000_003 * self.step)  # per-rank streams
        if state is not None and info.is_main:
            ckpt.set_rng_state(state["rng"])  # after seeding: rank 0 continues the saved stream exactly
        self._wrap_model()

    def _build_data(self) -> None:
        cfg = self.cfg.data
        if cfg.loader == "torchvision":
            if not cfg.root:
                raise BlockMAEError("data.loader=torchvision reads a <class>/<image> folder: set data.root")
            self.loader = _FolderBatches(self.cfg, self.micro_batch, self.device, self.info.rank,
                                         self.info.world_size)
            return

        options = dict(cfg.options)
        if cfg.num_images is not None:
            options["num_images"] = cfg.num_images
        try:  # rank 0 builds a missing cache, the other ranks then read it
            dataset = dist.main_first(lambda: load_dataset(cfg.dataset, cfg.split, root=cfg.root,
                                                           image_size=cfg.image_size, **options), self.info)
        except BlockMAEError:
            if "num_images" not in options or not self.info.is_main:
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

    def _check_resume(self, meta: dict, where: Path) -> None:
        ckpt.check_architecture(meta, self.model.arch, where)
        self.accepted_changes = self._accept_changes(
            ckpt.config_changes(meta.get("config", {}), to_dict(self.cfg), meta.get("epoch", 0)), where)

    def _extra_state(self) -> dict[str, Any]:
        return {"rng": ckpt.rng_state()}

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

    def _forward(self, images: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        mask = self._masks(micro, images.shape[0])
        with self.autocast:
            return self.train_model(images, mask=mask).loss

    # ---- end of an epoch ----------------------------------------------------------------------

    def before_epochs(self) -> None:
        self.figure_batch = self._figure_images() if self.info.is_main and self.cfg.run.recon_images else None
        if self.step == 0:
            self._measure()  # the learning curve starts at the initial weights

    def end_of_epoch(self, record: dict[str, Any]) -> None:
        # Before `last` is saved, so that a resume keeps the monitor's line
        if self.epoch % max(self.cfg.monitor.every, 1) == 0 or self.epoch == self.cfg.train.epochs:
            self._measure()

    def after_epoch_saved(self) -> None:
        if self.epoch in self.cfg.run.milestones:
            self._save(ckpt.checkpoints_dir(self.run_dir) / ckpt.milestone_name(self.epoch))
        if self.epoch in self.cfg.run.milestones or self.epoch == self.cfg.train.epochs:
            self._draw_reconstructions()

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

    def _figure_images(self) -> torch.Tensor | None:
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
        spec, count = MaskSpec.of(self.cfg.mask), self.figure_batch.shape[0]
        own = self.mask_generator(count, generator=torch.Generator().manual_seed(FIGURE_SEED))
        masks = {f"{spec.label} (run)": own}
        for name, mask in standard_masks(self.model.arch, count, seed=FIGURE_SEED, ratio=spec.ratio).items():
            if name != spec.name:  # the standard mask that is the run's own one
                masks[name] = mask
        return {name: _map_mask(mask, lambda t: t.to(self.device)) for name, mask in masks.items()}

    def _draw_reconstructions(self) -> None:
        if self.figure_batch is None:
            return

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


def pretrain(cfg: PretrainConfig, monitor: Monitor | None = None) -> Path:
    """Run (or resume) one pretraining run; returns its run directory.

    `monitor(model) -> {name: value}` is called on rank 0 every `cfg.monitor.every` epochs (and before the
    first step and after the last) when that is set; its record goes to metrics.jsonl and TensorBoard
    (`blockmae.evaluation.monitor.pretrain_monitored` supplies the online k-NN / linear monitor)."""
    with started(Pretrainer, cfg, monitor=monitor) as trainer:
        finished = trainer.epoch >= cfg.train.epochs
        if finished or not (trainer.info.is_main and cfg.run.registry):
            return trainer.run()
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


def _final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last epoch line of metrics.jsonl (loss, lr, img/s ...)."""
    epochs = read_metrics(run_dir, "epoch")
    return {k: v for k, v in (epochs[-1] if epochs else {}).items() if k != "kind"}
