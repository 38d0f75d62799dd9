import math

import pytest
import torch

from blockmae.evaluation.shape_bias import (
    bootstrap_interval,
    category_probabilities,
    cue_conflict_shape_bias,
    shape_bias_from_decisions,
    shapetex_shape_bias,
)


def test_hand_made_decisions():
    shape = torch.tensor([0, 1, 2, 3, 4])
    texture = torch.tensor([1, 2, 3, 0, 0])
    decisions = torch.tensor([0, 2, 9, 1, 4])  # shape, texture, neither, neither, shape
    r = shape_bias_from_decisions(decisions, shape, texture)
    assert (r.n_shape, r.n_texture, r.n_neither, r.n_images) == (2, 1, 2, 5)
    assert r.shape_bias == pytest.approx(2 / 3)
    assert r.frac_neither == pytest.approx(0.4)
    assert r.low <= r.shape_bias <= r.high
    with pytest.raises(ValueError, match="conflicting"):
        shape_bias_from_decisions(decisions, shape, shape)


def test_no_decisions_gives_nan():
    r = shape_bias_from_decisions(torch.tensor([5, 5]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert math.isnan(r.shape_bias) and math.isnan(r.low)


def test_bootstrap_contains_estimate_and_narrows_with_n():
    lo1, hi1 = bootstrap_interval(30, 10, 10)
    lo2, hi2 = bootstrap_interval(300, 100, 100)
    assert lo1 < 0.75 < hi1 and lo2 < 0.75 < hi2
    assert (hi2 - lo2) < 0.5 * (hi1 - lo1)  # ~ 1/sqrt(10) as wide
    # Normal approximation of a proportion over 400 decisions: half-width ~ 1.96 * sqrt(p(1-p)/n)
    assert (hi2 - lo2) / 2 == pytest.approx(1.96 * math.sqrt(0.75 * 0.25 / 400), rel=0.15)
    assert bootstrap_interval(5, 0, 0) == (1.0, 1.0)


def test_shapetex_report():
    report = shapetex_shape_bias(
        torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0]),
        torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]),
        torch.tensor([4, 0, 6, 7]), torch.tensor([4, 5, 6, 9]),
    )
    m = report.metrics()
    assert m["shape_bias"] == 1.0 and m["shape_only_acc"] == pytest.approx(2 / 3)
    assert m["texture_only_as_shape"] == pytest.approx(0.5) and m["frac_neither"] == 0.0


def test_category_aggregation_uses_mean_and_drops_uncovered():
    class_ids = ["n1", "n2", "n3", "n4"]
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    mapping = {"cat": ["n1", "n2", "nX"], "dog": ["n3"], "oven": ["nY"], "bird": ["n4"]}
    cat, covered = category_probabilities(probs, class_ids, mapping)
    assert covered == ["cat", "dog", "bird"]
    assert torch.allclose(cat, torch.tensor([[0.3, 0.3, 0.1]]))


def test_cue_conflict_restricts_to_covered_conflicts():
    categories = ["cat", "dog", "oven", "bird"]
    mapping = {"cat": ["n1", "n2"], "dog": ["n3"], "bird": ["n4"]}
    # images: (shape, texture) = cat/dog, dog/cat, cat/oven (uncovered texture), bird/bird (agree), bird/cat
    shape = torch.tensor([0, 1, 0, 3, 3])
    texture = torch.tensor([1, 0, 2, 3, 0])
    probs = torch.tensor([
        [0.4, 0.4, 0.1, 0.1],  # cat 0.4 > dog 0.1 -> shape
        [0.3, 0.3, 0.2, 0.2],  # cat 0.3 > dog 0.2 -> texture
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.9, 0.1],  # dog -> neither
    ])
    result, used, covered = cue_conflict_shape_bias(probs, ["n1", "n2", "n3", "n4"], mapping, categories, shape, texture)
    assert covered == ["cat", "dog", "bird"]
    assert used.tolist() == [True, True, False, False, True]
    assert (result.n_shape, result.n_texture, result.n_neither) == (1, 1, 1)
    assert result.shape_bias == 0.5
