"""`blockmae eval mvh`: a decision maker on model-vs-human's datasets, written as its trial files.

``--model SPEC`` is an ImageNet-1k classifier with its own head (``timm:NAME[:FILE]``, a Hugging Face
image classifier directory: 16 categories by model-vs-human's rule) or any encoder blockmae takes, through
its linear probe (``--probe RUN``, or the standard probe trained / reused as for every diagnostic; a
Tiny-ImageNet probe covers 11 categories). See `blockmae.mvh.decisions`.

``--datasets NAME ...`` are read from ``--root DIR/<name>`` (a folder prepared by ``blockmae data prepare
mvh-<name>``, or model-vs-human's own ``datasets/`` folder); without --root from each dataset's default
prepared root. ``tiny-imagenet`` is blockmae's own: its val images of the classes in the 16 categories.
``--distortions NAME ...`` also applies model-vs-human's parametric distortions (`blockmae.mvh.distortions`,
all twelve, eidolons included) to every dataset at all their levels, as datasets ``<dataset>-<distortion>``
whose trials name the level as the condition; ``--power-spectrum`` and ``--gamma-table`` take
model-vs-human's measured files for power equalisation and false colour. Human observers saw only
model-vs-human's own images: a distortion of other images has no human counterpart.

Outputs in the run dir: ``raw-data/<dataset>/<dataset>_<model>_session-1.csv`` (model-vs-human's schema
and file names, `blockmae.mvh.trials`; `blockmae mvh benchmark --raw-data RUN/raw-data` reads them), and
results.json: per dataset one row per condition (16-class accuracy with its 95% Wilson interval, chance
= 1 / the number of categories decided among), the accuracy over all trials, and for cue-conflict the
shape bias (shape / (shape + texture) decisions on the images whose two categories differ, bootstrap 95%
interval). A probe decides only on images whose category it covers (cue-conflict: both categories);
the others are left out of the trial files and counted as ``skipped``.
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from blockmae.data.mvh import DATASETS, OWN_DATASETS, Stimulus, find_stimuli, load_stimuli
from blockmae.diagnostics import filters
from blockmae.diagnostics.context import Context
from blockmae.diagnostics.plugin import Diagnostic, DiagnosticResult, accuracy_row
from blockmae.diagnostics.probes import Probe
from blockmae.diagnostics.runner import command
from blockmae.errors import BlockMAEError
from blockmae.models.factory import Encoder, checkpoint_stem
from blockmae.mvh.distortions import (
    DISTORTIONS,
    distort,
    load_amplitude_spectrum,
    load_gamma_table,
    needs_amplitude,
)
from blockmae.mvh.distortions import levels as distortion_levels
from blockmae.mvh.decisions import (
    DecisionMaker,
    ImageNetClassifier,
    ProbeDecisionMaker,
    is_imagenet_classifier,
    load_classifier,
)
from blockmae.mvh.conditions import LEVELS
from blockmae.mvh.metrics import Cell, dataset_cells, interval, resample_weights, shape_bias
from blockmae.mvh.trials import Trial, is_human, trial_file_name, write_trials

RAW_DATA = "raw-data"  # the run dir's folder of trial files, model-vs-human's layout
SHAPE_BIAS_RESAMPLES = 1000  # bootstrap resamples of the images for the shape bias' 95% interval


class Mvh(Diagnostic):
    name = "mvh"
    description = "model-vs-human's datasets: 16-class decisions as its trial files, accuracy, shape bias"
    needs_probe = True  # an encoder decides through its probe; an ImageNet classifier through its own head
    own_data = True  # --root holds model-vs-human's datasets, not the probe's

    def __init__(self) -> None:
        self.classifier: ImageNetClassifier | None = None
        self.gamma_table: torch.Tensor | None = None  # --gamma-table, read before the run starts
        self.power_spectrum: torch.Tensor | None = None  # --power-spectrum, uncentred

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", dest="checkpoint", metavar="SPEC",
                            help="timm:NAME[:FILE], a Hugging Face image classifier dir, or an encoder (as "
                                 "--checkpoint: run dir, checkpoint, .safetensors, 'random', timm:NAME:FILE)")
        parser.add_argument("--datasets", nargs="+", required=True, choices=DATASETS + OWN_DATASETS, metavar="NAME",
                            help=f"model-vs-human datasets ({', '.join(DATASETS)}), or tiny-imagenet (its val "
                                 f"images of the classes in the 16 categories)")
        parser.add_argument("--distortions", nargs="+", default=[], choices=DISTORTIONS, metavar="NAME",
                            help="also apply these of model-vs-human's distortions to every dataset, at all its "
                                 f"levels ({', '.join(DISTORTIONS)}); trial files as <dataset>-<distortion>")
        parser.add_argument("--power-spectrum", metavar="FILE",
                            help="power equalisation's target amplitude spectrum, model-vs-human's "
                                 "mean_power_spectrum_grey.npy (default: the mean over the images distorted)")
        parser.add_argument("--gamma-table", metavar="FILE",
                            help="false colour's monitor table, model-vs-human's x_gamma_function.npy (default: a "
                                 "standard sRGB display)")
        parser.add_argument("--subject", help="the decision maker's name in the trial files (default: the "
                                              "model's name)")

    def resolve_model(self, args: argparse.Namespace, device: torch.device) -> tuple[Encoder, Probe | None] | None:
        self.check_inputs(args)  # before a model loads or a probe trains
        if not args.checkpoint:
            raise BlockMAEError("pass --model SPEC (an ImageNet classifier or an encoder)")
        if args.probe or not is_imagenet_classifier(args.checkpoint):
            return None  # an encoder: the common probe resolution
        self.classifier = load_classifier(args.checkpoint, args.subject).to(device)
        self.check_power_spectrum(self.classifier.image_size)
        self.classifier.autocast = bool(args.autocast)
        return self.classifier.as_encoder(), None

    def check_inputs(self, args: argparse.Namespace) -> None:
        if args.subject is not None and (not args.subject or is_human(args.subject) or "/" in args.subject):
            raise BlockMAEError(f"--subject {args.subject!r}: a model's name, without '/' and not subject-XX "
                                f"(model-vs-human's names for human observers)")
        unused = [flag for flag, value in (("--data", args.data), ("--split", args.split),
                                           ("--num-images", args.num_images)) if value is not None]
        if unused:
            raise BlockMAEError(f"eval mvh takes no {', '.join(unused)}: --datasets names the images, and every image "
                                f"is evaluated (trial files cover whole datasets)")
        if args.root is not None and not Path(args.root).is_dir():
            raise BlockMAEError(f"--root {args.root} is not a folder (expected one folder per dataset in it)")
        for name in args.datasets:  # every dataset readable before the run dir and its registry row
            find_stimuli(name, self.dataset_root(args, name))
        for flag, value, distortion in (("--power-spectrum", args.power_spectrum, "power-equalisation"),
                                        ("--gamma-table", args.gamma_table, "false-colour")):
            if value is not None and distortion not in args.distortions:
                raise BlockMAEError(f"{flag} is used only with --distortions {distortion}")
        self.gamma_table = load_gamma_table(args.gamma_table) if args.gamma_table else None
        self.power_spectrum = load_amplitude_spectrum(args.power_spectrum) if args.power_spectrum else None

    def check_power_spectrum(self, image_size: int) -> None:
        if self.power_spectrum is not None and tuple(self.power_spectrum.shape) != (image_size, image_size):
            raise BlockMAEError(f"--power-spectrum is a {tuple(self.power_spectrum.shape)} spectrum, but the model "
                                f"decides on {image_size}-px images")

    @staticmethod
    def dataset_root(args: argparse.Namespace, name: str) -> Path | None:
        """--root DIR/<name>; without --root, the dataset's default prepared root."""
        return Path(args.root) / name if args.root is not None else None

    def decision_maker(self, ctx: Context) -> DecisionMaker:
        if self.classifier is not None:
            return self.classifier
        assert ctx.probe is not None  # needs_probe: the base resolved one
        name = ctx.args.subject or f"{checkpoint_stem(ctx.encoder.checkpoint)}-probe"
        return ProbeDecisionMaker(ctx.encoder, ctx.probe.head, ctx.probe.meta, name, ctx.autocast)

    def evaluate(self, ctx: Context) -> DiagnosticResult:
        maker = self.decision_maker(ctx)
        self.check_power_spectrum(maker.image_size)
        chance = 1.0 / len(maker.categories)
        levels: dict[str, list[dict[str, Any]]] = {}
        summary: dict[str, Any] = {"num_categories": len(maker.categories)}
        files: dict[str, list[str]] = {}
        lines = [f"{maker.name} on model-vs-human's datasets: {len(maker.categories)} categories "
                 f"(chance {chance:.3f}), {maker.image_size} px input; accuracy with 95% Wilson intervals"]
        for name in ctx.args.datasets:
            ds, stimuli = load_stimuli(name, self.dataset_root(ctx.args, name), maker.image_size)
            covered = set(maker.categories)
            keep = [i for i, s in enumerate(stimuli)
                    if s.category in covered and (s.texture is None or s.texture in covered)]
            runs = [(name, None)] + [(f"{name}-{d}", d) for d in ctx.args.distortions]
            for dataset, distortion in runs:
                trials = self._trials(ctx, maker, ds, stimuli, keep, dataset, distortion)
                written = self._write(ctx, dataset, maker.name, trials)
                files[dataset] = [str(p.relative_to(ctx.run_dir)) for p in written]
                cells = dataset_cells(distortion or dataset, {maker.name: trials})
                rows, overall = self._accuracy(distortion or dataset, cells, maker.name, chance)
                levels[dataset] = rows
                summary.update({f"{dataset}_accuracy": overall["top1"], f"{dataset}_trials": len(trials),
                                f"{dataset}_skipped": (len(stimuli) - len(keep)) * (
                                    1 if distortion is None else len(distortion_levels(distortion)))})
                line = (f"  {dataset:18s} accuracy {overall['top1']:.3f} [{overall['top1_low']:.3f}, "
                        f"{overall['top1_high']:.3f}] on {len(trials)} trials")
                if len(rows) > 1:
                    line += "; by condition " + "  ".join(f"{r['label']}:{r['top1']:.3f}" for r in rows)
                if dataset == "cue-conflict":
                    line += self._shape_bias(cells[0], maker.name, ctx.seed, summary)
                if len(keep) < len(stimuli):
                    line += f" ({len(stimuli) - len(keep)} images of uncovered categories left out)"
                lines.append(line)
        lines.append(f"  trial files: {ctx.run_dir / RAW_DATA} (blockmae mvh benchmark --raw-data reads them)")
        settings = {"datasets": list(ctx.args.datasets), "distortions": list(ctx.args.distortions),
                    "decision_maker": maker.name,
                    "kind": "imagenet-classifier" if self.classifier is not None else "probe",
                    "categories": list(maker.categories), "image_size": maker.image_size, "chance": chance,
                    "root": ctx.args.root, "trial_files": files,
                    "power_spectrum": ctx.args.power_spectrum or "mean over the images distorted",
                    "gamma_table": ctx.args.gamma_table or "sRGB"}
        return DiagnosticResult(settings, levels, summary, lines)

    def _trials(self, ctx: Context, maker: DecisionMaker, ds: Any, stimuli: list[Stimulus], keep: list[int],
                dataset: str, distortion: str | None) -> list[Trial]:
        """The decision maker's trials on the kept stimuli: as they are, or at every level of `distortion`
        (the level is the trial's condition)."""
        if distortion is None:
            conditions = [(None, None)]
        else:
            amplitude = None
            if any(needs_amplitude(distortion, c) for c in distortion_levels(distortion)):
                amplitude = self.power_spectrum if self.power_spectrum is not None else self._mean_amplitude(ctx, ds)
            conditions = [(c, amplitude) for c in distortion_levels(distortion)]
        trials = []
        for condition, amplitude in conditions:
            transform = None
            if condition is not None:
                generator = torch.Generator().manual_seed(zlib.crc32(f"{ctx.seed}/{dataset}/{condition}".encode()))
                transform = partial(distort, distortion, condition, generator=generator, amplitude=amplitude,
                                    gamma_table=self.gamma_table)
            desc = f"mvh {dataset}" + ("" if condition is None else f" {condition}")
            decided = self._decide(ctx, maker, ds, desc, transform)
            trials += [Trial(maker.name, stimuli[i].session, 0, math.nan, decided[i], stimuli[i].category,
                             stimuli[i].condition if condition is None else condition, stimuli[i].imagename)
                       for i in keep]
        return trials

    @staticmethod
    def _mean_amplitude(ctx: Context, ds: Any) -> torch.Tensor:
        """The mean greyscale amplitude spectrum of the dataset's images (power equalisation's target)."""
        total = None
        for images, _, _ in ctx.batches(ds, "mean amplitude spectrum"):
            part = filters.mean_amplitude_spectrum(images) * images.shape[0]
            total = part if total is None else total + part
        return total / len(ds)

    @staticmethod
    def _decide(ctx: Context, maker: DecisionMaker, ds: Any, desc: str,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[str]:
        decided: list[str] = []
        with torch.no_grad():
            for images, _, _ in ctx.batches(ds, desc):
                if transform is not None:
                    images = transform(images)
                probs = maker.category_probabilities(images).float().cpu()
                if not torch.isfinite(probs).all():
                    raise BlockMAEError(f"{maker.name} gives non-finite probabilities ({desc}); check the weights")
                decided += [maker.categories[i] for i in probs.argmax(dim=1).tolist()]
        return decided

    @staticmethod
    def _write(ctx: Context, dataset: str, subject: str, trials: list[Trial]) -> list[Any]:
        """One file per session, trials numbered from 1 within it (as model-vs-human writes them)."""
        if not trials:
            raise BlockMAEError(f"no image of {dataset} belongs to a category this model decides among")
        written = []
        for session in sorted({t.session for t in trials}):
            numbered = [replace(t, trial=i) for i, t in
                        enumerate((t for t in trials if t.session == session), start=1)]
            path = ctx.run_dir / RAW_DATA / dataset / trial_file_name(dataset, subject, session)
            written.append(write_trials(path, numbered))
        return written

    @staticmethod
    def _accuracy(name: str, cells: list[Cell], maker: str,
                  chance: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One row per condition (model-vs-human's order and spelling; "all" for a one-condition dataset)."""
        labels = dict(zip(LEVELS[name].conditions, LEVELS[name].labels)) if name in LEVELS else {}
        rows = [accuracy_row(c.condition or "all", int(c.correct(maker).sum()), len(c.images), chance=chance,
                             label=labels.get(c.condition, c.condition or "all")) for c in cells]
        correct, n = sum(r["correct"] for r in rows), sum(r["n"] for r in rows)
        return rows, accuracy_row("all", correct, n, chance=chance)

    @staticmethod
    def _shape_bias(cell: Cell, maker: str, seed: int, summary: dict[str, Any]) -> str:
        """The benchmark's shape bias (`blockmae.mvh.metrics.shape_bias`), overall and per shape category."""
        weights = resample_weights(len(cell.images), SHAPE_BIAS_RESAMPLES, np.random.default_rng(seed))
        result = shape_bias(cell, weights, [maker])
        overall = interval(result["shape_bias"])
        summary.update({"cue-conflict_shape_bias": overall["value"], "cue-conflict_shape_bias_low": overall["low"],
                        "cue-conflict_shape_bias_high": overall["high"],
                        "cue-conflict_shape_decisions": result["shape_decisions"],
                        "cue-conflict_texture_decisions": result["texture_decisions"]})
        summary.update({f"cue-conflict_shape_bias_{c}": interval(s)["value"]
                        for c, s in result["per_category"].items()})
        if overall["value"] is None:
            return "; shape bias undefined (no shape or texture decision)"
        bounds = "" if overall["low"] is None else f" [{overall['low']:.3f}, {overall['high']:.3f}]"
        return (f"; shape bias {overall['value']:.3f}{bounds} ({result['shape_decisions']} shape, "
                f"{result['texture_decisions']} texture decisions)")


add_arguments, run = command(Mvh)
