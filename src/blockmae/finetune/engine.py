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

import json
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.data import Mixup, create_transform
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn

from blockmae.config import to_dict
from blockmae.data import load_dataset
from blockmae.data.augment import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from blockmae.data.loader import TensorBatchLoader, folder_loader
from blockmae.engine import distributed as dist
from blockmae.engine.loop import TrainingLoop, seed_everything, started
from blockmae.errors import BlockMAEError
from blockmae.fileio import atomic_path, write_json_atomic
from blockmae.finetune.config import FinetuneConfig
from blockmae.models.export import timm_model_args, timm_model_name, to_timm_vit
from blockmae.models.factory import RANDOM, load_encoder
from blockmae.models.io import load_compatible_state, read_safetensors
from blockmae.registry import Registry, flatten
from blockmae.report.stats import wilson_interval

WEIGHTS_FORMAT = "blockmae.finetune"
# Settings a resumed run must share with the checkpoint (epochs may grow; paths, logging, device may change).
_MUST_MATCH = ("checkpoint", "model.", "data.dataset", "data.train_split", "data.num_images", "data.options",
               "data.rand_augment", "data.crop_scale", "data.reprob", "data.interpolation", "mix.",
               "train.batch_size", "train.accum_steps", "optim.", "run.seed")


# ------------------------------------------------------------------------------------------- pieces
def load_pretrained(cfg: FinetuneConfig) -> tuple[Any, str]:
    """(the blockmae MAE whose encoder is fine-tuned, the parent recorded in the registry)."""
    m = cfg.model
    encoder = load_encoder(cfg.checkpoint, preset=m.preset, img_size=m.img_size, patch_size=m.patch_size,
                           seed=cfg.run.seed, arch_from=m.arch_from)
    parent = RANDOM if cfg.checkpoint == RANDOM else str(_run_dir_of(Path(cfg.checkpoint)))
    return encoder.mae, parent


def _run_dir_of(path: Path) -> Path:
    """The run directory a checkpoint path belongs to (run dir, checkpoints/<name>, or its weights file)."""
    path = path.resolve()
    if path.is_file():
        path = path.parent
    return path.parent.parent if path.parent.name == "checkpoints" else path


