"""Depth pruning: groups cut to zero channels remove their residual branch, exactly."""

import numpy as np
import pytest
from _exactness import build_application, check_pruned, randomize, relative_error

from tfcompress._keras import TF_KERAS, keras, keras3
from tfcompress.convert import to_keras3, to_tf_keras
from tfcompress.export import to_tflite, verify
from tfcompress.layers import CHANNEL_BIAS, channel_bias_class
from tfcompress.models import compile_classifier, residual_cnn
from tfcompress.pruning import (
    ChannelGraph,
    FPGMPruning,
    Masks,
    PolynomialRatio,
    count_macs,
    graph_macs,
    graph_params,
    rebuild,
    select_masks,
)
from tfcompress.pruning.depth import Branch, cut_branches, removable_branches, remove_branches
from tfcompress.quantization import quantize_model

#: residual_cnn's one residual branch (block1a -> block1b -> block1_add's first input).
BLOCK1 = ("block1a_conv", "block1a_bn", "block1a_relu", "block1b_conv", "block1b_bn")


def _cnn(flavour, seed=0):
    model = residual_cnn(width=8, flavour=flavour.name)
    randomize(model, seed)  # random BatchNorm statistics: the branch constant is not 0
    return model


def _images(n=2, side=16, channels=1, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, side, side, channels)).astype("float32")


def _conv(K, filters, kernel, name, **kwargs):
    return K.layers.Conv2D(filters, kernel, padding="same", name=name, **kwargs)


def _uneven(K):
    """x -> stem; branch c1 (1x1) -> relu -> ca (1x1, bias) -> cb (3x3 'same') -> add."""
    x = K.Input((6, 6, 2))
    stem = _conv(K, 4, 1, "stem")(x)
    h = K.layers.ReLU(name="relu1")(_conv(K, 4, 1, "c1")(stem))
    h = _conv(K, 4, 3, "cb")(_conv(K, 4, 1, "ca")(h))
    y = K.layers.Add(name="add")([stem, h])
    return K.Model(x, K.layers.Dense(3, name="head")(K.layers.Flatten()(y)))


def _fork(K):
    """Two branches from one fork into one Add, then a nested residual: outer branch
    o1 -> [y + i2(i1(y))] -> o2 into 'outer'."""
    x = K.Input((6, 6, 2))
    stem = _conv(K, 4, 1, "stem")(x)
    a = _conv(K, 4, 1, "a2")(K.layers.ReLU()(_conv(K, 4, 1, "a1")(stem)))
    b = _conv(K, 4, 1, "b2")(K.layers.ReLU()(_conv(K, 4, 1, "b1")(stem)))
    s = K.layers.Add(name="pair")([a, b])
    y = K.layers.ReLU(name="o_relu")(_conv(K, 6, 1, "o1")(s))
    inner = _conv(K, 6, 1, "i2")(K.layers.ReLU()(_conv(K, 3, 1, "i1")(y)))
    z = _conv(K, 4, 1, "o2")(K.layers.Add(name="inner")([y, inner]))
    out = K.layers.Add(name="outer")([s, z])
    return K.Model(x, K.layers.Dense(3, name="head")(K.layers.Flatten()(out)))


def _grouped(K):
    """A ResNeXt-like block: 1x1 -> BN -> ReLU -> 3x3 conv in 4 groups -> 1x1 -> add."""
    x = K.Input((6, 6, 8))
    h = K.layers.ReLU()(K.layers.BatchNormalization()(_conv(K, 8, 1, "c1")(x)))
    h = K.layers.ReLU()(_conv(K, 8, 3, "c2", groups=4)(h))
    y = K.layers.Add(name="add")([x, _conv(K, 8, 1, "c3")(h)])
    return K.Model(x, K.layers.Dense(3, name="head")(K.layers.Flatten()(y)))


# ----- which groups are removable -----------------------------------------------------------
def test_residual_cnn_has_one_removable_branch(flavour):
    branches = removable_branches(ChannelGraph(residual_cnn(width=8, flavour=flavour.name)))
    assert branches == {"block1a_conv": Branch("block1a_conv", BLOCK1, "block1_add", 0)}


