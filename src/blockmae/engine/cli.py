"""`blockmae pretrain --config FILE [--resume PATH] [key=value ...]` (also `python -m blockmae` under torchrun)."""

from __future__ import annotations

import argparse

from blockmae.config import add_config_arguments, load_config, to_yaml
from blockmae.engine.config import PretrainConfig
from blockmae.engine.distributed import torchrun_env
from blockmae.evaluation.monitor import pretrain_monitored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pretrain a masked autoencoder. Settings come from the schema defaults, then --config, then the "
        "key=value overrides (e.g. train.epochs=50 mask.block=4 run.dir=outputs/b4). Without run.dir the run dir "
        "is <output_root>/<name>-<hash of the settings>, so the same command resumes the same run; a run dir "
        "holding checkpoints resumes automatically, and settings that would change the training are refused "
        "unless listed in run.allow_changes=[key,...]. One process writes a run dir at a time. Multi-GPU: torchrun --nproc_per_node G -m blockmae pretrain ...")

    parser.add_argument("--resume", metavar="PATH", help="resume from this run dir or checkpoint dir (= run.resume)")
    add_config_arguments(parser, "config: a file or a shipped name (e.g. smoke, pretrain_block)",
                         "dotted config overrides")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"run.resume={args.resume}"] if args.resume else [])
    cfg = load_config(PretrainConfig, args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    run_dir = pretrain_monitored(cfg)

    if torchrun_env().is_main:
        print(f"done: {run_dir}")
    return 0
