"""Masks: JSON round trip, files, summary, equality, ratio."""

import json

import numpy as np
import pytest

from tfcompress.models import residual_cnn
from tfcompress.pruning import ChannelGraph, Masks, fpgm_masks


@pytest.fixture
def masks():
    return fpgm_masks(residual_cnn(width=8), 0.5)


def test_json_round_trip(masks):
    text = masks.to_json()
    assert json.loads(text)["format"] == "tfcompress.pruning.Masks"
    again = Masks.from_json(text)
    assert again == masks
    assert again.layers == masks.layers and again.barriers == masks.barriers


def test_save_and_load(masks, tmp_path):
    path = masks.save(tmp_path / "masks.json")
    assert Masks.load(path) == masks
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_equality_compares_kept_channels(masks):
    other = Masks.from_json(masks.to_json())
    other.kept["stem_conv"] = np.array([0, 1, 2, 5])
    assert other != masks
    assert masks != "masks"


def test_pruned_ratio_counts_prunable_channels(masks):
    assert masks.pruned_ratio == pytest.approx(0.5)
    assert Masks({"a": [0], "b": [0, 1, 2]}, sizes={"a": 4, "b": 4}).pruned_ratio == 0.5
    assert Masks({}, sizes={"a": 4}).pruned_ratio == 0.0
    np.testing.assert_array_equal(Masks({"a": [1, 3]}, sizes={"a": 4}).pruned("a"), [0, 2])


def test_summary_lists_groups_and_barriers(masks):
    text = masks.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["group", "layers", "kept/total", "blocked", "by"]
    stem = next(line for line in lines if line.startswith("stem_conv"))
    assert "4/8" in stem and "stem_bn" in stem
    logits = next(line for line in lines if line.startswith("logits"))
    assert "-/10" in logits and "logits (reaches a model output)" in logits
    assert "pruned 50.0% of the channels of 4 prunable groups" in lines[-1]


@pytest.mark.parametrize("kept,match", [
    ({"a": []}, "at least one"), ({"a": [2, 1]}, "sorted"), ({"a": [0, 0]}, "unique"),
    ({"a": [4]}, r"0\.\.3"), ({"b": [0]}, "no size"),
])
def test_invalid_masks_are_rejected(kept, match):
    with pytest.raises(ValueError, match=match):
        Masks(kept, sizes={"a": 4})


@pytest.mark.parametrize("text,match", [
    ("{", "could not be parsed"), ('{"groups": []}', "Not a tfcompress masks document"),
    ('{"format": "tfcompress.pruning.Masks", "version": 99, "groups": []}', "version 99"),
])
def test_bad_json_is_rejected(text, match):
    with pytest.raises(ValueError, match=match):
        Masks.from_json(text)


def test_graph_groups_interface():
    graph = ChannelGraph(residual_cnn(width=8))
    ids = [g.id for g in graph.groups]
    assert len(ids) == len(set(ids))
    for group in graph.groups:
        assert isinstance(group.id, str) and group.size > 0 and group.layers
        assert group.prunable == (group.id not in graph.barriers)
