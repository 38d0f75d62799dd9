"""The attention diagnostic's maths (rollout, centre of mass, entropy, attention distance, similarity)
and occluders, against hand computations and independent references; and attention capture in the model."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from scipy import stats

from blockmae.diagnostics import attention as att
from blockmae.diagnostics import occlusion as occ
from blockmae.errors import BlockMAEError
from blockmae.models import build_mae


def random_attention(batch: int, heads: int, tokens: int, seed: int) -> torch.Tensor:
    logits = torch.randn(batch, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


# ------------------------------------------------------------------------------------------ rollout
def test_rollout_equals_the_hand_computed_product_and_rows_stay_stochastic():
    layers = [random_attention(2, 3, 5, seed) for seed in range(3)]
    by_hand = torch.eye(5).expand(2, 5, 5)
    for attention in layers:  # each layer: mean over heads, plus identity, rows normalised; last leftmost
        a = attention.mean(1) + torch.eye(5)
        a = a / a.sum(-1, keepdim=True)
        by_hand = a @ by_hand
    rollout = att.rollout_matrix(layers, "mean")
    torch.testing.assert_close(rollout, by_hand)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 5))
    assert (rollout >= 0).all()
    # Where row sums differ (max fusion, discard), dividing by a.sum(-1) without keepdim broadcasts along
    # the wrong axis and leaves rows that do not sum to 1: the rollout's rows still do.
    fused = layers[0].amax(1) + torch.eye(5)
    wrong = fused / fused.sum(-1)[:, None, :]
    assert not torch.allclose(wrong.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(att.rollout_matrix(layers, "max").sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(att.rollout_matrix(layers[:1], "max"), fused / fused.sum(-1, keepdim=True))


def test_two_token_rollout_by_hand():
    # One head, cls and one patch; the patch attends 0.5/0.5, cls fully to the patch.
    attention = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    # + I -> [[1, 1], [0.5, 1.5]] -> rows / [2, 2] -> [[0.5, 0.5], [0.25, 0.75]]
    torch.testing.assert_close(att.rollout_matrix([attention])[0], torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    # Two layers: the square of that matrix.
    torch.testing.assert_close(att.rollout_matrix([attention, attention])[0],
                               torch.tensor([[0.375, 0.625], [0.3125, 0.6875]]))


@pytest.mark.parametrize("fusion, reduce", [("max", torch.amax), ("min", torch.amin)])
def test_max_and_min_head_fusion(fusion, reduce):
    layer = random_attention(1, 4, 5, 3)
    a = reduce(layer, dim=1) + torch.eye(5)
    torch.testing.assert_close(att.rollout_matrix([layer], fusion), a / a.sum(-1, keepdim=True))


def test_uniform_attention_stack_gives_a_uniform_map_and_identity_stack_a_map_on_nothing_but_cls():
    # Uniform attention (every query spreads evenly over all tokens): the rollout rows are all equal to
    # (I + U)/2 powers, whose cls row spreads evenly over the patches, so the map is uniform.
    grid, tokens = (3, 3), 10
    uniform = [torch.full((2, 2, tokens, tokens), 1 / tokens) for _ in range(4)]
    for source in att.ROLLOUT_SOURCES:
        maps = att.rollout_maps(uniform, grid, source=source)
        assert maps.shape == (2, 3, 3)
        torch.testing.assert_close(maps, torch.full((2, 3, 3), 1 / 9))
        torch.testing.assert_close(att.map_entropy(maps), torch.ones(2))
    # Identity attention with the identity residual stays the identity: the cls row is one-hot on cls and
    # carries no mass on any patch (what is mathematically true; the map is then all zero, not uniform).
    identity = [torch.eye(tokens).expand(1, 2, tokens, tokens) for _ in range(3)]
    rollout = att.rollout_matrix(identity)
    torch.testing.assert_close(rollout[0], torch.eye(tokens))
    assert att.rollout_maps(identity, grid).abs().sum() == 0


def test_patch_source_is_the_mean_of_the_patch_rows():
    layers = [random_attention(2, 2, 5, s) for s in range(2)]
    rollout = att.rollout_matrix(layers)
    expected = rollout[:, 1:, 1:].mean(1)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(att.rollout_maps(layers, (2, 2), source="patches").flatten(1), expected)
    cls = rollout[:, 0, 1:] / rollout[:, 0, 1:].sum(-1, keepdim=True)
    torch.testing.assert_close(att.rollout_maps(layers, (2, 2)).flatten(1), cls)


def test_discard_drops_the_weakest_patch_weights_of_every_image_and_keeps_cls_entries():
    fused = att.fuse_heads(random_attention(3, 2, 5, 7))
    kept = att.discard_weakest(fused, 0.5)
    for b in range(3):  # every image of the batch, not only the first
        patches = fused[b, 1:, 1:].flatten()
        threshold = patches.sort().values[8]  # 16 patch entries: the weakest 8 dropped, the 9th kept
        expected = torch.where(fused[b, 1:, 1:] >= threshold, fused[b, 1:, 1:], 0.0)
        torch.testing.assert_close(kept[b, 1:, 1:], expected)
        assert (kept[b, 1:, 1:] == 0).sum() == 8
    torch.testing.assert_close(kept[:, 0], fused[:, 0])
    torch.testing.assert_close(kept[:, :, 0], fused[:, :, 0])
    assert torch.equal(att.discard_weakest(fused, 0.0), fused)
    rollout = att.rollout_matrix([random_attention(3, 2, 5, 7)], discard_ratio=0.5)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3, 5))
    with pytest.raises(BlockMAEError, match="discard"):
        att.discard_weakest(fused, 1.0)


def test_rollout_errors_are_one_line_blockmae_errors():
    with pytest.raises(BlockMAEError, match="fusion"):
        att.rollout_matrix([random_attention(1, 1, 5, 0)], "median")
    with pytest.raises(BlockMAEError, match="grid"):
        att.rollout_maps([random_attention(1, 1, 5, 0)], (3, 3))
    with pytest.raises(BlockMAEError, match="source"):
        att.rollout_maps([random_attention(1, 1, 5, 0)], (2, 2), source="avg")
    with pytest.raises(BlockMAEError, match="at least one"):
        att.rollout_matrix([])


# -------------------------------------------------------------------------- centre, entropy, distance
def test_centre_of_mass_of_one_hot_maps_is_their_position_and_of_two_points_the_midpoint():
    maps = torch.zeros(3, 4, 5)
    maps[0, 1, 3] = 1
    maps[1, 3, 0] = 2  # not normalised: the centre does not depend on the scale
    maps[2, 0, 0] = maps[2, 2, 4] = 1
    torch.testing.assert_close(att.centre_of_mass(maps), torch.tensor([[1.0, 3.0], [3.0, 0.0], [1.0, 2.0]]))
    torch.testing.assert_close(att.displacement(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])),
                               torch.tensor([5.0]))


def test_entropy_of_uniform_and_one_hot_maps_and_of_raw_attention():
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 2, 1] = 1
    torch.testing.assert_close(att.map_entropy(torch.ones(2, 4, 4)), torch.ones(2))
    torch.testing.assert_close(att.map_entropy(one_hot), torch.zeros(1))
    two = torch.zeros(1, 4, 4)
    two[0, 0, :2] = 0.5  # log 2 / log 16 = 1/4
    torch.testing.assert_close(att.map_entropy(two), torch.tensor([0.25]))
    raw = torch.zeros(2, 3, 5, 5)
    raw[:, 0] = 1 / 5  # head 0 uniform
    raw[:, 1] = torch.eye(5)  # head 1 one-hot
    raw[:, 2, :, :2] = 0.5  # head 2 on two keys
    torch.testing.assert_close(att.attention_entropy(raw), torch.tensor([[1.0, 0.0, math.log(2) / math.log(5)]] * 2))


def test_mean_attention_distance_of_uniform_attention_is_the_mean_pairwise_patch_distance():
    grid = (3, 4)
    n = 12
    coords = [(r, c) for r in range(3) for c in range(4)]
    direct = sum(math.dist(p, q) for p in coords for q in coords) / n**2
    uniform = torch.full((2, 3, n + 1, n + 1), 1 / (n + 1))
    torch.testing.assert_close(att.mean_attention_distance(uniform, grid), torch.full((2, 3), direct))
    # Attention only to oneself: distance 0; only to the right neighbour (where there is one): 1.
    torch.testing.assert_close(att.mean_attention_distance(torch.eye(n + 1).expand(1, 1, -1, -1), grid),
                               torch.zeros(1, 1))
    right = torch.zeros(1, 1, n + 1, n + 1)
    right[..., 0, 0] = 1
    for i, (r, c) in enumerate(coords):
        right[..., 1 + i, 1 + i + 1 if c < 3 else 0] = 1  # the last column attends to cls: left out
    right[..., 1 + 3, 0] = right[..., 1 + 7, 0] = right[..., 1 + 11, 0] = 1
    assert att.mean_attention_distance(right, grid).item() == pytest.approx(9 / 12)


# ---------------------------------------------------------------------------------------- similarity
def test_map_similarity_matches_scipy_outside_the_kept_region():
    gen = torch.Generator().manual_seed(0)
    clean, occluded = torch.rand(4, 5, 5, generator=gen), torch.rand(4, 5, 5, generator=gen)
    occluded[1] = clean[1] * 3 + 0.1  # same order, other scale: both correlations are 1
    occluded[2, 0, :3] = occluded[2, 1, :3] = 0.5  # ties: average ranks, as scipy
    keep = torch.ones(4, 5, 5, dtype=torch.bool)
    keep[:, 3:, 3:] = False
    spearman = att.map_similarity(clean, occluded, keep, "spearman")
    pearson = att.map_similarity(clean, occluded, keep, "pearson")
    for b in range(4):
        x, y = clean[b][keep[b]].numpy(), occluded[b][keep[b]].numpy()
        assert spearman[b].item() == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-5)
        assert pearson[b].item() == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-5)
    assert spearman[1].item() == pytest.approx(1.0) and pearson[1].item() == pytest.approx(1.0)
    # Inside the occluder anything may happen: it does not change the similarity.
    changed = occluded.clone()
    changed[:, 3:, 3:] = 100
    torch.testing.assert_close(att.map_similarity(clean, changed, keep), spearman)
    assert torch.isnan(att.map_similarity(clean, torch.ones(4, 5, 5), keep)).all()  # constant: undefined


def test_region_mass_and_patch_coverage():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :4] = 1  # figure = the top-left 2x2 patches of 4 px ... at patch size 2: 2x2 of the 4x4 grid
    masks[0, 4, 4] = 1  # one pixel of patch (2, 2): a quarter of it
    coverage = att.patch_coverage(masks, 2)
    assert coverage.shape == (1, 4, 4)
    assert coverage[0, :2, :2].eq(1).all() and coverage[0, 2, 2].item() == 0.25 and coverage.sum().item() == 4.25
    torch.testing.assert_close(att.region_mass(torch.ones(1, 4, 4), coverage), torch.tensor([4.25 / 16]))
    on_figure = torch.zeros(1, 4, 4)
    on_figure[0, 0, 1] = 2
    torch.testing.assert_close(att.region_mass(on_figure, coverage), torch.tensor([1.0]))


def test_displacement_summary_and_stability_per_image():
    summary = att.displacement_summary(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, float("nan")]), side=8)
    assert summary["mean_patches"] == pytest.approx(2.0) and summary["median_patches"] == pytest.approx(2.0)
    assert summary["p90_patches"] == pytest.approx(3.6)
    assert summary["mean_fraction_of_side"] == pytest.approx(0.25)
    similarity = torch.tensor([[1.0, 0.5, float("nan")], [0.0, 0.2, 0.4]])
    torch.testing.assert_close(att.stability_per_image(similarity), torch.tensor([0.75, 0.2]))


# ----------------------------------------------------------------------------------------- occluders
def test_sliding_blocks_cover_every_fitting_position_once():
    masks, corners = occ.sliding_block_masks((4, 5), 2)
    assert masks.shape == (12, 4, 5) and corners.shape == (12, 2)
    assert masks.sum((1, 2)).eq(4).all()
    assert torch.equal(masks[0, :2, :2], torch.ones(2, 2, dtype=torch.bool)) and masks[0].sum() == 4
    assert corners[-1].tolist() == [2, 3] and masks[-1, 2:, 3:].all()
    torch.testing.assert_close(occ.block_centres(corners[:1], 2), torch.tensor([[0.5, 0.5]]))
    assert occ.sliding_block_masks((4, 4), 1)[0].shape == (16, 4, 4)
    with pytest.raises(BlockMAEError, match="does not fit"):
        occ.sliding_block_masks((4, 4), 5)


def test_patch_drop_drops_the_asked_fraction_differently_per_image_and_deterministically():
    masks = occ.patch_drop_masks(6, (4, 4), 0.25, torch.Generator().manual_seed(0))
    assert masks.shape == (6, 4, 4) and masks.sum((1, 2)).eq(4).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1
    assert torch.equal(masks, occ.patch_drop_masks(6, (4, 4), 0.25, torch.Generator().manual_seed(0)))
    with pytest.raises(BlockMAEError, match="fraction"):
        occ.patch_drop_masks(1, (4, 4), 1.0, torch.Generator())


def test_occlude_fills_exactly_the_masked_patches():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = True
    mean = torch.tensor([0.1, 0.2, 0.3])
    out = occ.occlude(images, mask, 2, "mean", mean)
    assert torch.equal(out[:, :, 2:4, 4:6], mean.view(1, 3, 1, 1).expand(2, 3, 2, 2))
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[2:4, 4:6] = False
    assert torch.equal(out[:, :, untouched], images[:, :, untouched])
    noisy = occ.occlude(images, mask, 2, "noise", mean, torch.tensor([0.0, 0.0, 1.0]),
                        torch.Generator().manual_seed(1))
    assert torch.equal(noisy[:, :2, 2:4, 4:6], out[:, :2, 2:4, 4:6])  # zero std: the mean
    assert not torch.equal(noisy[:, 2, 2:4, 4:6], out[:, 2, 2:4, 4:6])
    assert torch.equal(noisy[:, :, untouched], images[:, :, untouched])
    with pytest.raises(BlockMAEError, match="does not cover"):
        occ.occlude(images, mask, 4)


# ------------------------------------------------------------------------------ capture in the model
def test_attention_capture_only_inside_its_block_while_every_other_call_stays_fused():
    torch.manual_seed(0)
    model = build_mae("vit_nano", img_size=32, patch_size=4).eval()
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", side_effect=sdpa) as spy, torch.no_grad():
        before = model.forward_features(imgs)
        fused_calls = spy.call_count
        with model.capturing_attention() as maps:
            inside = model.forward_features(imgs)
        assert spy.call_count == fused_calls  # inside: the explicit path, no SDPA call
        after = model.forward_features(imgs)
        assert spy.call_count == 2 * fused_calls == 2 * len(model.blocks)  # fused again afterwards
    assert len(maps) == len(model.blocks) and maps[0].shape == (2, model.blocks[0].attn.num_heads, 65, 65)
    torch.testing.assert_close(inside, before)  # the explicit path computes the same attention
    assert torch.equal(after, before)  # and the default path is untouched
    with torch.no_grad():
        model.forward_features(imgs)
    assert len(maps) == len(model.blocks)  # nothing captured after the block


def test_bootstrap_interval_of_a_mean_and_channel_statistics():
    from blockmae.data.base import ImageTensorDataset
    from blockmae.diagnostics.attention_rollout import bootstrap_mean_interval, channel_stats

    assert bootstrap_mean_interval(torch.full((20,), 0.3), seed=0) == pytest.approx((0.3, 0.3))
    values = torch.cat([torch.zeros(50), torch.ones(50), torch.tensor([float("nan")])])
    low, high = bootstrap_mean_interval(values, seed=0)
    assert 0.38 < low < 0.5 < high < 0.62  # about 0.5 +- 1.96 * 0.05, the NaN left out
    assert bootstrap_mean_interval(values, seed=0) == (low, high)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = 255
    images[:2, 1] = 255  # channel 1: half the images white
    mean, std = channel_stats(ImageTensorDataset(images, torch.zeros(4, dtype=torch.long), ["a"]), 8, chunk=3)
    torch.testing.assert_close(mean, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(std, torch.tensor([0.0, 0.5, 0.0]))
