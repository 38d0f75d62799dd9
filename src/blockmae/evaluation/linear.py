"""Linear probe in MAE's protocol: BatchNorm1d(affine=False, eps=1e-6) + Linear on frozen features.

Fast path (default): features are extracted once without augmentation and the head is trained on
them in mini-batches (`train_linear_probe`). MAE path: every epoch runs the frozen encoder on
freshly augmented images (`train_linear_probe_forward`). Both share one training loop: momentum SGD
(default), LARS (timm's, trust ratio on weights only, coefficient 0.001 as MAE's) or AdamW;
lr = base_lr x batch / 256; per-iteration
linear warm-up then cosine decay (timm's CosineLRScheduler). Accuracy is measured after every epoch;
the result reports the final epoch and, labelled as such, the best one.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.optim import Lars
from timm.scheduler import CosineLRScheduler
from tqdm.auto import tqdm

from blockmae.data.augment import BatchAugment
from blockmae.data.loader import TensorBatchLoader
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import LinearConfig
from blockmae.evaluation.features import encode_batch
from blockmae.evaluation.metrics import top1_predictions, topk_accuracy
from blockmae.fileio import atomic_path


class LinearProbeHead(nn.Module):
    """MAE's probe head: a parameter-free BatchNorm (feature whitening) then a linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    @property
    def dim(self) -> int:
        return self.linear.in_features

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


def make_optimizer(head: LinearProbeHead, cfg: LinearConfig, batch_size: int) -> torch.optim.Optimizer:
    lr = cfg.base_lr * batch_size / 256
    weights = [p for p in head.parameters() if p.ndim > 1]
    biases = [p for p in head.parameters() if p.ndim <= 1]
    if cfg.optimizer == "lars":
        # MAE's LARS: trust ratio coeff x |w|/|g| on weight matrices only; biases plain SGD. Each step moves
        # the weights by lr x coeff of their norm whatever the gradient, so without weight decay the norm
        # random-walks upwards geometrically once the loss is near its floor; a large coeff (1 was the old
        # default) blows the head up after a few thousand steps (docs/evaluation.md).
        groups = [
            {"params": weights, "weight_decay": cfg.weight_decay, "always_adapt": True, "trust_coeff": cfg.trust_coeff},
            {"params": biases, "weight_decay": 0.0, "always_adapt": False},
        ]
        return Lars(groups, lr=lr, momentum=cfg.momentum)
    groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": biases, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise BlockMAEError(f"unknown probe optimizer '{cfg.optimizer}'; use lars, sgd or adamw")


@dataclass
class ProbeResult:
    """A trained head with its accuracy at the final epoch and at the best epoch (by top-1)."""

    head: LinearProbeHead
    final: dict[str, float]
    best: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}top1": self.final["top1"], f"{prefix}top5": self.final["top5"]}
        out.update({f"{prefix}best_top1": self.best["top1"], f"{prefix}best_top5": self.best["top5"]})
        out[f"{prefix}best_epoch"] = self.best["epoch"]
        out[f"{prefix}train_seconds"] = round(self.train_seconds, 3)
        return out

    def predictions(self, features: torch.Tensor) -> torch.Tensor:
        """Top-1 class per row of `features` by the final head, ranked as its accuracy is: on the eval
        features mean(predictions == labels) is `final["top1"]`."""
        return top1_predictions(head_scores(self.head, features))


