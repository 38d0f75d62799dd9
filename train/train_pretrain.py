#!/usr/bin/env python
"""Pretrain a (block-)masked autoencoder: the classic entry point, same as `blockmae pretrain`.

    python train/train_pretrain.py --config configs/pretrain_block.yaml [key=value ...]
    torchrun --nproc_per_node 8 train/train_pretrain.py --config configs/pretrain_block.yaml
"""

import sys
from pathlib import Path

try:
    import blockmae  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # a plain checkout: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blockmae.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["pretrain", *sys.argv[1:]]))
