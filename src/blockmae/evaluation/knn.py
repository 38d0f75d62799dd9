"""Weighted k-NN probe on L2-normalised features (DINO's protocol: k = 20, T = 0.07).

Each of the k nearest training features (cosine similarity s) votes for its class with weight
exp(s / T); class scores are the summed votes. Top-1/top-5 are read from those scores; a class that
received no vote never counts as a hit (with k = 20 a query may have fewer than 5 voted classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blockmae.evaluation.metrics import topk_accuracy


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


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """{'top1', 'top5'} of the weighted k-NN classifier on the test features."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    # Every vote is exp(s/T) > 0, so a zero score means no neighbour voted: never a top-k hit.
    scores = scores.masked_fill(scores == 0, float("-inf"))
    return topk_accuracy(scores, test_labels.to(scores.device))
