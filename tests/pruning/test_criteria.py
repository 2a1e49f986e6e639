"""Criteria, kept-count arithmetic and the arguments of fpgm_masks."""

import itertools

import numpy as np
import pytest

from tfcompress.models import residual_cnn
from tfcompress.pruning import CRITERIA, ChannelGraph, fpgm_masks, keep_count
from tfcompress.pruning.criteria import fpgm, l1_norm, l2_norm


def test_fpgm_matches_the_definition():
    rng = np.random.default_rng(0)
    filters = rng.normal(size=(5, 7))
    expected = [sum(np.linalg.norm(filters[i] - filters[j]) for j in range(5)) for i in range(5)]
    np.testing.assert_allclose(fpgm(filters), expected, rtol=1e-10)


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


def test_masks_are_deterministic_and_criteria_differ():
    model = residual_cnn(width=16)
    graph = ChannelGraph(model)
    assert graph.compute_masks(0.5) == graph.compute_masks(0.5)
    by_name = {name: graph.compute_masks(0.5, criterion=name) for name in CRITERIA}
    assert any(a != b for a, b in itertools.combinations(by_name.values(), 2))


def test_soft_mode_can_bring_back_a_zeroed_filter():
    """Scores are computed among all filters, zeroed ones included: after the zeroed
    filters regrow, re-scoring on the current weights can select them again."""
    model = residual_cnn(width=8)
    graph = ChannelGraph(model)
    first = graph.compute_masks(0.5)
    graph.apply(first)
    conv = model.get_layer("block1a_conv")
    kernel = conv.kernel.numpy()
    pruned = np.setdiff1d(np.arange(8), first.kept["block1a_conv"])
    kernel[..., pruned] = np.random.default_rng(0).normal(0, 5, kernel[..., pruned].shape)
    conv.kernel.assign(kernel)
    again = graph.compute_masks(0.5)
    assert set(again.kept["block1a_conv"]) & set(pruned)


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": 1.0}, r"ratio.*\[0, 1\).*1.0"),
    ({"ratio": -0.1}, r"\[0, 1\)"),
    ({"ratio": "half"}, r"\[0, 1\)"),
    ({"ratio": 0.3, "criterion": "taylor"}, r"'taylor'.*\['fpgm', 'l1', 'l2'\]"),
    ({"ratio": 0.3, "per_layer": {"nope": 0.5}}, r"per_layer.*'nope'.*Valid names include"),
    ({"ratio": 0.3, "per_layer": {"stem_conv": 1.5}}, r"per_layer\['stem_conv'\]"),
    ({"ratio": 0.3, "exclude": ["nope"]}, r"exclude.*'nope'"),
    ({"ratio": 0.3, "round_to": 0}, r"round_to.*positive"),
    ({"ratio": 0.3, "min_channels": 2.5}, r"min_channels.*positive"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    model = residual_cnn(width=8)
    with pytest.raises(ValueError, match=match):
        fpgm_masks(model, **kwargs)


def test_custom_criterion_callable():
    model = residual_cnn(width=8)
    masks = fpgm_masks(model, 0.5, criterion=lambda f: -np.arange(len(f)))
    np.testing.assert_array_equal(masks.kept["stem_conv"], [0, 1, 2, 3])
