#!/usr/bin/env python
"""`blockmae eval dtd` as a script (same arguments; `--help` lists them).

    python eval/dtd_transfer.py --checkpoint RUN [--probe PROBE_RUN] [options]
"""

import sys
from pathlib import Path

try:
    import blockmae  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # a plain checkout: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from blockmae.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval", "dtd", *sys.argv[1:]]))
