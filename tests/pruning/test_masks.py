"""Masks: JSON round trip, files, summary, equality, ratio."""

import json

import numpy as np
import pytest

from tfcompress.models import residual_cnn
from tfcompress.pruning import ChannelGraph, Masks, fpgm_masks


@pytest.fixture
def masks():
    return fpgm_masks(residual_cnn(width=8), 0.5)


HAND_MADE = {
    "format": "tfcompress.pruning.Masks", "version": 1,
    "groups": [
        {"id": "conv", "size": 4, "layers": ["conv", "bn"], "kept": [0, 2]},
        {"id": "head", "size": 3, "layers": ["head"], "barriers": [["head", "model output"]]},
    ],
}


def test_json_document_is_the_hand_written_one():
    masks = Masks({"conv": [0, 2]}, sizes={"conv": 4, "head": 3},
                  layers={"conv": ["conv", "bn"], "head": ["head"]},
                  barriers={"head": [("head", "model output")]})
    assert json.loads(masks.to_json()) == HAND_MADE


def test_json_is_read_back_field_by_field(masks, tmp_path):
    loaded = Masks.from_json(json.dumps(HAND_MADE))
    assert loaded.sizes == {"conv": 4, "head": 3}
    assert list(loaded.kept) == ["conv"] and loaded.kept["conv"].tolist() == [0, 2]
    assert loaded.layers == {"conv": ("conv", "bn"), "head": ("head",)}
    assert loaded.barriers == {"head": (("head", "model output"),)}
    assert loaded.pruned("conv").tolist() == [1, 3]
    path = masks.save(tmp_path / "masks.json")  # a file holds what the masks hold
    document = json.loads(path.read_text())
    assert {g["id"]: g.get("kept") for g in document["groups"] if "kept" in g} == {
        gid: idx.tolist() for gid, idx in masks.kept.items()}
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
    ({"a": [-1]}, r"0\.\.3"), ({"a": [2, 1]}, "sorted"), ({"a": [0, 0]}, "unique"),
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
