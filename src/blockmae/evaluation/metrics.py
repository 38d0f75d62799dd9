"""Accuracy from class scores (one home for top-k, used by the linear and k-NN probes)."""

from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the k highest scores, per k (k capped at the class count).
    A class scored -inf (e.g. one no k-NN neighbour voted for) is never a hit, wherever ties place it."""
    kmax = min(max(ks), scores.shape[1])
    values, top = scores.topk(kmax, dim=1)
    hit = (top == labels.view(-1, 1).to(top.device)) & (values > float("-inf"))
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{'top1': ..., 'top5': ...} as fractions in [0, 1]."""
    n = max(int(labels.shape[0]), 1)
    return {f"top{k}": c / n for k, c in topk_correct(scores, labels, ks).items()}
