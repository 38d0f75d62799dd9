"""The interface of a texture-vs-shape diagnostic (:class:`Diagnostic`, :class:`DiagnosticResult`) and the
results helpers its `evaluate` uses; what the shared machinery does for it.

A diagnostic is ONE module ``blockmae/diagnostics/<name>.py`` holding a subclass of :class:`Diagnostic`
and the two functions the `blockmae` command expects, made by ``diagnostics.runner.command``::

    class Lowpass(Diagnostic):
        name = "lowpass"                      # registry kind, `blockmae eval lowpass`, outputs/lowpass/
        description = "accuracy under low-pass filtering"
        needs_probe = True                    # False: only the frozen encoder is needed

        @classmethod
        def add_options(cls, parser): ...     # its own options (the common ones are added for it)

        def evaluate(self, ctx: Context) -> DiagnosticResult: ...

    add_arguments, run = command(Lowpass)

(``Diagnostic``, ``DiagnosticResult`` and ``accuracy_row`` from here, ``Context`` from diagnostics/context.py,
``command`` from diagnostics/runner.py) plus one row in ``blockmae.diagnostics.DIAGNOSTICS`` (``("lowpass",
"blockmae.diagnostics.lowpass", help)``) and, if wanted, a thin script ``eval/<script>.py`` running
``blockmae.cli.main(["eval", "<name>", *argv])``.

What the shared modules do, so that `evaluate` does not:

* Common arguments (diagnostics/runner.py): ``--checkpoint`` (run dir, checkpoint dir, ``.safetensors`` or
  ``random`` with ``--preset/--img-size/--patch-size/--arch-from/--init-seed``), ``--probe RUN`` (optional),
  ``--probe-config``/``--probe-set`` (settings of a probe trained here),
  ``--data/--root/--split/--num-images`` (the evaluation images), ``--batch-size``, ``--device``,
  ``--autocast/--no-autocast`` (bf16; default on where the device has fast bf16, i.e. CUDA), ``--out`` (run
  dir), ``--output-root`` (registry root), ``--name``, ``--seed``.
* Encoder and probe (diagnostics/probes.py; the encoder from ``models.factory.load_encoder``; a diagnostic
  that loads its model itself, e.g. a classifier with its own head, overrides
  :meth:`Diagnostic.resolve_model`): with ``--probe`` the head is loaded and its weights hash is checked
  against the encoder's. With only ``--checkpoint``, the standard linear probe
  (``evaluation.cli_probe.run_probe``, ``ProbeConfig`` defaults or ``--probe-config`` plus ``--probe-set``
  overrides) is trained on the dataset the checkpoint was pretrained on (its run's ``config.yaml``; ``--data``
  overrides), unless the registry already holds a completed probe run for the same weights hash and the same
  settings, which is reused. The command says which.
* The images (diagnostics/context.py): :meth:`Context.dataset` loads the evaluation split (the probe's
  dataset, root and eval split unless ``--data/--root/--split`` say otherwise; ``--num-images`` takes a seeded
  random subset); :meth:`Context.scores` classifies a dataset in batches on the device, after an optional
  batched ``transform(images, index)`` on float images in [0, 1] at the encoder's input size (filters,
  recombinations...), with a progress bar. :meth:`Context.features` gives frozen features instead.
* Outputs (diagnostics/runner.py), in the run dir (``--out``, default
  ``<output-root>/<name>/<checkpoint>-<time>``): ``results.json`` = ``{"run_id", "diagnostic", "settings",
  "encoder", "probe", "levels", "summary", "figures"}`` where ``levels`` maps a curve name to its rows (one
  per level, accuracies with their 95% intervals, e.g. from :func:`accuracy_row`) and ``summary`` holds the
  headline numbers (also the registry row's metrics); every figure written by :meth:`Context.save_figure`
  lands in ``figures/`` as PNG beside a CSV of the numbers drawn. The registry row has kind = the diagnostic's
  name and parent = the checkpoint's pretraining run id (or the checkpoint's path when no run is registered),
  so ``blockmae runs --kind lowpass`` lists them. results.json is written last and atomically.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from blockmae.diagnostics.context import Context
from blockmae.diagnostics.probes import Probe
from blockmae.evaluation.metrics import topk_correct
from blockmae.models.factory import Encoder
from blockmae.report.stats import wilson_interval


@dataclass
class DiagnosticResult:
    """What `Diagnostic.evaluate` returns: written to results.json (and `summary` to the registry)."""

    settings: dict[str, Any]  # the diagnostic's own settings (levels, modes, ...)
    levels: dict[str, list[dict[str, Any]]]  # curve name -> one row per level
    summary: dict[str, Any]  # headline numbers (flat: str -> number/str)
    lines: list[str] = field(default_factory=list)  # printed after the run (what a user reads first)


class Diagnostic:
    """Base class of a diagnostic; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_probe: ClassVar[bool] = True
    # True: `--checkpoint A B C` runs the diagnostic once per checkpoint, then `compare` draws them together.
    compares_checkpoints: ClassVar[bool] = False
    # True: --data/--root/--split name the diagnostic's own images (e.g. DTD), not the probe's dataset;
    # the probe and ctx.dataset() then use the checkpoint's pretraining dataset.
    own_data: ClassVar[bool] = False

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add the diagnostic's own options (the common ones are already there)."""

    def resolve_model(self, args: argparse.Namespace, device: torch.device) -> tuple[Encoder, Probe | None] | None:
        """The model, when the diagnostic loads it itself (e.g. a classifier with its own head); None: the
        common --checkpoint/--probe resolution. Called first: also the place to refuse bad options early."""
        return None

    def check(self, args: argparse.Namespace, encoder: Encoder) -> None:
        """Refuse bad options (BlockMAEError) once the encoder is known, before the run dir and registry row."""

    def evaluate(self, ctx: Context) -> DiagnosticResult:
        raise NotImplementedError

    def compare(self, runs: Sequence[tuple[str, Path, DiagnosticResult]], out_dir: Path) -> list[str]:
        """Figures (and their CSVs) comparing finished runs, written into `out_dir`; returns lines to print."""
        raise NotImplementedError


def accuracy_row(level: Any, correct: int, n: int, **extra: Any) -> dict[str, Any]:
    """One level's accuracy with its 95% Wilson interval: {level, n, correct, top1, top1_low, top1_high, ...}."""
    accuracy = correct / n if n else float("nan")
    interval = wilson_interval(accuracy, n)
    return {"level": level, "n": n, "correct": correct, "top1": accuracy, "top1_low": interval.low,
            "top1_high": interval.high, **extra}


def correct_count(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> int:
    return topk_correct(scores, labels, (k,))[k]
