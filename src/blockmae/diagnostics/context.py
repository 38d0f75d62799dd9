"""The context a diagnostic works in (:class:`Context`: settings, device, encoder and probe, the evaluation
images, batched scores and features, figures), and the image and output helpers it and the diagnostics use.
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from blockmae.data import load_dataset, subset
from blockmae.data.augment import normalize_unit, unit_float
from blockmae.diagnostics.probes import Probe, pretraining_data
from blockmae.errors import BlockMAEError
from blockmae.evaluation.config import EVAL_SPLITS
from blockmae.evaluation.features import encode_batch
from blockmae.fileio import write_text_atomic
from blockmae.models.factory import Encoder
from blockmae.progress import ImageProgress
from blockmae.visualisation import save_figure

# A batched image transform: (images float (B, 3, H, W) in [0, 1] on the device, dataset indices (B,)) -> images.
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Context:
    """Everything `Diagnostic.evaluate` needs; built by ``diagnostics.runner.run_diagnostic``."""

    args: argparse.Namespace
    device: torch.device
    autocast: bool
    encoder: Encoder
    probe: Probe | None
    run_dir: Path
    data_args: argparse.Namespace  # args as the evaluation images read them (own_data: without --data/--root)
    figures: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.args.seed)

    @property
    def batch_size(self) -> int:
        return int(self.args.batch_size)

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def pool(self) -> str:
        return self.probe.meta.get("pool", "cls") if self.probe else "cls"

    @property
    def layer(self) -> int | None:
        return self.probe.meta.get("layer") if self.probe else None

    @property
    def num_classes(self) -> int:
        return int(self.probe.head.num_classes) if self.probe else 0

    def data_settings(self) -> dict[str, Any]:
        """The evaluation images: --data/--root/--split, defaulting to the probe's dataset and eval split."""
        if self.probe is not None:
            probe_data = dict(self.probe.config.get("data", {}))
            probe_data.setdefault("dataset", self.probe.meta.get("dataset"))
        else:  # no probe: the images the checkpoint was pretrained on
            pretrained = pretraining_data(self.encoder.checkpoint) or {}
            probe_data = {"dataset": pretrained.get("dataset"), "root": pretrained.get("root"),
                          "options": pretrained.get("options")}
        dataset = self.data_args.data or probe_data.get("dataset") or "shapetex"
        same = dataset == probe_data.get("dataset")

        split = self.data_args.split or (probe_data.get("eval_split") if same else None) or EVAL_SPLITS.get(dataset, "val")
        root = self.data_args.root if self.data_args.root is not None else (probe_data.get("root") if same else None)
        options = dict(probe_data.get("options") or {}) if same else {}
        if same and dataset == "shapetex" and probe_data.get("num_images") is not None:
            options["num_images"] = probe_data["num_images"]
        return {"dataset": dataset, "split": split, "root": root, "options": options,
                "num_images": self.data_args.num_images}

    def dataset(self, name: str | None = None, split: str | None = None, root: str | None = None,
                subset: int | None = None, **options: Any) -> Any:
        """A split at the encoder's input size; default: the evaluation images (see data_settings).

        `subset` (default --num-images for the evaluation images) keeps a seeded random subset, in order."""
        if name is None:
            s = self.data_settings()
            name, split, root, options, subset = s["dataset"], s["split"], s["root"], {**s["options"], **options}, \
                s["num_images"]
        ds = load_dataset(name, split or "val", root=root, image_size=self.image_size, **options)
        if self.probe is not None and name == self.data_settings()["dataset"] and ds.num_classes != self.num_classes:
            raise BlockMAEError(f"{name} {split} has {ds.num_classes} classes but the probe head has "
                                f"{self.num_classes}; pass a probe trained on {name}")
        return take_subset(ds, subset, self.seed)

    def batches(self, dataset: Any, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images float in [0, 1] at the encoder's size on the device, labels, dataset indices) batches."""
        n = len(dataset)
        if n == 0:
            raise BlockMAEError(f"dataset '{dataset.name}' is empty: nothing to evaluate")
        with ImageProgress(n, desc) as bar:
            for start in range(0, n, self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, n))
                images = dataset.images[start:start + len(index)].to(self.device, non_blocking=True)
                yield unit_float(images, self.image_size), dataset.labels[index].to(self.device), index.to(self.device)
                bar.update(len(index))

    @torch.no_grad()
    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features (B, D) of float images in [0, 1] (normalised here), float32."""
        return encode_batch(self.encoder.model, normalize_unit(images), self.pool, self.layer, self.autocast)

    @torch.no_grad()
    def scores_of(self, images: torch.Tensor) -> torch.Tensor:
        """Probe logits (B, C) of float images in [0, 1]."""
        if self.probe is None:
            raise BlockMAEError(f"internal: {self.args.command_name} has no probe")
        return self.probe.head(self.features_of(images))

    def scores(self, dataset: Any, transform: Transform | None = None, desc: str = "scores") -> torch.Tensor:
        """Probe logits (N, C) on the CPU of every image of `dataset`, each batch through `transform` first."""
        return self._each_batch(self.scores_of, dataset, transform, desc)

    def features(self, dataset: Any, transform: Transform | None = None, desc: str = "features") -> torch.Tensor:
        """Frozen features (N, D) on the CPU, batched, optionally transformed first."""
        return self._each_batch(self.features_of, dataset, transform, desc)

    def _each_batch(self, of: Callable[[torch.Tensor], torch.Tensor], dataset: Any, transform: Transform | None,
                    desc: str) -> torch.Tensor:
        out = []
        for images, _, index in self.batches(dataset, desc):
            out.append(of(images if transform is None else transform(images, index)).float().cpu())
        return torch.cat(out)

    def save_figure(self, stem: str, fig: Any, rows: Sequence[Mapping[str, Any]]) -> Path:
        """figures/<stem>.png (atomically, via the project's save_figure) and figures/<stem>.csv (`rows`)."""
        path = write_figure(self.run_dir / "figures", stem, fig, rows)
        self.figures.append(f"figures/{stem}.png")
        return path


def write_figure(folder: Path, stem: str, fig: Any, rows: Sequence[Mapping[str, Any]]) -> Path:
    """<folder>/<stem>.png (atomically) beside <folder>/<stem>.csv, the numbers drawn."""
    write_csv(folder / f"{stem}.csv", rows)
    return save_figure(fig, folder / f"{stem}.png", dpi=120, bbox_inches="tight")


def take_subset(dataset: Any, num_images: int | None, seed: int) -> Any:
    """A seeded class-balanced subset of `num_images` images (in dataset order), or the dataset itself."""
    if num_images is not None and num_images < 1:
        raise BlockMAEError(f"--num-images must be positive, got {num_images}")
    return subset(dataset, num_images, seed)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts) as CSV, columns in first-seen order, written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())