def test_a_constant_that_meets_same_padding_is_not_removable(flavour):
    # Cutting c1 leaves ca's bias, which cb's zero padding makes uneven at the borders;
    # cutting ca feeds cb zeros, so cb outputs its bias everywhere.
    assert sorted(removable_branches(ChannelGraph(_uneven(flavour.module)))) == ["ca"]


def test_both_inputs_and_nested_branches(flavour):
    branches = removable_branches(ChannelGraph(_fork(flavour.module)))
    assert {g: (b.merge, b.branch_input) for g, b in branches.items()} == {
        "a1": ("pair", 0), "b1": ("pair", 1), "o1": ("outer", 1), "i1": ("inner", 1)}
    assert set(branches["i1"].layers) < set(branches["o1"].layers)  # the smallest branch


# ----- exactness: masked == rebuilt -------------------------------------------------------------
def test_residual_cnn_cut_is_exact(flavour):
    keep = {}
    stats = check_pruned(_cnn(flavour), 0.3, per_layer={"block1a_conv": 1.0}, keep=keep)
    slim, masks = keep["slim"], keep["masks"]
    assert masks.cut == ("block1a_conv",)
    names = {layer.name for layer in slim.layers}
    assert not names & set(BLOCK1) and "block1_add" in names
    add = slim.get_layer("block1_add")
    assert type(add) is CHANNEL_BIAS[flavour.name]
    assert add.bias.shape == (len(masks.kept["stem_conv"]),) and np.abs(add.bias).min() > 0
    assert stats["error"] <= 1e-5
    again = check_pruned(slim, 0.5, tflite=False)  # the ChannelBias prunes with its stream
    assert again["pruned_groups"] == 3


def test_nested_and_partial_cuts_are_exact(flavour):
    keep = {}
    check_pruned(_fork(flavour.module), 0.25, per_layer={"a1": 1.0, "i1": 1.0, "o1": 1.0},
                 keep=keep, x=_images(side=6, channels=2), tflite=False)
    assert list(cut_branches(keep["graph"], keep["masks"])) == ["pair", "outer"]  # not inner
    names = {layer.name for layer in keep["slim"].layers}
    assert {"a1", "a2", "o1", "i1", "i2", "inner", "o2"}.isdisjoint(names)
    assert {"b1", "b2", "pair", "outer"} <= names


def test_a_cut_before_a_grouped_convolution_is_exact(flavour):
    model = _grouped(flavour.module)
    assert ChannelGraph(model).group("c1").blocks == 4  # the rebuild keeps 1 per block first
    keep = {}
    check_pruned(model, 0.5, per_layer={"c1": 1.0}, keep=keep,
                 x=_images(side=6, channels=8), tflite=False)
    assert {"c1", "c2", "c3"}.isdisjoint(layer.name for layer in keep["slim"].layers)


def test_small_mobilenetv2_all_blocks_cut_is_exact(flavour):
    model = build_application("MobileNetV2", 64, K=flavour.module)
    removable = sorted(removable_branches(ChannelGraph(model)))
    assert removable == sorted(f"block_{i}_expand" for i in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15))
    keep = {}
    check_pruned(model, 0.3, per_layer=dict.fromkeys(removable, 1.0), keep=keep,
                 x=_images(side=64, channels=3), tflite=False)
    names = {layer.name for layer in keep["slim"].layers}
    assert not any(name.startswith("block_2_") and name != "block_2_add" for name in names)
    assert sum(type(layer) is CHANNEL_BIAS[flavour.name] for layer in keep["slim"].layers) == 10


def test_resnet50_cuts_are_exact(flavour):
    model = build_application("ResNet50", 32, K=flavour.module)
    removable = sorted(removable_branches(ChannelGraph(model)))
    assert len(removable) == 32  # both inner groups of each of the 16 bottlenecks
    per_layer = {gid: 1.0 if i % 3 else 0.5 for i, gid in enumerate(removable)}
    keep = {}
    check_pruned(model, 0.3, per_layer=per_layer, keep=keep, x=_images(side=32, channels=3),
                 tflite=False)
    assert len(keep["slim"].layers) < len(model.layers) - 100


