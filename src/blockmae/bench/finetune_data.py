"""`blockmae bench finetune-data`: the fine-tuning input paths, timed in one run on the same images.

Peer: the batched on-device crop + flip (data.rand_augment=null). Measured: timm's RandAugment + random
erasing per sample (the recipe's default), in the main process and in DataLoader workers.
"""

from __future__ import annotations

import argparse
import json

import torch

from blockmae.bench.data import _time_epoch
from blockmae.config import load_config
from blockmae.data import load_dataset
from blockmae.engine.distributed import DistInfo
from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.finetune.config import FinetuneConfig
from blockmae.finetune.engine import _AugmentedBatches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=number(int, ">=1"),
                        default=4096, help="ShapeTex images to time (default 4096)")
    parser.add_argument("--image-size", type=number(int, ">=1"), default=64, help="resolution (default 64)")
    parser.add_argument("--batch-size", type=number(int, ">=1"), default=128, help="batch size (default 128)")
    parser.add_argument("--workers", type=number(int, ">=0"),
                        default=2, help="DataLoader workers of the per-sample path (default 2)")
    parser.add_argument("--threads", type=number(int, ">=1"), default=1,
                        help="torch CPU threads of the main process (default 1: the shared-machine setting)")
    parser.add_argument("--rand-augment", default=None, help="timm RandAugment spec (default: the fine-tuning config's)")


def run(args: argparse.Namespace) -> int:
    if args.images < args.batch_size or args.batch_size < 2 or args.workers < 0 or args.threads < 1:
        raise BlockMAEError("--images must be >= --batch-size >= 2, --workers >= 0 and --threads >= 1")
    torch.set_num_threads(args.threads)
    spec = args.rand_augment or FinetuneConfig().data.rand_augment
    dataset = load_dataset("shapetex", "train", image_size=args.image_size, num_images=args.images)
    device = torch.device("cpu")
    rates = {}
    for label, ra, workers in (("batched_crop_flip", "null", 0), ("randaugment_main_process", spec, 0),
                               (f"randaugment_{args.workers}_workers", spec, args.workers)):
        cfg = load_config(FinetuneConfig, None, [f"data.rand_augment={ra}", f"data.workers={workers}"])
        batches = _AugmentedBatches(cfg, dataset, args.image_size, args.batch_size, device, DistInfo())
        total = len(batches) * args.batch_size
        rates[label] = _time_epoch(batches.iter_from(0), total, label, device)
    peer = rates["batched_crop_flip"]
    print(json.dumps({"image_size": args.image_size, "images": args.images, "torch_threads": torch.get_num_threads(),
                      "rand_augment": spec, "img_per_s": {k: round(v) for k, v in rates.items()},
                      "ratio_vs_batched": {k: round(v / peer, 3) for k, v in rates.items()}}, indent=2))
    return 0
