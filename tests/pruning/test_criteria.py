"""Criteria, kept-count arithmetic and the arguments of fpgm_masks."""

import numpy as np
import pytest

from tfcompress.models import residual_cnn
from tfcompress.pruning import (
    CRITERIA,
    ChannelGraph,
    fpgm_masks,
    keep_count,
    select_masks,
    zero_pruned,
)
from tfcompress.pruning.criteria import fpgm, l1_norm, l2_norm


def test_fpgm_matches_the_definition():
    rng = np.random.default_rng(0)
    filters = rng.normal(size=(5, 7))
    expected = [sum(np.linalg.norm(filters[i] - filters[j]) for j in range(5)) for i in range(5)]
    # the Gram product runs in float32, the precision of Keras weights
    np.testing.assert_allclose(fpgm(filters), expected, rtol=1e-6)


def test_fpgm_ranks_like_the_float64_definition_on_large_groups():
    rng = np.random.default_rng(3)
    filters = rng.normal(size=(300, 2000)).astype(np.float32)
    f64 = filters.astype(np.float64)
    exact = np.array([np.linalg.norm(f64 - row, axis=1).sum() for row in f64])  # definition
    np.testing.assert_allclose(fpgm(filters), exact, rtol=1e-5)
    assert np.array_equal(np.argsort(fpgm(filters))[:150], np.argsort(exact)[:150])


def test_fpgm_prunes_the_filter_nearest_the_geometric_median():
    filters = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    scores = fpgm(filters)
    assert np.argmin(scores) == 3  # the point in the middle is the most replaceable
    assert np.argmin(l2_norm(filters)) == 0  # a norm criterion would drop the zero filter


def test_norms():
    filters = np.array([[3.0, -4.0], [1.0, 0.0]])
    np.testing.assert_allclose(l1_norm(filters), [7.0, 1.0])
    np.testing.assert_allclose(l2_norm(filters), [5.0, 1.0])


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_scores_each_filter(name):
    filters = np.random.default_rng(1).normal(size=(6, 4))
    scores = CRITERIA[name](filters)
    assert scores.shape == (6,) and np.all(np.isfinite(scores))
    # scores depend on the filters: scaling one filter up changes its score
    bigger = filters.copy()
    bigger[2] *= 10
    assert CRITERIA[name](bigger)[2] != scores[2]


@pytest.mark.parametrize("size,ratio,round_to,min_channels,blocks,expected", [
    (10, 0.3, 1, 1, 1, 7), (10, 0.0, 1, 1, 1, 10), (10, 0.99, 1, 1, 1, 1),
    (10, 0.3, 4, 1, 1, 8), (10, 0.3, 8, 1, 1, 8), (10, 0.1, 8, 1, 1, 10), (10, 0.9, 1, 3, 1, 3),
    (64, 0.5, 8, 1, 1, 32), (16, 0.3, 1, 1, 4, 12), (16, 0.9, 1, 1, 4, 4), (3, 0.5, 1, 5, 1, 3),
])
def test_keep_count(size, ratio, round_to, min_channels, blocks, expected):
    assert keep_count(size, ratio, round_to, min_channels, blocks) == expected


def test_round_to_and_min_channels_apply_to_every_group():
    model = residual_cnn(width=16)
    masks = fpgm_masks(model, 0.7, round_to=4, min_channels=8)
    for gid, kept in masks.kept.items():
        assert len(kept) % 4 == 0 and len(kept) >= 8


def test_per_layer_and_exclude():
    model = residual_cnn(width=16)
    masks = fpgm_masks(model, 0.5, per_layer={"block1a_bn": 0.75}, exclude=["block2b_conv"])
    assert len(masks.kept["block1a_conv"]) == 4  # the BN belongs to block1a_conv's group
    assert len(masks.kept["block2b_conv"]) == 32
    assert len(masks.kept["stem_conv"]) == 8


def _hand_made_filters(model):
    """Gives stem_conv's 8 filters orthogonal directions and norms 1..8 (filter i has norm
    i + 1), and zeroes block1b_conv, the other producer of stem_conv's residual group, so
    the group's filters are exactly the hand-made ones."""
    other = model.get_layer("block1b_conv")
    other.kernel.assign(np.zeros(other.kernel.shape, np.float32))
    conv = model.get_layer("stem_conv")
    kernel = np.zeros(conv.kernel.shape, np.float32)
    directions = np.eye(kernel[..., 0].size, dtype=np.float32)
    for i in range(8):
        kernel[..., i] = directions[i].reshape(kernel.shape[:-1]) * (i + 1)
    conv.kernel.assign(kernel)
    return conv


@pytest.mark.parametrize("criterion,expected", [
    ("l1", [4, 5, 6, 7]),  # the four largest norms, derived by hand from the filters
    ("l2", [4, 5, 6, 7]),
])
def test_norm_criteria_keep_the_largest_filters_of_a_group(criterion, expected):
    model = residual_cnn(width=8)
    _hand_made_filters(model)
    masks = fpgm_masks(model, 0.5, criterion=criterion)
    np.testing.assert_array_equal(masks.kept["stem_conv"], expected)