# ----- counting -------------------------------------------------------------------------------
def test_counts_of_a_cut_by_hand(flavour):
    model = residual_cnn(width=8, flavour=flavour.name)
    graph = ChannelGraph(model)
    masks = select_masks(graph, per_layer={"block1a_conv": 1.0})
    conv = 16 * 16 * 3 * 3 * 8 * 8  # each of block1a_conv and block1b_conv (8 -> 8, 3x3)
    assert graph_macs(graph) - graph_macs(graph, masks) == 2 * conv
    # two 3x3x8x8 kernels and two BatchNorms of 8 go; a ChannelBias of 8 comes
    assert graph_params(graph) - graph_params(graph, masks) == 2 * (9 * 64 + 4 * 8) - 8
    slim = rebuild(model, masks)
    assert count_macs(slim) == graph_macs(graph, masks)
    assert slim.count_params() == graph_params(graph, masks)


# ----- masks and errors -------------------------------------------------------------------------
def test_masks_with_a_cut_round_trip_and_report():
    masks = Masks({"a": [], "b": [0, 2]}, sizes={"a": 4, "b": 4})
    assert masks.cut == ("a",) and masks.pruned_ratio == 0.75
    assert Masks.from_json(masks.to_json()) == masks
    line = next(line for line in masks.summary().splitlines() if line.startswith("a "))
    assert "0/4 (branch removed)" in line


@pytest.mark.parametrize("per_layer, fragment", [
    ({"block2a_conv": 1.0}, "'block2a_conv', which is not inside a residual branch"),
    ({"stem_conv": 1.0}, "removed (this model's: ['block1a_conv']"),
])
def test_cutting_a_group_outside_a_branch_fails(per_layer, fragment):
    graph = ChannelGraph(residual_cnn(width=8))
    with pytest.raises(ValueError) as info:
        select_masks(graph, 0.3, per_layer=per_layer)
    assert fragment in " ".join(str(info.value).split())
    gid = next(iter(per_layer))
    with pytest.raises(ValueError, match=f"keep no channel of group '{gid}'.*Keep at least one"):
        rebuild(graph.model, Masks({gid: []}, sizes={gid: graph.group(gid).size}))


def test_both_inputs_of_an_add_cannot_be_cut():
    graph = ChannelGraph(_fork(keras))
    with pytest.raises(ValueError, match="'a1' and 'b1', which remove both inputs of 'pair'"):
        select_masks(graph, per_layer={"a1": 1.0, "b1": 1.0})


def test_a_branch_that_is_not_constant_is_refused(flavour):
    model = _uneven(flavour.module)  # c1's branch varies over positions (zero padding)
    live = Branch("c1", ("c1", "relu1", "ca", "cb"), "add", 1)
    with pytest.raises(ValueError, match="'c1' into 'add'.*varies over positions"):
        remove_branches(model, {"add": live}, {})


# ----- training with a ratio of 1 -------------------------------------------------------------
def test_fpgm_pruning_ramps_to_a_cut(flavour):
    model = compile_classifier(residual_cnn(width=4, flavour=flavour.name))
    x, y = _images(16), np.arange(16) % 10
    pruning = FPGMPruning(PolynomialRatio(0.0, 0.5, begin_step=0, end_step=2, frequency=1),
                          mode="hard", per_layer={"block1a_conv": 1.0})
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[pruning], verbose=0)
    assert len(pruning.masks.kept["block1a_conv"]) == 1  # step 1: 1.0 * 0.4375 / 0.5 < 1
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[pruning], verbose=0)
    assert pruning.masks.cut == ("block1a_conv",)  # step 2: the schedule's end
    slim = rebuild(model, pruning.masks)
    assert relative_error(np.asarray(model(x)), np.asarray(slim(x))) <= 1e-5
    bad = FPGMPruning(0.5, per_layer={"block2a_conv": 1.0})
    with pytest.raises(ValueError, match="not inside a residual branch"):
        model.fit(x, y, epochs=1, callbacks=[bad], verbose=0)


