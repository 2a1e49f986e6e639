"""Sensitivity scans: measurement, exact MAC prediction, allocation and serialization.

Expected values come from outside the code under test: MACs counted by hand for a tiny model,
``count_macs`` of the rebuilt model, weights inspected directly, names written out.
"""

import json

import numpy as np
import pytest

from tfcompress._keras import keras
from tfcompress.models import residual_cnn
from tfcompress.pruning import count_macs, fpgm_masks, rebuild, sensitivity_result
from tfcompress.pruning.counting import graph_macs
from tfcompress.pruning.graph import ChannelGraph, Group
from tfcompress.pruning.sensitivity import Sensitivity, sensitivity
from tfcompress.pruning.sensitivity_result import group_label

RATIOS = (0.25, 0.5, 0.75)
RESIDUAL_NAMES = ["stem_conv", "block1a_conv", "block2a_conv", "block2b_conv"]


def output_distance(x):
    """``evaluate``: minus the mean distance of the outputs to the unpruned model's."""
    reference = None

    def evaluate(model):
        nonlocal reference
        out = np.asarray(model(x, training=False))
        if reference is None:
            reference = out
        return -float(np.abs(out - reference).mean())

    return evaluate


def tiny(K=keras):
    """6x6x3 -> c1 (3x3, 4 filters) -> c2 (1x1, 2 filters) -> pool -> out (Dense 3), in the
    Keras module ``K``.

    MACs by hand: c1 = 36 positions * 27 * 4 = 3888, c2 = 36 * 4 * 2 = 288, out = 2 * 3 = 6.
    """
    K.utils.set_random_seed(0)
    return K.Sequential([
        K.Input((6, 6, 3)),
        K.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        K.layers.Conv2D(2, 1, activation="relu", name="c2"),
        K.layers.GlobalAveragePooling2D(name="pool"),
        K.layers.Dense(3, name="out"),
    ])


def zero_filters(model):
    """``evaluate``: minus the number of all-zero output filters of c1 and c2."""
    return -float(sum(int((np.abs(model.get_layer(name).kernel.numpy()).sum(axis=(0, 1, 2))
                           == 0).sum()) for name in ("c1", "c2")))


def conv_chain():
    """Plain Conv->Conv->Conv: a consumer is the next group's producer."""
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


def kept_fraction(model, per_layer, round_to=1):
    """MACs of the rebuilt model over the original's, both counted by ``count_macs``."""
    masks = fpgm_masks(model, 0.0, per_layer=per_layer, round_to=round_to)
    return count_macs(rebuild(model, masks)) / count_macs(model)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")


@pytest.fixture(scope="module", params=["tf_keras", "keras3"])
def scanned(data, request):
    keras.utils.set_random_seed(3)
    reference = residual_cnn(width=8)  # the same weights in both flavours
    model = residual_cnn(width=8, flavour=request.param)
    model.set_weights(reference.get_weights())
    before = [w.copy() for w in model.get_weights()]
    scan = sensitivity(model, output_distance(data), RATIOS, progress=False)
    return model, scan, before


def test_tiny_model_matches_hand_counted_macs_and_zeroed_filters(flavour):
    model = tiny(flavour.module)
    scan = sensitivity(model, zero_filters, (0.25, 0.5), progress=False)
    assert scan.total_macs == 3888 + 288 + 6 and scan.baseline == 0.0
    c1, c2 = scan.group("c1"), scan.group("c2")
    # c1 keeps ceil(0.75 * 4) = 3 then 2 filters; each removed one saves 36*27 in c1 and
    # 36*2 in c2. c2 keeps 2 (nothing pruned) then 1; its removed filter saves 36*4 + 3.
    assert (c1.kept, c1.macs_saved) == ((3, 2), (1 * (972 + 72), 2 * (972 + 72)))
    assert (c2.kept, c2.macs_saved) == ((2, 1), (0, 144 + 3))
    assert c1.drops == (1.0, 2.0) and c2.drops == (0.0, 1.0)  # exactly its own filters zeroed
    # c2's MACs are 36 * n1 * n2: pruning both double-counts 36 per pair of removed channels.
    assert scan.interactions == {("c1", "c2"): 36.0}
    # "c1" reaches only its group; "c2" its own, and c1's too if per_layer reads it as the
    # layer that consumes c1's channels.
    assert c1.selects == ("c1",) and c2.selects in {("c2",), ("c1", "c2")}
    assert zero_filters(model) == 0.0  # restored
    assert scan.predict({"c1": 0.5, "c2": 0.5}) == (3.0, pytest.approx(
        (36 * 27 * 2 + 36 * 2 * 1 + 1 * 3) / 4182))


