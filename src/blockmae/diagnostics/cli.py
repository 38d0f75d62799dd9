"""A diagnostic as a `blockmae eval NAME` command: the common arguments every diagnostic takes and
:func:`command`, which makes a module's ``add_arguments, run`` from its Diagnostic subclass.
"""

from __future__ import annotations

import argparse
from typing import Callable

from blockmae.config import number
from blockmae.diagnostics.plugin import Diagnostic
from blockmae.diagnostics.runner import run_diagnostic, run_several


def add_common_arguments(parser: argparse.ArgumentParser, several_checkpoints: bool = False) -> None:
    encoder = parser.add_argument_group("encoder and probe")
    several = {"nargs": "+"} if several_checkpoints else {}
    encoder.add_argument("--checkpoint", **several,
                         help="pretraining run dir, checkpoint dir, .safetensors file, or 'random' "
                              "(default with --probe: the probe's checkpoint)"
                              + ("; several: one run each plus a comparison (see the docs)" if several else ""))
    encoder.add_argument("--probe", help="probe run dir or head.safetensors (default: train the standard linear "
                                         "probe, or reuse one already trained for the same weights and settings)")
    encoder.add_argument("--probe-config", help="probe YAML for a probe trained here: a file or a shipped name (e.g. linear_probe)")
    encoder.add_argument("--probe-set", action="append", default=[], metavar="KEY=VALUE",
                         help="override of a probe trained here, e.g. linear.epochs=20 (repeatable)")
    encoder.add_argument("--preset", default="vit_micro", help="checkpoint=random: architecture preset")
    encoder.add_argument("--arch-from", help="checkpoint=random: copy this checkpoint's architecture")
    encoder.add_argument("--img-size", type=number(int, ">=1"), default=32, help="checkpoint=random: input size")
    encoder.add_argument("--patch-size", type=number(int, ">=1"), default=4, help="checkpoint=random: patch size")
    encoder.add_argument("--init-seed", type=number(int, ">=0"),
                         default=0, help="checkpoint=random: initialisation seed")
    data = parser.add_argument_group("evaluation images")
    data.add_argument("--data", help="dataset (default: the probe's; without --probe: the checkpoint's pretraining "
                                     "dataset, shapetex for random)")
    data.add_argument("--root", help="dataset root (default: the probe's or the pretraining run's)")
    data.add_argument("--split", help="split evaluated (default: the probe's eval split)")
    data.add_argument("--num-images", type=number(int, ">=1"),
                      help="evaluate a seeded random subset of this many images")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=number(int, ">=1"), default=256, help="images per batch (default 256)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    run.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast (default: on for CUDA with bf16, off elsewhere)")
    run.add_argument("--out", help="run directory (default: <output-root>/<diagnostic>/<checkpoint>-<time>)")
    run.add_argument("--output-root", default="outputs", help="registry and probe root (default: outputs)")
    run.add_argument("--name", help="run name (default: derived from the checkpoint)")
    run.add_argument("--seed", type=number(int, ">=0"), default=0, help="seed of subsets, donors and bootstraps")


def command(diagnostic: type[Diagnostic]) -> tuple[Callable[[argparse.ArgumentParser], None],
                                                   Callable[[argparse.Namespace], int]]:
    """(add_arguments, run) for `blockmae.cli` from a Diagnostic subclass."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(parser, several_checkpoints=diagnostic.compares_checkpoints)
        diagnostic.add_options(parser.add_argument_group(f"{diagnostic.name} options"))

    def run(args: argparse.Namespace) -> int:
        checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
        if len(checkpoints) > 1:
            run_several(diagnostic, args, checkpoints)
            return 0
        args.checkpoint = checkpoints[0]
        run_diagnostic(diagnostic(), args)
        return 0

    return add_arguments, run
