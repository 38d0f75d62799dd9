"""Weighted k-NN probe on L2-normalised features (DINO's protocol: k = 20, T = 0.07).

Each of the k nearest training features (cosine similarity s) votes for its class with weight
exp(s / T); class scores are the summed votes. Top-1/top-5 are read from those scores; a class that
received no vote never counts as a hit (with k = 20 a query may have fewer than 5 voted classes).
`knn_classify` also gives each query's top-1 class (the per-image outputs of `blockmae probe`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from blockmae.evaluation.metrics import top1_predictions, topk_accuracy


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (M, num_classes) of the queries: summed exp(sim/T) votes of their k nearest neighbours."""
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature")
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    out = []
    for start in range(0, query_features.shape[0], chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float().to(train.device), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> tuple[dict[str, float], torch.Tensor]:
    """({'top1', 'top5'}, top-1 class per test image) of the weighted k-NN classifier; the classes are ranked
    as the accuracy ranks them, so mean(predictions == labels) is its top1."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    # Every vote is exp(s/T) > 0, so a zero score means no neighbour voted: never a top-k hit.
    scores = scores.masked_fill(scores == 0, float("-inf"))
    return topk_accuracy(scores, test_labels.to(scores.device)), top1_predictions(scores)


def knn_evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
    """{'top1', 'top5'} of the weighted k-NN classifier: :func:`knn_classify` (same arguments) without the
    per-image classes."""
    return knn_classify(*args, **kwargs)[0]
