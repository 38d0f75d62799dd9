"""`blockmae pretrain --config FILE [--resume PATH] [key=value ...]` (also `python -m blockmae` under torchrun)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pretrain a masked autoencoder. Settings come from the schema defaults, then --config, then the "
        "key=value overrides (e.g. train.epochs=50 mask.block=4 run.dir=outputs/b4). Without run.dir the run dir "
        "is <output_root>/<name>-<hash of the settings>, so the same command resumes the same run; a run dir "
        "holding checkpoints resumes automatically, and settings that would change the training are refused "
        "unless listed in run.allow_changes=[key,...]. One process writes a run dir at a time. Multi-GPU: torchrun --nproc_per_node G -m blockmae pretrain ...")
    from blockmae.config import add_config_arguments

    parser.add_argument("--resume", metavar="PATH", help="resume from this run dir or checkpoint dir (= run.resume)")
    add_config_arguments(parser, "config: a file or a shipped name (e.g. smoke, pretrain_block)",
                         "dotted config overrides")


def run(args: argparse.Namespace) -> int:
    from blockmae.config import load_config, to_yaml
    from blockmae.engine.config import PretrainConfig

    overrides = list(args.overrides) + ([f"run.resume={args.resume}"] if args.resume else [])
    cfg = load_config(PretrainConfig, args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from blockmae.evaluation.monitor import pretrain_monitored as pretrain

    run_dir = pretrain(cfg)
    from blockmae.engine.distributed import torchrun_env

    if torchrun_env().is_main:
        print(f"done: {run_dir}")
    return 0