@torch.no_grad()
def head_scores(head: nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    out = torch.cat([head(features[i : i + batch_size].to(device).float()) for i in range(0, len(features), batch_size)])
    head.train(was_training)
    return out


def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    scores = head_scores(head, features)
    return topk_accuracy(scores, labels.to(scores.device))


def fit_head(
    head: LinearProbeHead,
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    steps_per_epoch: int,
    batch_size: int,
    evaluate: Callable[[LinearProbeHead], dict[str, float]],
    cfg: LinearConfig,
    desc: str = "linear probe",
) -> ProbeResult:
    """Train `head` on `epoch_batches(epoch)` for cfg.epochs, evaluating after every epoch."""
    optimizer = make_optimizer(head, cfg, batch_size)
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(total - warmup, 1), lr_min=0.0, warmup_t=warmup, warmup_lr_init=0.0,
        warmup_prefix=True, t_in_epochs=False,
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    step = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="ep", disable=not sys.stderr.isatty(), leave=False)
    for epoch in bar:
        head.train()
        loss_sum, seen, bad_features = 0.0, 0, False
        for features, labels in epoch_batches(epoch):
            bad_features = bad_features or not bool(torch.isfinite(features).all())
            scheduler.step_update(step)
            loss = F.cross_entropy(head(features.float()), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(labels)
            seen += len(labels)
        if not torch.isfinite(torch.tensor(loss_sum)):
            if bad_features:  # the cause is upstream of the head: no learning rate fixes it
                raise BlockMAEError(f"the encoder's features hold NaN or infinite values (epoch {epoch}): its "
                                    f"weights, or an overflow under autocast (try autocast=false)")
            raise BlockMAEError(f"linear probe loss became non-finite at epoch {epoch} with finite features; lower "
                                f"linear.base_lr (now {cfg.base_lr})")
        acc = evaluate(head)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), **acc}
        history.append(record)
        if best is None or acc["top1"] > best["top1"]:
            best = dict(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", top1=f"{acc['top1']:.3f}")
    assert best is not None
    final = history[-1]
    return ProbeResult(
        head=head, final={"top1": final["top1"], "top5": final["top5"]},
        best={"top1": best["top1"], "top5": best["top5"], "epoch": best["epoch"]},
        history=history, train_seconds=time.perf_counter() - start,
    )


def _effective_batch(n: int, batch_size: int) -> int:
    if n < 2:
        raise BlockMAEError(f"the linear probe needs at least 2 training images, got {n}")
    return min(batch_size, n)


@contextlib.contextmanager
def _few_threads_for_small_ops(device: torch.device, work: float) -> Iterator[None]:
    """On CPU, run tiny matmuls on one thread: intra-op threading only adds synchronisation there
    (measured on a busy 2-core machine: BatchNorm on 128x32 took 46 ms with 2 threads, 0.5 ms with 1)."""
    if device.type != "cpu" or work > 5e7:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    num_classes: int,
    cfg: LinearConfig,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Fast path: train the head on cached features (shuffled mini-batches, drop_last as MAE)."""
    torch.manual_seed(cfg.seed)
    x = train_features.to(device).float()
    y = train_labels.to(device).long()
    batch = _effective_batch(len(x), cfg.batch_size)
    steps = len(x) // batch
    head = LinearProbeHead(x.shape[1], num_classes).to(device)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            yield x[idx], y[idx]

    ex, ey = eval_features.to(device), eval_labels.to(device)
    with _few_threads_for_small_ops(x.device, batch * x.shape[1] * num_classes):
        return fit_head(head, epoch_batches, steps, batch, lambda h: evaluate_head(h, ex, ey), cfg)


def train_linear_probe_forward(
    encoder: nn.Module,
    train_dataset: Any,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    cfg: LinearConfig,
    pool: str = "cls",
    layer: int | None = None,
    device: str | torch.device = "cpu",
    autocast: bool = False,
) -> ProbeResult:
    """MAE path: each epoch, augmented images (random resized crop + flip) go through the frozen encoder."""
    torch.manual_seed(cfg.seed)
    batch = _effective_batch(len(train_dataset), cfg.batch_size)
    augment = BatchAugment(train_dataset.image_size)
    loader = TensorBatchLoader(
        train_dataset, batch_size=batch, device=device, augment=augment, shuffle=True, drop_last=True, seed=cfg.seed
    )
    encoder.eval()
    dim = encode_batch(encoder, next(iter(loader))[0][:2], pool, layer, autocast).shape[1]
    head = LinearProbeHead(dim, train_dataset.num_classes).to(device)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader.set_epoch(epoch)
        for images, labels in loader:
            yield encode_batch(encoder, images, pool, layer, autocast), labels

    ex, ey = eval_features.to(device), eval_labels.to(device)
    return fit_head(head, epoch_batches, len(loader), batch, lambda h: evaluate_head(h, ex, ey), cfg,
                    desc="linear probe (forward)")


# -- head files ----------------------------------------------------------------------------------


def save_head(head: LinearProbeHead, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write the head as safetensors; `metadata` (pool, class names, checkpoint hash, ...) as JSON in the header."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    header = {"blockmae": json.dumps({"kind": "linear_probe_head", "dim": head.dim,
                                      "num_classes": head.num_classes, **metadata}, default=str)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load_head(path: str | Path, device: str | torch.device = "cpu") -> tuple[LinearProbeHead, dict[str, Any]]:
    """Read a head written by :func:`save_head`; returns (head in eval mode, metadata)."""
    path = Path(path)
    if path.is_dir():
        path = path / "head.safetensors"
    if not path.is_file():
        raise BlockMAEError(f"probe head not found: {path} (pass the head.safetensors of a probe run)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("blockmae", "{}"))
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        raise BlockMAEError(f"cannot read probe head {path}: {err}") from None
    if meta.get("kind") != "linear_probe_head":
        raise BlockMAEError(f"{path} is not a blockmae probe head (no linear_probe_head metadata)")
    head = LinearProbeHead(int(meta["dim"]), int(meta["num_classes"]))
    head.load_state_dict(state)
    return head.to(device).eval(), meta
