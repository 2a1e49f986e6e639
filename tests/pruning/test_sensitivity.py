"""Sensitivity scans: measurement, exact MAC prediction, allocation and serialization."""

import json

import numpy as np
import pytest

from tfcompress._keras import keras
from tfcompress.models import residual_cnn
from tfcompress.pruning import ChannelGraph, fpgm_masks
from tfcompress.pruning.sensitivity import Sensitivity, sensitivity

RATIOS = (0.25, 0.5, 0.75)


def output_distance(x):
    """``evaluate``: minus the mean distance of the outputs to the unpruned model's."""
    reference = None

    def evaluate(model):
        nonlocal reference
        out = model(x, training=False).numpy()
        if reference is None:
            reference = out
        return -float(np.abs(out - reference).mean())

    return evaluate


def conv_chain():
    """Plain Conv->Conv->Conv: a consumer is the next group's producer, so no group has a
    layer of its own and per_layer names overlap."""
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c3"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(4, name="out"),
    ])


def two_branches():
    """Identical branches ``a`` and ``b``, but ``b`` is scaled by 1e-3: it hardly matters."""
    x = keras.Input((8, 8, 2))
    branches = []
    for name in ("a", "b"):
        h = keras.layers.Conv2D(8, 3, padding="same", name=name)(x)
        h = keras.layers.ReLU(name=f"{name}_relu")(h)
        branches.append(keras.layers.Conv2D(4, 1, name=f"{name}_out")(h))
    model = keras.Model(x, keras.layers.Add(name="sum")(branches))
    layer = model.get_layer("b_out")
    layer.set_weights([w * 1e-3 for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")


@pytest.fixture(scope="module")
def scanned(data):
    keras.utils.set_random_seed(3)
    model = residual_cnn(width=8)
    before = [w.copy() for w in model.get_weights()]
    scan = sensitivity(model, output_distance(data), RATIOS, progress=False)
    return model, scan, before


def test_scan_covers_every_prunable_group_and_restores_the_weights(scanned):
    model, scan, before = scanned
    graph = ChannelGraph(model)
    assert list(scan.table) == [g.id for g in graph.groups if g.prunable]
    assert all(list(row) == list(RATIOS) for row in scan.table.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert scan.baseline == 0.0 and scan.total_macs == graph.macs()


def test_drops_and_savings_grow_with_the_ratio(scanned):
    _, scan, _ = scanned
    for gid, drops in scan.table.items():
        values = list(drops.values())
        assert all(d > 0 for d in values), gid
        assert values[-1] > values[0], gid
        saved = list(scan.macs_saved[gid].values())
        assert all(0 < a < b for a, b in zip(saved, saved[1:])), gid
        kept = scan.group(gid).kept
        assert all(a > b for a, b in zip(kept, kept[1:])), gid


@pytest.mark.parametrize("build", [lambda: residual_cnn(width=8), conv_chain],
                         ids=["residual", "conv_chain"])
def test_predicted_macs_are_exact_for_any_combination(build, data):
    model = build()
    x = np.random.default_rng(1).normal(size=(4,) + model.input_shape[1:]).astype("float32")
    scan = sensitivity(model, output_distance(x), RATIOS, progress=False)
    graph = ChannelGraph(model)
    rng = np.random.default_rng(2)
    for _ in range(12):
        per_layer = {name: float(rng.choice((0.0,) + RATIOS)) for name in scan.layer_names.values()}
        _, kept = scan.predict(per_layer)
        masks = graph.compute_masks(0.0, per_layer=per_layer)
        assert kept == pytest.approx(graph.macs(masks) / graph.macs(), abs=1e-12)


@pytest.mark.parametrize("target", [0.9, 0.6, 0.35])
def test_ratios_for_reaches_the_target_when_applied(scanned, target):
    model, scan, _ = scanned
    per_layer = scan.ratios_for(target)
    assert set(per_layer) == set(scan.layer_names.values())
    graph = ChannelGraph(model)
    kept = graph.macs(fpgm_masks(model, 0.0, per_layer=per_layer)) / graph.macs()
    assert kept <= target + 1e-9
    assert kept > target - 0.25  # no gratuitous over-pruning


def test_ratios_for_prunes_the_insensitive_branch_first(data):
    model = two_branches()
    x = np.random.default_rng(4).normal(size=(8, 8, 8, 2)).astype("float32")
    scan = sensitivity(model, output_distance(x), (0.25, 0.5, 0.75), progress=False)
    assert scan.table["b"][0.5] < scan.table["a"][0.5] / 100
    per_layer = scan.ratios_for(0.75)
    assert per_layer == {"a": 0.0, "b": 0.5}
    per_layer = scan.ratios_for(0.5)
    assert per_layer["b"] == 0.75 and 0 < per_layer["a"] < per_layer["b"]


def test_ratios_for_validates_the_target(scanned):
    _, scan, _ = scanned
    assert set(scan.ratios_for(1.0).values()) == {0.0}
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="macs_target"):
            scan.ratios_for(bad)
    with pytest.raises(ValueError, match="cannot be reached"):
        scan.ratios_for(0.01)


def test_json_round_trip_save_load_summary_and_plot(scanned, tmp_path):
    _, scan, _ = scanned
    copy = Sensitivity.from_json(scan.to_json())
    assert copy.to_json() == scan.to_json()
    assert copy.table == scan.table and copy.interactions == scan.interactions
    assert copy.ratios_for(0.5) == scan.ratios_for(0.5)
    path = scan.save(tmp_path / "scan.json")
    assert Sensitivity.load(path).table == scan.table
    assert json.loads(path.read_text())["format"] == "tfcompress.pruning.Sensitivity"
    summary = scan.summary()
    assert all(gid in summary for gid in scan.table) and "0.75" in summary
    png = scan.plot(tmp_path / "scan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json", "scan.png"]  # no temp left


def test_from_json_rejects_other_documents():
    with pytest.raises(ValueError, match="parsed"):
        Sensitivity.from_json("{not json")
    with pytest.raises(ValueError, match="sensitivity document"):
        Sensitivity.from_json(json.dumps({"format": "tfcompress.pruning.Masks"}))


def test_groups_by_id_or_layer_name_and_progress(data, capsys):
    model = residual_cnn(width=8)
    scan = sensitivity(model, output_distance(data), (0.5,), groups=["block2a_conv", "block2b_bn"])
    assert list(scan.table) == ["block2a_conv", "block2b_conv"]
    assert "evaluation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ratios_for"):
        scan.predict({"nope": 0.5})


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ratios=(0.0, 0.5)), ValueError, "ratios"),
    (dict(ratios=()), ValueError, "ratios"),
    (dict(ratios=(0.5, 1.0)), ValueError, "ratios"),
    (dict(groups=["nope"]), ValueError, "group id"),
    (dict(groups=["image"]), ValueError, "cannot be pruned"),
    (dict(criterion="nope"), ValueError, "criterion"),
])
def test_bad_arguments_name_the_problem(kwargs, error, match):
    model = residual_cnn(width=4)
    with pytest.raises(error, match=match):
        sensitivity(model, lambda m: 1.0, progress=False, **kwargs)


def test_bad_evaluate_is_explained():
    model = residual_cnn(width=4)
    with pytest.raises(TypeError, match="evaluate"):
        sensitivity(model, "accuracy", progress=False)
    with pytest.raises(TypeError, match="higher is better"):
        sensitivity(model, lambda m: "good", progress=False)
    with pytest.raises(ValueError, match="finite"):
        sensitivity(model, lambda m: float("nan"), progress=False)
    with pytest.raises(TypeError):
        sensitivity(object(), lambda m: 1.0, progress=False)