def test_scan_covers_every_prunable_group_named_by_producer_and_restores_weights(scanned):
    model, scan, before = scanned
    assert list(scan.table) == RESIDUAL_NAMES
    assert all(list(row) == list(RATIOS) for row in scan.table.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert scan.baseline == 0.0 and scan.total_macs == count_macs(model)
    assert "block1a_conv" in repr(scan) and repr(scan).startswith("Sensitivity(4 groups x 3")


def test_drops_and_savings_grow_with_the_ratio(scanned):
    _, scan, _ = scanned
    for name, drops in scan.table.items():
        values = list(drops.values())
        assert all(d > 0 for d in values), name
        assert values[-1] > values[0], name
        saved = list(scan.macs_saved[name].values())
        assert all(0 < a < b for a, b in zip(saved, saved[1:])), name
        kept = scan.group(name).kept
        assert all(a > b for a, b in zip(kept, kept[1:])), name


@pytest.mark.parametrize("build", [lambda: residual_cnn(width=8), conv_chain],
                         ids=["residual", "conv_chain"])
def test_predicted_macs_are_exact_for_any_combination(build):
    model = build()
    x = np.random.default_rng(1).normal(size=(4,) + model.input_shape[1:]).astype("float32")
    scan = sensitivity(model, output_distance(x), RATIOS, progress=False)
    graph = ChannelGraph(model)
    total = graph_macs(graph)
    rng = np.random.default_rng(2)
    for _ in range(12):
        per_layer = {name: float(rng.choice((0.0,) + RATIOS)) for name in scan.names}
        _, kept = scan.predict(per_layer)
        assert kept == pytest.approx(graph_macs(graph, fpgm_masks(model, 0.0,
                                                                  per_layer=per_layer)) / total,
                                     abs=1e-12), per_layer


@pytest.mark.parametrize("target", [0.9, 0.6, 0.35])
def test_ratios_for_reaches_the_target_when_applied(scanned, target):
    model, scan, _ = scanned
    per_layer = scan.ratios_for(target)
    assert list(per_layer) == RESIDUAL_NAMES
    kept = kept_fraction(model, per_layer, scan.round_to)
    assert kept <= target + 1e-9
    assert kept > target - 0.25  # no gratuitous over-pruning


def test_ratios_for_prunes_the_insensitive_branch_first():
    model = two_branches()
    x = np.random.default_rng(4).normal(size=(8, 8, 8, 2)).astype("float32")
    scan = sensitivity(model, output_distance(x), (0.25, 0.5, 0.75), progress=False)
    assert scan.table["b"][0.5] < scan.table["a"][0.5] / 100
    assert scan.ratios_for(0.75) == {"a": 0.0, "b": 0.5}
    per_layer = scan.ratios_for(0.5)
    assert per_layer["b"] == 0.75 and 0 < per_layer["a"] < per_layer["b"]
    assert kept_fraction(model, per_layer) <= 0.5


def test_ratios_for_validates_the_target(scanned):
    _, scan, _ = scanned
    assert set(scan.ratios_for(1.0).values()) == {0.0}
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="macs_target"):
            scan.ratios_for(bad)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="macs_target"):
            scan.ratios_for(bad)
    with pytest.raises(ValueError, match="cannot be reached"):
        scan.ratios_for(0.01)


