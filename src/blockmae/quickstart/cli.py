"""`blockmae quickstart`: the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from blockmae.config import add_config_arguments, number, to_yaml
from blockmae.lock import RunLock
from blockmae.fileio import claim_output_dir
from blockmae.quickstart.config import CPU_CONFIG, GPU_CONFIG, load_quickstart_config
from blockmae.quickstart.run import run_quickstart


QUICKSTART_KIND = "quickstart"  # fileio.output_kind's name for a quickstart folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder (default: outputs/quickstart)")
    parser.add_argument("--train", action="store_true",
                        help="after the answer, also pretrain the three arms here (your run) and compare them with "
                             "the references (default: off on a CPU, so the answer alone fits about 5 minutes)")
    parser.add_argument("--budget-seconds", type=number(float, ">0"), default=None,
                        help="with --train: fit your arms' pretraining (epochs and images, never above the config's) "
                             "so that your run takes about this long (default: the config's budget_seconds; "
                             "budget_seconds=null disables it)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the arms in full with the reference encoders' own recipe (implies --train, no "
                             "budget) and test whether this machine reproduces them")
    parser.add_argument("--seed", type=number(int, ">=0"), default=None,
                        help="seed of pretraining and probes (default: the config's)")
    add_config_arguments(parser, f"quickstart config: a file or a shipped name (default: {GPU_CONFIG.stem} when "
                                 f"CUDA is available, else {CPU_CONFIG.stem})",
                         "config overrides, e.g. pretrain.train.epochs=12 references=false")


def run(args: argparse.Namespace) -> int:
    """`blockmae quickstart`."""
    cfg = load_quickstart_config(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    out = Path(args.out)
    claim_output_dir(out, QUICKSTART_KIND)
    with RunLock(out):  # one quickstart per folder, as one pretraining per run dir
        report = run_quickstart(cfg, out)
    print(f"report: {report}")
    return 0