def build_classifier(mae: Any, num_classes: int, pool: str, drop_path: float, train_blocks: int | None) -> nn.Module:
    """The encoder as a timm ViT with a fresh head. ``avg``: MAE's global pool (final norm replaced by a
    fresh fc_norm after pooling); ``train_blocks=k``: everything below the last k blocks frozen (MAE fig. 9)."""
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
    header = {"format": WEIGHTS_FORMAT, "timm": json.dumps(model.blockmae_timm), "metadata": json.dumps(metadata or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)
    return Path(path)


def load_classifier(path: str | Path) -> nn.Module:
    """A fine-tuned classifier saved by this engine (a run dir, checkpoint dir or weights file) as a timm model."""
    file, header, state = read_safetensors(path)
    if header.get("format") != WEIGHTS_FORMAT:
        raise BlockMAEError(f"{file} is not a fine-tuned classifier (format {header.get('format')!r})")
    spec = json.loads(header["timm"])
    model = timm.create_model(spec["name"], pretrained=False, num_classes=spec["num_classes"], **spec["model_args"])
    load_compatible_state(model, state, source=str(file))
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
        return Image.fromarray(self.dataset.images[index].permute(1, 2, 0).numpy())


class _AugmentedBatches:
    """Training batches: timm's RandAugment transform per sample in DataLoader workers (data.rand_augment
    set), or the batched on-device crop + flip of data/augment.py (rand_augment null)."""

    def __init__(self, cfg: FinetuneConfig, dataset: Any, image_size: int, batch_size: int, device: torch.device,
                 info: dist.DistInfo) -> None:
        d, self.cfg, self.device, self.info, self.epoch = cfg.data, cfg, device, info, 0
        self.batch_size = batch_size
        if d.rand_augment:
            transform = create_transform(image_size, is_training=True, scale=tuple(d.crop_scale),
                                         auto_augment=d.rand_augment, interpolation=d.interpolation,
                                         re_prob=d.reprob, re_mode="pixel", re_count=1,
                                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
            self.images = _TensorImages(dataset, transform)
            self.tensor_loader = None
            self.batches = len(self._folder_loader(0))
        else:
            augment = BatchAugment(image_size, scale=tuple(d.crop_scale), hflip=True, interpolation=d.interpolation)
            self.tensor_loader = TensorBatchLoader(dataset, batch_size, device, augment, shuffle=True,
                                                   drop_last=True, seed=cfg.run.seed, rank=info.rank,
                                                   world_size=info.world_size, image_size=image_size)
            self.batches = len(self.tensor_loader)

    def _folder_loader(self, start_batch: int) -> Any:
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
class Finetuner(TrainingLoop):
    """One fine-tuning run (one process of it under torchrun): a classifier's step (mixup, timm's losses) and an
    evaluation on the eval split at the end of every epoch."""

    kind = "finetune"
    even_micro_batches = True  # mixup pairs a batch with its reverse
    save_weights = staticmethod(save_classifier)

    def _setup(self) -> None:
        cfg, device = self.cfg, self.device
        mae, self.parent = load_pretrained(cfg)
        self.image_size = int(mae.arch["img_size"])
        self.train_ds, self.eval_ds = (self._load_split(s) for s in (cfg.data.train_split, cfg.data.eval_split))
        self.num_classes = self.train_ds.num_classes
        self.loader = _AugmentedBatches(cfg, self.train_ds, self.image_size, self.micro_batch, device, self.info)
        self.steps_per_epoch = self._count_steps(f"{cfg.data.dataset} {cfg.data.train_split}")

        seed_everything(cfg.run.seed)  # the same fresh head (and fc_norm) on every rank
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
        m = cfg.mix
        self.mixup = Mixup(mixup_alpha=m.mixup, cutmix_alpha=m.cutmix, prob=m.prob, switch_prob=m.switch_prob,
                           label_smoothing=m.label_smoothing, num_classes=self.num_classes) if cfg.mixing else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif m.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(m.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.history: list[dict[str, Any]] = []
        self._start_position()
        self._wrap_model()

    def _load_split(self, split: str) -> Any:
        d = self.cfg.data
        options = dict(d.options)
        if d.num_images is not None:
            if d.dataset != "shapetex":
                raise BlockMAEError("data.num_images applies to shapetex only; remove it for " + d.dataset)
            options["num_images"] = d.num_images
        return load_dataset(d.dataset, split, root=d.root, image_size=self.image_size, **options)

    def _details(self) -> str:
        return f"{self.num_classes} classes, lr {self.lr:.3g}, parent {self.parent}"

    # ---- resume --------------------------------------------------------------------------------
    def _check_resume(self, meta: dict, where: Path) -> None:
        saved, now = flatten(meta.get("config", {})), flatten(to_dict(self.cfg))
        keys = sorted(k for k in set(saved) | set(now) if k == "checkpoint" or k.startswith(_MUST_MATCH[1:]))
        problems = [f"{k} {saved.get(k, '<absent>')} vs {now.get(k, '<absent>')}" for k in keys
                    if saved.get(k) != now.get(k)]
        if problems:
            raise BlockMAEError(f"checkpoint {where} was made with another config (checkpoint vs now): "
                                f"{'; '.join(problems[:4])}; use another run.dir or set these back")

    def _extra_state(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def _restore_extra(self, state: dict[str, Any]) -> None:
        self.history = json.loads(state["history"])

    # ---- one micro-batch, the end of an epoch ----------------------------------------------------
    def _forward(self, images: torch.Tensor, labels: torch.Tensor, micro: int) -> torch.Tensor:
        if micro == 0:  # drop path and mixup draw from the global RNGs: a function of (seed, rank, step)
            seed_everything(self.cfg.run.seed * 1_000_003 + self.step * 1_009 + self.info.rank)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        with self.autocast:
            logits = self.train_model(images)
        return self.criterion(logits.float(), targets)

    def end_of_epoch(self, record: dict[str, Any]) -> None:
        """Top-1/top-5 on the eval split, into the epoch's line and the run's history."""
        cfg = self.cfg
        record["train_loss"] = record.pop("loss")
        scores = evaluate(self.model, self.eval_ds, self.image_size, cfg.data.eval_batch_size, self.device,
                          self.autocast)
        record.update(scores)
        self.history.append({"epoch": self.epoch, "step": self.step, "train_loss": record["train_loss"], **scores})
        if self.info.is_main:
            print(f"epoch {self.epoch}/{cfg.train.epochs}: train loss {record['train_loss']:.4f}  "
                  f"{cfg.data.eval_split} top1 {scores['top1']:.4f} top5 {scores['top5']:.4f}  "
                  f"({record['img_per_s']:.0f} img/s)", flush=True)

    def results(self) -> dict[str, Any]:
        """Final epoch's top-1/top-5 (with 95% Wilson intervals) and the best epoch, labelled as such."""
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
    with started(Finetuner, cfg) as trainer:
        run_id = None
        if trainer.info.is_main and cfg.run.registry:
            with Registry(cfg.run.output_root).track("finetune", trainer.run_dir, to_dict(cfg),
                                                     parent=trainer.parent, name=cfg.run.name) as record:
                trainer.run()
                results = trainer.results()
                record.metrics.update(results)
            run_id = record.id
        else:
            trainer.run()
            results = trainer.results()
        if trainer.info.is_main:
            write_json_atomic(trainer.run_dir / "results.json", {"run_id": run_id, "config": to_dict(cfg),
                                                                 "metrics": results, "history": trainer.history})
        return trainer.run_dir, results


def format_results(cfg: FinetuneConfig, results: dict[str, Any]) -> str:
    low, high = results["top1_ci95"]
    return (f"{cfg.data.dataset} {cfg.data.eval_split} ({results['num_eval']} images): final epoch "
            f"{results['epochs']}: top1 {results['top1']:.4f} [95% CI {low:.4f}, {high:.4f}]  top5 "
            f"{results['top5']:.4f};  best epoch {results['best_epoch']}: top1 {results['best_top1']:.4f} "
            f"(best-epoch numbers are selected on the eval split: report the final epoch)")
