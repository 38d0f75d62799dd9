#!/usr/bin/env python
"""Linear probe of a frozen encoder, as `blockmae probe` (the seed layout's entry point).

    python train/train_linear.py --config configs/linear_probe.yaml checkpoint=PATH [key=value ...]
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
    raise SystemExit(main(["probe", *sys.argv[1:]]))
