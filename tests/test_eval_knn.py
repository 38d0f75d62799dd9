import math

import torch

from blockmae.evaluation.knn import knn_evaluate, knn_scores


def test_hand_computed_votes():
    train = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[3.0, 0.0]])
    # cosine similarities: 1, 0, 1/sqrt(2), -1 -> k=2 neighbours: #0 (class 0) and #2 (class 1)
    scores = knn_scores(train, labels, query, num_classes=3, k=2, temperature=0.5)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp((1 / math.sqrt(2)) / 0.5), 0.0]])
    assert torch.allclose(scores, expected, rtol=1e-5)
    # k=3 adds #1 (class 1, sim 0): 4.11 + 1 for class 1, still below class 0's e^2 = 7.39 at T=0.5 ...
    scores = knn_scores(train, labels, query, num_classes=3, k=3, temperature=0.5)
    assert scores.argmax().item() == 0
    assert torch.isclose(scores[0, 1], torch.tensor(math.exp(math.sqrt(2)) + 1.0))
    # ... and above it at T=2: e^(0.354) + 1 = 2.42 against e^0.5 = 1.65.
    scores = knn_scores(train, labels, query, num_classes=3, k=3, temperature=2.0)
    assert scores.argmax().item() == 1
    assert torch.isclose(scores[0, 1], torch.tensor(math.exp(1 / math.sqrt(2) / 2) + 1.0))


def test_top5_never_counts_a_class_without_votes():
    """k=1: each query gets one voted class; the other nine tie at zero, and whichever of them topk
    happens to list must not make the true label a top-5 hit."""
    train = torch.eye(10)
    labels = torch.arange(10)
    queries = torch.eye(10).roll(1, dims=1)  # nearest neighbour is always the wrong class
    query_labels = torch.arange(10)
    acc = knn_evaluate(train, labels, queries, query_labels, num_classes=10, k=1)
    assert acc == {"top1": 0.0, "top5": 0.0}
    # With k=2 exactly two classes get votes: the true one is among them for every query.
    queries = torch.eye(10) + torch.eye(10).roll(1, dims=1) * 1.5
    acc = knn_evaluate(train, labels, queries, query_labels, num_classes=10, k=2)
    assert acc == {"top1": 0.0, "top5": 1.0}


def test_clusters_and_chunking():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=gen)
    ytr = torch.arange(8).repeat(50)
    yte = torch.arange(8).repeat(10)
    xtr = centres[ytr] + 0.1 * torch.randn(len(ytr), 16, generator=gen)
    xte = centres[yte] + 0.1 * torch.randn(len(yte), 16, generator=gen)
    acc = knn_evaluate(xtr, ytr, xte, yte, 8)
    assert acc["top1"] == 1.0 and acc["top5"] == 1.0
    full = knn_scores(xtr, ytr, xte, 8, chunk_size=10_000)
    chunked = knn_scores(xtr, ytr, xte, 8, chunk_size=7)
    assert torch.allclose(full, chunked)
    # Random labels: top-1 near chance, top-5 above top-1.
    rand = ytr[torch.randperm(len(ytr), generator=gen)]
    acc = knn_evaluate(xtr, rand, xte, yte, 8)
    assert acc["top1"] < 0.4 and acc["top5"] >= acc["top1"]


def test_scale_invariance():
    gen = torch.Generator().manual_seed(1)
    x, q = torch.randn(30, 5, generator=gen), torch.randn(4, 5, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    assert torch.allclose(knn_scores(x, y, q, 3, k=5), knn_scores(x * 7, y, q * 0.1, 3, k=5), rtol=1e-4)