def test_fpgm_keeps_the_filters_far_from_the_others():
    """Orthogonal filters of norms 1..8: the distance between i and j is
    sqrt((i+1)^2 + (j+1)^2), so the sum of distances grows with the norm and FPGM keeps the
    four largest, like the norms; shifting them all by a common vector changes no distance,
    so FPGM keeps the same filters while l1 then keeps others."""
    model = residual_cnn(width=8)
    conv = _hand_made_filters(model)
    distances = [sum(np.hypot(i + 1, j + 1) for j in range(8) if j != i) for i in range(8)]
    expected = np.sort(np.argsort(distances)[-4:])
    masks = fpgm_masks(model, 0.5, criterion="fpgm")
    np.testing.assert_array_equal(masks.kept["stem_conv"], expected)
    conv.kernel.assign(conv.kernel.numpy() - conv.kernel.numpy()[..., 7:8])  # filter 7 -> 0
    np.testing.assert_array_equal(fpgm_masks(model, 0.5).kept["stem_conv"], expected)
    assert not np.array_equal(fpgm_masks(model, 0.5, criterion="l1").kept["stem_conv"],
                              expected)


def test_per_layer_alone_prunes_only_the_groups_it_names():
    model = residual_cnn(width=16)
    masks = fpgm_masks(model, per_layer={"block2a_conv": 0.5})
    pruned = {gid for gid, idx in masks.kept.items() if len(idx) < masks.sizes[gid]}
    assert pruned == {"block2a_conv"} and len(masks.kept["block2a_conv"]) == 16


def test_per_layer_accepts_group_ids_and_layer_names_alike():
    model = residual_cnn(width=16)
    by_bn = fpgm_masks(model, 0.0, per_layer={"block1a_bn": 0.5})  # a layer of the group
    by_id = fpgm_masks(model, 0.0, per_layer={"block1a_conv": 0.5})  # the group id
    assert len(by_bn.kept["block1a_conv"]) == len(by_id.kept["block1a_conv"]) == 8


def test_soft_mode_can_bring_back_a_zeroed_filter():
    """Scores are computed among all filters, zeroed ones included: after the zeroed
    filters regrow, re-scoring on the current weights can select them again."""
    model = residual_cnn(width=8)
    graph = ChannelGraph(model)
    first = select_masks(graph, 0.5)
    zero_pruned(graph, first)
    conv = model.get_layer("block1a_conv")
    kernel = conv.kernel.numpy()
    pruned = np.setdiff1d(np.arange(8), first.kept["block1a_conv"])
    kernel[..., pruned] = np.random.default_rng(0).normal(0, 5, kernel[..., pruned].shape)
    conv.kernel.assign(kernel)
    again = select_masks(graph, 0.5)
    assert set(again.kept["block1a_conv"]) & set(pruned)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"ratio": 1.0}, ValueError, r"ratio.*\[0, 1\).*1.0"),
    ({"ratio": -0.1}, ValueError, r"\[0, 1\)"),
    ({"ratio": float("nan")}, ValueError, r"\[0, 1\)"),
    ({"ratio": "half"}, TypeError, r"\[0, 1\).*'half' \(str\)"),
    ({}, TypeError, r"Give `ratio`.*or\s+`per_layer`"),
    ({"ratio": 0.3, "criterion": "taylor"}, ValueError, r"'taylor'.*\['fpgm', 'l1', 'l2'\]"),
    ({"ratio": 0.3, "criterion": 3}, TypeError, r"criterion.*got 3"),
    ({"ratio": 0.3, "per_layer": {"nope": 0.5}}, ValueError, r"per_layer.*'nope'.*Valid names"),
    ({"ratio": 0.3, "per_layer": {"stem_conv": 1.5}}, ValueError, r"per_layer\['stem_conv'\]"),
    ({"ratio": 0.3, "per_layer": [0.5]}, TypeError, r"per_layer.*map layer names"),
    ({"ratio": 0.3, "exclude": ["nope"]}, ValueError, r"exclude.*'nope'"),
    ({"ratio": 0.3, "exclude": [3]}, TypeError, r"exclude.*string names"),
    ({"ratio": 0.3, "round_to": 0}, ValueError, r"round_to.*>= 1, got 0"),
    ({"ratio": 0.3, "min_channels": 2.5}, TypeError, r"min_channels.*integer, got 2.5"),
])
def test_bad_arguments_name_the_problem(kwargs, error, match):
    model = residual_cnn(width=8)
    with pytest.raises(error, match=match):
        fpgm_masks(model, **kwargs)


def test_custom_criterion_callable():
    model = residual_cnn(width=8)
    masks = fpgm_masks(model, 0.5, criterion=lambda f: -np.arange(len(f)))
    np.testing.assert_array_equal(masks.kept["stem_conv"], [0, 1, 2, 3])
