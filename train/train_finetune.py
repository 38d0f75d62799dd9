#!/usr/bin/env python
"""Fine-tuning of a pretrained encoder, as `blockmae finetune` (the seed layout's entry point).

    python train/train_finetune.py --config configs/finetune.yaml checkpoint=PATH [key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import blockmae  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blockmae.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["finetune", *sys.argv[1:]]))