def test_json_round_trip_uses_producer_names(scanned, tmp_path):
    model, scan, _ = scanned
    document = json.loads(scan.to_json())
    assert document["format"] == "tfcompress.pruning.Sensitivity"
    assert [g["name"] for g in document["groups"]] == RESIDUAL_NAMES
    assert {name for pair in document["interactions"] for name in pair[:2]} <= set(RESIDUAL_NAMES)
    path = scan.save(tmp_path / "scan.json")
    loaded = Sensitivity.load(path)
    assert isinstance(loaded, Sensitivity) and loaded.groups == scan.groups
    assert loaded.table == scan.table and loaded.interactions == scan.interactions
    assert loaded.ratios_for(0.5) == scan.ratios_for(0.5)
    assert Sensitivity.from_json(scan.to_json()).to_json() == scan.to_json()


def test_summary_and_plot_label_groups_by_producer(scanned, tmp_path, monkeypatch):
    _, scan, _ = scanned
    rows = scan.summary().splitlines()[2:-1]
    assert [row.split()[0] for row in rows] == RESIDUAL_NAMES
    assert "0.75" in scan.summary().splitlines()[0]
    legends = []
    save = sensitivity_result.save_figure

    def capture(figure, path, **kwargs):
        legends.extend(t.get_text() for t in figure.axes[0].get_legend().get_texts())
        return save(figure, path, **kwargs)

    monkeypatch.setattr(sensitivity_result, "save_figure", capture)
    png = scan.plot(tmp_path / "scan.png")
    assert legends == RESIDUAL_NAMES
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.png"]  # no temp file left


def test_group_label_falls_back_to_the_group_id():
    a = Group("x", ("x", "bn"), 4, True, ("x",))
    b = Group("x#2", ("x",), 4, True, ("x",))
    c = Group("y_bn", ("y_bn",), 4, False)
    assert [group_label(g, [a, b, c]) for g in (a, b, c)] == ["x", "x#2", "y_bn"]


def test_from_json_rejects_other_documents():
    with pytest.raises(ValueError, match="parsed"):
        Sensitivity.from_json("{not json")
    with pytest.raises(ValueError, match="sensitivity document"):
        Sensitivity.from_json(json.dumps({"format": "tfcompress.pruning.Masks"}))
    with pytest.raises(ValueError, match="version 1"):
        Sensitivity.from_json(json.dumps({"format": "tfcompress.pruning.Sensitivity",
                                          "version": 1}))


def test_groups_by_id_or_layer_name_and_progress(data, capsys):
    model = residual_cnn(width=8)
    scan = sensitivity(model, output_distance(data), (0.5,), groups=["block2a_conv", "block2b_bn"])
    assert list(scan.table) == ["block2a_conv", "block2b_conv"]
    assert "evaluation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ratios_for"):
        scan.predict({"nope": 0.5})
    with pytest.raises(ValueError, match="not scanned"):
        scan.predict({"block2a_conv": 0.3})
    with pytest.raises(TypeError, match="per_layer"):
        scan.predict([("block2a_conv", 0.5)])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ratios=(0.0, 0.5)), ValueError, "ratios"),
    (dict(ratios=()), ValueError, "ratios"),
    (dict(ratios=(0.5, 1.0)), ValueError, "ratios"),
    (dict(ratios=("0.5",)), TypeError, "ratios"),
    (dict(ratios=0.5), TypeError, "ratios"),
    (dict(groups=["nope"]), ValueError, "group id"),
    (dict(groups=[3]), TypeError, "groups"),
    (dict(groups=["image"]), ValueError, "cannot be pruned"),
    (dict(criterion="nope"), ValueError, "criterion"),
    (dict(round_to=0), ValueError, "round_to"),
    (dict(round_to=1.5), TypeError, "round_to"),
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
