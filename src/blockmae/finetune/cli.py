"""`blockmae finetune --config configs/finetune.yaml checkpoint=PATH|random [key=value ...]`."""

from __future__ import annotations

import argparse

from blockmae.config import add_config_arguments, load_config, to_yaml
from blockmae.engine.distributed import torchrun_env
from blockmae.finetune.config import FinetuneConfig
from blockmae.finetune.engine import finetune, format_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune a pretrained encoder end to end with MAE's recipe (layer-wise lr decay, drop path, RandAugment, "
        "mixup/cutmix, label smoothing; timm's implementations). checkpoint=random fine-tunes an untrained encoder of "
        "the same recipe (the baseline; model.arch_from=RUN copies a run's architecture). Top-1/top-5 on the eval "
        "split after every epoch; a run dir holding checkpoints/last resumes. Multi-GPU: torchrun --nproc_per_node G "
        "-m blockmae finetune ...")

    add_config_arguments(parser, "config: a file or a shipped name (e.g. finetune)",
                         "dotted overrides, e.g. checkpoint=outputs/run model.train_blocks=4 train.epochs=50")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0

    run_dir, results = finetune(cfg)
    if torchrun_env().is_main and results:
        print(format_results(cfg, results))
        print(f"done: {run_dir}")
    return 0
