"""Accuracy from class scores (one home for top-k, used by the linear and k-NN probes), the top-1
decisions behind it, and the reader shared by the per-image output files of probes and shape-bias runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from blockmae.errors import BlockMAEError

# A row whose every class is scored -inf (no k-NN neighbour voted) decides nothing: its prediction is -1.
NO_DECISION = -1


def _ranked(scores: torch.Tensor, ks: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return scores.topk(min(max(ks), scores.shape[1]), dim=1)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the k highest scores, per k (k capped at the class count).
    A class scored -inf (e.g. one no k-NN neighbour voted for) is never a hit, wherever ties place it."""
    values, top = _ranked(scores, ks)
    hit = (top == labels.view(-1, 1).to(top.device)) & (values > float("-inf"))
    return {k: int(hit[:, : min(k, top.shape[1])].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{'top1': ..., 'top5': ...} as fractions in [0, 1]."""
    n = max(int(labels.shape[0]), 1)
    return {f"top{k}": c / n for k, c in topk_correct(scores, labels, ks).items()}


def top1_predictions(scores: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """The top-1 class of every row (int64, on the CPU) exactly as :func:`topk_correct` ranks it: the same
    topk call (so ties break the same way), and NO_DECISION where the top score is -inf. Hence
    mean(predictions == labels) is the `top1` of :func:`topk_accuracy` on the same `ks`."""
    values, top = _ranked(scores, ks)
    return torch.where(values[:, 0] > float("-inf"), top[:, 0], NO_DECISION).cpu().long()


def read_run_output(run_dir: str | Path, filename: str, producer: str) -> dict[str, Any]:
    """The JSON object `filename` of a run dir (or the file itself), in a one-line BlockMAEError when it is
    missing or unreadable; `producer` names the command that writes it (for the advice to rerun)."""
    path = Path(run_dir)
    if path.is_dir() or path.name != filename:
        path = path / filename
    if not path.is_file():
        raise BlockMAEError(f"no {filename} in {path.parent}: the {producer} predates per-image outputs (or did not "
                            f"finish); rerun it")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BlockMAEError(f"cannot read {path} ({err}); rerun the {producer}") from None
    if not isinstance(data, dict):
        raise BlockMAEError(f"{path} is not a {producer}'s {filename} (not a JSON object); rerun the {producer}")
    return data
