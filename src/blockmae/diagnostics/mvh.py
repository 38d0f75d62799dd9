"""`blockmae eval mvh`: a decision maker on model-vs-human's datasets, written as its trial files.

``--model SPEC`` is an ImageNet-1k classifier with its own head (``timm:NAME[:FILE]``, a Hugging Face
image classifier directory: 16 categories by model-vs-human's rule) or any encoder blockmae takes, through
its linear probe (``--probe RUN``, or the standard probe trained / reused as for every diagnostic; a
Tiny-ImageNet probe covers 11 categories). See `blockmae.mvh.decisions`.

``--datasets NAME ...`` are read from ``--root DIR/<name>`` (a folder prepared by ``blockmae data prepare
mvh-<name>``, or model-vs-human's own ``datasets/`` folder); without --root from each dataset's default
prepared root. ``--distortion NAME`` applies one of the 12 parametric distortions at its levels to the
datasets first (`blockmae.mvh.distortions`); the trial files then name the level as the condition.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blockmae.data.mvh import DATASETS, find_stimuli, load_stimuli
from blockmae.diagnostics.base import (
    Context,
    Diagnostic,
    DiagnosticResult,
    Probe,
    accuracy_row,
    checkpoint_stem,
    command,
)
from blockmae.errors import BlockMAEError
from blockmae.evaluation.features import Encoder
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

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", dest="checkpoint", metavar="SPEC",
                            help="timm:NAME[:FILE], a Hugging Face image classifier dir, or an encoder (as "
                                 "--checkpoint: run dir, checkpoint, .safetensors, 'random', timm:NAME:FILE)")
        parser.add_argument("--datasets", nargs="+", required=True, choices=DATASETS, metavar="NAME",
                            help=f"model-vs-human datasets: {', '.join(DATASETS)}")
        parser.add_argument("--subject", help="the decision maker's name in the trial files (default: the "
                                              "model's name)")

    def resolve_model(self, args: argparse.Namespace, device: torch.device) -> tuple[Encoder, Probe | None] | None:
        if not args.checkpoint:
            raise BlockMAEError("pass --model SPEC (an ImageNet classifier or an encoder)")
        if args.probe or not is_imagenet_classifier(args.checkpoint):
            return None  # an encoder: the common probe resolution
        self.classifier = load_classifier(args.checkpoint, args.subject).to(device)
        return self.classifier.as_encoder(), None

    def check(self, args: argparse.Namespace, encoder: Encoder) -> None:
        if args.subject is not None and (not args.subject or is_human(args.subject) or "/" in args.subject):
            raise BlockMAEError(f"--subject {args.subject!r}: a model's name, without '/' and not subject-XX "
                                f"(model-vs-human's names for human observers)")
        if args.root is not None and not Path(args.root).is_dir():
            raise BlockMAEError(f"--root {args.root} is not a folder (expected one folder per dataset in it)")
        for name in args.datasets:  # every dataset readable before the run dir and its registry row
            find_stimuli(name, self.dataset_root(args, name))

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
        covered = set(maker.categories)
        chance = 1.0 / len(maker.categories)
        levels: dict[str, list[dict[str, Any]]] = {}
        summary: dict[str, Any] = {"num_categories": len(maker.categories)}
        files: dict[str, str] = {}
        lines = [f"{maker.name} on model-vs-human's datasets: {len(maker.categories)} categories "
                 f"(chance {chance:.3f}), {maker.image_size} px input; accuracy with 95% Wilson intervals"]
        for name in ctx.args.datasets:
            ds, stimuli = load_stimuli(name, self.dataset_root(ctx.args, name), maker.image_size, progress=False)
            decided = self._decide(ctx, maker, ds, name)
            keep = [i for i, s in enumerate(stimuli)
                    if s.category in covered and (s.texture is None or s.texture in covered)]
            trials = [Trial(maker.name, stimuli[i].session, 0, math.nan, decided[i], stimuli[i].category,
                            stimuli[i].condition, stimuli[i].imagename) for i in keep]
            written = self._write(ctx, name, maker.name, trials)
            files[name] = [str(p.relative_to(ctx.run_dir)) for p in written]
            cells = dataset_cells(name, {maker.name: trials})
            rows, overall = self._accuracy(name, cells, maker.name, chance)
            levels[name] = rows
            summary[f"{name}_accuracy"] = overall["top1"]
            summary[f"{name}_trials"] = len(trials)
            summary[f"{name}_skipped"] = len(stimuli) - len(trials)
            line = (f"  {name:18s} accuracy {overall['top1']:.3f} [{overall['top1_low']:.3f}, "
                    f"{overall['top1_high']:.3f}] on {len(trials)} images")
            if len(rows) > 1:
                line += "; by condition " + "  ".join(f"{r['level']}:{r['top1']:.3f}" for r in rows)
            if name == "cue-conflict":
                line += self._shape_bias(cells[0], maker.name, ctx.seed, summary)
            if len(trials) < len(stimuli):
                line += f" ({len(stimuli) - len(trials)} of uncovered categories left out)"
            lines.append(line)
        lines.append(f"  trial files: {ctx.run_dir / RAW_DATA} (blockmae mvh benchmark --raw-data reads them)")
        settings = {"datasets": list(ctx.args.datasets), "decision_maker": maker.name,
                    "kind": "imagenet-classifier" if self.classifier is not None else "probe",
                    "categories": list(maker.categories), "image_size": maker.image_size, "chance": chance,
                    "root": ctx.args.root, "trial_files": files}
        return DiagnosticResult(settings, levels, summary, lines)

    @staticmethod
    def _decide(ctx: Context, maker: DecisionMaker, ds: Any, name: str) -> list[str]:
        decided: list[str] = []
        with torch.no_grad():
            for images, _, _ in ctx.batches(ds, f"mvh {name}"):
                probs = maker.category_probabilities(images).float().cpu()
                if not torch.isfinite(probs).all():
                    raise BlockMAEError(f"{maker.name} gives non-finite probabilities on {name}; check the weights")
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
    def _accuracy(name: str, cells: list[Cell], maker: str, chance: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
        summary.update({f"cue-conflict_shape_bias_{c}": interval(s)["value"] for c, s in result["per_category"].items()})
        if overall["value"] is None:
            return "; shape bias undefined (no shape or texture decision)"
        bounds = "" if overall["low"] is None else f" [{overall['low']:.3f}, {overall['high']:.3f}]"
        return (f"; shape bias {overall['value']:.3f}{bounds} ({result['shape_decisions']} shape, "
                f"{result['texture_decisions']} texture decisions)")


add_arguments, run = command(Mvh)