# ----- ChannelBias, export and quantization ----------------------------------------------------
def test_channel_bias_is_one_class_per_keras():
    tf_keras_class, keras3_class = CHANNEL_BIAS["tf_keras"], CHANNEL_BIAS["keras3"]
    assert tf_keras_class is not keras3_class and tf_keras_class.__name__ == "ChannelBias"
    assert keras.utils.get_registered_object("tfcompress>ChannelBias") is tf_keras_class
    assert keras3.saving.get_registered_object("tfcompress>ChannelBias") is keras3_class
    assert channel_bias_class(TF_KERAS) is tf_keras_class
    assert channel_bias_class(keras3) is channel_bias_class("keras3") is keras3_class
    with pytest.raises(ValueError, match="Unknown Keras flavour 'jax'"):
        channel_bias_class("jax")


def test_channel_bias_config_and_keras_file(flavour, tmp_path):
    K, cls = flavour.module, channel_bias_class(flavour)
    layer = cls(name="shift", trainable=False)
    clone = cls.from_config(layer.get_config())
    assert (clone.name, clone.trainable, type(clone)) == ("shift", False, cls)
    x = K.Input((3, 2))
    model = K.Model(x, cls(name="shift")(x))
    model.get_layer("shift").bias.assign([1.5, -2.0])
    model.save(tmp_path / "m.keras")
    loaded = K.models.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("shift")) is cls
    ones = np.ones((1, 3, 2), "float32")
    np.testing.assert_array_equal(np.asarray(loaded(ones)), np.tile([[[2.5, -1.0]]], (1, 3, 1)))


def test_convert_gives_the_other_kerases_channel_bias(flavour):
    slim, x = _depth_pruned(flavour), _images()
    other = (to_keras3 if flavour is TF_KERAS else to_tf_keras)(slim)
    twin = CHANNEL_BIAS["keras3" if flavour is TF_KERAS else "tf_keras"]
    assert type(other.get_layer("block1_add")) is twin
    assert relative_error(np.asarray(slim(x)), np.asarray(other(x))) <= 1e-5


def _depth_pruned(flavour):
    model = _cnn(flavour)
    return rebuild(model, select_masks(ChannelGraph(model), 0.25,
                                       per_layer={"block1a_conv": 1.0}))


def test_tflite_of_a_depth_pruned_model_verifies(flavour, tmp_path):
    slim, x = _depth_pruned(flavour), _images(32)
    report = verify(slim, to_tflite(slim, tmp_path / "f.tflite", None), x)
    # the ChannelBias is one ADD with a constant; 3 of residual_cnn's 5 convolutions remain
    assert report.op_counts["ADD"] == 1 and report.op_counts["CONV_2D"] == 3
    if flavour is TF_KERAS:  # int8 on one flavour (the converter path is shared)
        path = to_tflite(slim, tmp_path / "i.tflite", "int8", representative_data=x)
        assert verify(slim, path, x).kind == "int8"


def test_quantize_model_on_a_depth_pruned_model(flavour, tmp_path):
    slim, x = _depth_pruned(flavour), _images(32)
    qat = quantize_model(slim)
    assert "quant_block1_add" in {layer.name for layer in qat.layers}
    report = verify(qat, to_tflite(qat, tmp_path / "q.tflite"), x)
    assert report.kind == "int8" and report.op_counts["ADD"] == 1


@pytest.mark.parametrize("name, side", [("MobileNetV2", 64), ("ResNet50", 32)])
def test_tflite_of_depth_pruned_applications_verifies(name, side, tmp_path):
    model = build_application(name, side, K=keras)
    removable = sorted(removable_branches(ChannelGraph(model)))
    slim = rebuild(model, select_masks(ChannelGraph(model), 0.3,
                                       per_layer=dict.fromkeys(removable[::2], 1.0)))
    x = _images(side=side, channels=3)
    report = verify(slim, to_tflite(slim, tmp_path / "f.tflite", None), x)
    assert report.kind == "float32"
    cut = sum(type(layer) is CHANNEL_BIAS["tf_keras"] for layer in slim.layers)
    assert cut == len({removable_branches(ChannelGraph(model))[g].merge
                       for g in removable[::2]}) > 0
