"""Figures: reconstructions of masked images (`reconstructions`) and the one way every figure is written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure atomically (temp file beside it, then rename) and close it.

    A crash or Ctrl-C mid-write never leaves a truncated PNG over a good one.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
