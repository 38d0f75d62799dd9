"""The online monitor: what the encoder has learned, measured every few epochs while it pretrains.

As solo-learn and lightly do, a frozen-feature classifier is fitted on labelled training images and scored
on held-out ones at the end of every `monitor.every` epochs, so a run's learning curve is read against
images seen, not only its loss. Two classifiers on the mean of the patch tokens (the probes' default pool):

* ``knn_top1``: the weighted k-NN of `blockmae probe` (k = 20, T = 0.07) on the held-out split;
* ``linear_top1``: a multinomial logistic regression on standardised features, fitted by L-BFGS to
  convergence (deterministic, about a second for a thousand images; the SGD probe of `blockmae probe`
  needs tens of epochs).

On ShapeTex both classifiers are trained on shape labels of the `train` split (where the texture predicts the
shape 80% of the time) and also scored on the `shape_only` split (the shape without any texture class:
``*_shape_only``, the fraction named by its shape) and on the `texture_only` split (``*_texture_only``: the
fraction named by the shape whose usual texture is shown), as `blockmae eval shape-bias` reads them.
Records go to metrics.jsonl (kind "monitor") and TensorBoard (monitor/...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockmae.data import load_dataset, subset
from blockmae.engine.config import PretrainConfig
from blockmae.engine.distributed import resolve_device, torchrun_env
from blockmae.engine.pretrain import Monitor, pretrain
from blockmae.evaluation.features import extract_features
from blockmae.evaluation.knn import knn_scores
from blockmae.evaluation.metrics import topk_accuracy

# ShapeTex's extra held-out splits and what their labels are scored against.
SHAPETEX_PROBES = ("shape_only", "texture_only")


def logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        weight_decay: float = 1e-3, max_iter: int = 300) -> nn.Linear:
    """Multinomial logistic regression on standardised features by L-BFGS (strong Wolfe line search).

    Returns a linear layer that takes raw features (the standardisation is folded into its weights)."""
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + weight_decay / 2 * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    head = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():
        folded = weight / std
        head.weight.copy_(folded.float())
        head.bias.copy_((bias - folded @ mean).float())
    return head


class OnlineMonitor:
    """Fits the k-NN and linear classifiers on `num_images` labelled images and scores the held-out ones.

    The images are loaded once (class-balanced subsets, seeded); every call encodes them with the current
    weights (eval mode, no augmentation) and returns one record."""

    def __init__(self, cfg: PretrainConfig, device: torch.device) -> None:
        mon, data = cfg.monitor, cfg.data
        options = dict(data.options)
        if data.dataset == "shapetex":  # generated: size each split to the monitor instead of the training set
            options["num_images"] = mon.num_images
        size = cfg.img_size

        def split(name: str) -> Any:
            return subset(load_dataset(data.dataset, name, root=data.root, image_size=size, **options),
                          mon.num_images, seed=0)

        self.train = split(data.split)
        self.held_out = {"": split(cfg.val_split())}
        if data.dataset == "shapetex":
            self.held_out.update({f"_{name}": split(name) for name in SHAPETEX_PROBES})
        self.cfg, self.device = cfg, device

    def _features(self, model: nn.Module, dataset: Any) -> torch.Tensor:
        """Mean-pooled features of the resident images at the training size, without a bar of their own."""
        return extract_features(model, dataset, pool="avg", batch_size=256, device=self.device, progress=False)

    def measure(self, model: nn.Module) -> dict[str, float]:
        """One record: knn_top1, linear_top1 and, on ShapeTex, both on shape_only and texture_only."""
        mon = self.cfg.monitor
        was_training = model.training
        model.eval()
        try:
            bank = self._features(model, self.train)
            classes = self.train.num_classes
            with torch.enable_grad():
                head = logistic_regression(bank, self.train.labels, classes)
            record: dict[str, float] = {}
            for suffix, ds in self.held_out.items():
                feats = self._features(model, ds)
                knn = knn_scores(bank, self.train.labels, feats, classes, mon.k, mon.temperature)
                with torch.no_grad():
                    linear = head(feats)
                record[f"knn_top1{suffix}"] = topk_accuracy(knn, ds.labels, (1,))["top1"]
                record[f"linear_top1{suffix}"] = topk_accuracy(linear, ds.labels, (1,))["top1"]
        finally:
            model.train(was_training)
        return record


def monitor_for(cfg: PretrainConfig, device: torch.device | None = None) -> Monitor | None:
    """The online monitor of a pretraining config, or None when `monitor.every` is 0."""
    info = torchrun_env()
    if not cfg.monitor.every or not info.is_main:  # rank 0 alone measures
        return None
    return OnlineMonitor(cfg, device or resolve_device(cfg.train.device, info)).measure


def pretrain_monitored(cfg: PretrainConfig) -> Path:
    """`blockmae.engine.pretrain.pretrain` with the online monitor the config asks for (what every entry
    point runs: `blockmae pretrain`, sweeps, the quickstart)."""
    return pretrain(cfg, monitor_for(cfg))
