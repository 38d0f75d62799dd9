"""Figures: reconstructions of masked images (`reconstructions`) and the one way every figure is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockmae.fileio import atomic_path


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure atomically (temp file beside it, then rename) and close it.

    A crash or Ctrl-C mid-write never leaves a truncated PNG over a good one.
    """
    import matplotlib.pyplot as plt  # heavy: only when a figure is drawn

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:  # matplotlib picks the format from the suffix
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path
