"""Tracing: groups, coupling, barriers, nested and multi-input/output models, shared layers."""

import numpy as np
import pytest
import tensorflow as tf
from _exactness import check_pruned

from tfcompress._keras import input_names, keras, keras3, output_names
from tfcompress.models import residual_cnn
from tfcompress.pruning import (
    ChannelGraph,
    Masks,
    apply_masks,
    fpgm_masks,
    graph_macs,
    graph_params,
    rebuild,
    select_masks,
)

L = keras.layers


def test_residual_add_couples_its_producers(flavour):
    graph = ChannelGraph(residual_cnn(width=8, flavour=flavour))
    stem = graph.group("stem_conv")
    assert stem.producers == ("stem_conv", "block1b_conv")
    assert {"block1_add", "dw_conv", "dw_bn", "block2a_conv"} <= set(stem.layers)
    assert stem.prunable and stem.size == 8


def test_model_inputs_and_outputs_are_never_pruned(flavour):
    graph = ChannelGraph(residual_cnn(width=8, flavour=flavour))
    assert not graph.group("logits").prunable
    assert graph.barriers["logits"] == [("logits", "reaches a model output")]
    assert graph.barriers["image"] == [("image", "model input")]
    masks = select_masks(graph, 0.9)
    assert "logits" not in masks.kept and "image" not in masks.kept


def test_lambda_and_custom_layers_are_barriers(flavour):
    """Unless a probe proves them channel-wise (tests/pruning/test_probe.py): these mix
    channels (a reversal) or hold a per-channel constant."""
    K = flavour.module
    L = K.layers

    class Custom(L.Layer):
        def call(self, x):
            return x * np.arange(1.0, 9.0, dtype="float32")

    inputs = K.Input((8, 8, 3))
    a = L.Conv2D(8, 3, name="a")(inputs)
    b = L.Lambda(lambda t: t[..., ::-1], name="lam")(a)
    c = L.Conv2D(8, 3, name="c")(b)
    d = Custom(name="custom")(c)
    e = L.Conv2D(8, 3, name="e")(d)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(e))
    model = K.Model(inputs, out)
    graph = ChannelGraph(model)
    assert not graph.group("a").prunable and not graph.group("c").prunable
    assert graph.barriers["a"][0] == ("lam", "probed: mixes channels -> barrier")
    assert graph.barriers["c"][0][0] == "custom"
    assert graph.group("e").prunable
    summary = select_masks(graph, 0.5).summary()
    assert "lam (probed: mixes channels -> barrier)" in summary and "custom (" in summary
    check_pruned(model, 0.5, tflite=False)


def test_concatenate_offsets_and_flatten_into_dense(flavour):
    K = flavour.module
    L = K.layers
    inputs = K.Input((6, 6, 2))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(inputs)
    h = L.Concatenate(name="cat")([a, L.ReLU()(b)])
    h = L.Conv2D(5, 3, name="c")(h)
    out = L.Dense(3, name="out")(L.Flatten(name="flat")(h))
    model = K.Model(inputs, out)
    graph = ChannelGraph(model)
    assert {g.id for g in graph.groups if g.prunable} == {"a", "b", "c"}
    masks = select_masks(graph, 0.5)
    slim = rebuild(model, masks)
    assert slim.get_layer("c").kernel.shape == (3, 3, 5, 3)
    assert slim.get_layer("out").kernel.shape == (4 * 4 * 3, 3)
    check_pruned(model, 0.5, tflite=False)


def test_se_block_and_sigmoid_gate_are_exact(flavour):
    K = flavour.module
    L = K.layers
    inputs = K.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="conv")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="swish", name="squeeze")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply(name="gate")([x, s])
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Conv2D(8, 1, name="proj")(x)))
    model = K.Model(inputs, out)
    graph = ChannelGraph(model)
    assert set(graph.group("conv").producers) == {"conv", "excite"}
    assert graph.group("squeeze").prunable
    check_pruned(model, 0.5, tflite=False)


def test_nested_models_multi_input_output(flavour):
    K = flavour.module
    L = K.layers
    inner_in = K.Input((8, 8, 4))
    inner = K.Model(inner_in, L.ReLU()(L.Conv2D(6, 3, padding="same", name="conv")(inner_in)),
                    name="inner")
    seq = K.Sequential([K.Input((8, 8, 6)), L.Conv2D(6, 1, name="pw"),
                        L.BatchNormalization(name="bn")], name="seq")
    a_in, b_in = K.Input((8, 8, 3), name="a"), K.Input((8, 8, 3), name="b")
    h = L.Concatenate()([L.Conv2D(2, 1, name="sa")(a_in), L.Conv2D(2, 1, name="sb")(b_in)])
    h = seq(inner(h))
    out1 = L.Dense(2, name="cls")(L.GlobalAveragePooling2D()(h))
    out2 = L.Conv2D(1, 1, name="seg")(h)
    model = K.Model([a_in, b_in], [out1, out2])
    graph = ChannelGraph(model)
    assert graph.group("inner/conv").prunable and graph.group("seq/pw").prunable
    assert "seq/bn" in graph.group("seq/pw").layers
    masks = select_masks(graph, 0.5)
    slim = rebuild(model, masks)
    assert slim.get_layer("inner").get_layer("conv").filters == 3
    assert output_names(slim) == output_names(model) and input_names(slim) == ["a", "b"]
    x = [np.random.rand(2, 8, 8, 3).astype("f") for _ in range(2)]
    apply_masks(model, masks)
    for masked, out in zip(model(x), slim(x)):
        np.testing.assert_allclose(masked, out, rtol=1e-4, atol=1e-5)


def test_shared_layer_couples_its_inputs(flavour):
    K = flavour.module
    L = K.layers
    shared = L.Conv2D(4, 3, padding="same", name="shared")
    inputs = K.Input((8, 8, 3))
    a = L.Conv2D(6, 1, name="a")(inputs)
    b = L.Conv2D(6, 1, name="b")(inputs)
    h = L.Add()([shared(a), shared(b)])
    model = K.Model(inputs, L.Dense(2)(L.Flatten()(L.Conv2D(3, 1, name="c")(h))))
    graph = ChannelGraph(model)
    assert set(graph.group("a").producers) == {"a", "b"}
    assert graph.group("shared").prunable
    check_pruned(model, 0.5, tflite=False)


def test_grouped_conv_keeps_blocks_equal(flavour):
    K = flavour.module
    L = K.layers
    inputs = K.Input((8, 8, 3))
    x = L.Conv2D(16, 1, name="expand")(inputs)
    x = L.Conv2D(16, 3, groups=4, padding="same", name="grouped")(x)
    x = L.BatchNormalization()(x)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(8, 1, name="project")(x)))
    model = K.Model(inputs, out)
    graph = ChannelGraph(model)
    assert graph.group("expand").blocks == 4 and graph.group("grouped").blocks == 4
    masks = select_masks(graph, 0.3)
    for gid in ("expand", "grouped"):
        counts = np.bincount(masks.kept[gid] // 4, minlength=4)
        assert np.all(counts == 3)  # ceil(0.7 * 16) = 12 -> 3 per block
    slim = rebuild(model, masks)
    assert slim.get_layer("grouped").kernel.shape == (3, 3, 3, 12)
    check_pruned(model, 0.3, tflite=False)
    bad = Masks({"expand": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]}, sizes={"expand": 16})
    with pytest.raises(ValueError, match="same number of channels in each block"):
        apply_masks(model, bad)


def test_tfop_elementwise_ops_are_traced():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="conv")(inputs)
    x = x * tf.nn.relu6(x + 3.0) / 6.0  # hard-swish as in MobileNetV3
    y = L.Conv2D(8, 1, name="other")(inputs)[:, 1:-1, 1:-1, ::-1]  # reverses channels
    out = L.Dense(2)(L.Flatten()(L.Conv2D(4, 1, name="head")(L.Add()([x, y]))))
    model = keras.Model(inputs, out)
    graph = ChannelGraph(model)
    group = graph.group("conv")
    assert not group.prunable and ("tf.__operators__.getitem", "probed: mixes channels -> "
                                   "barrier") in graph.barriers["conv"]
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="conv")(inputs)
    x = x * tf.nn.relu6(x + 3.0) / 6.0
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.Conv2D(4, 1)(x))))
    assert ChannelGraph(model).group("conv").prunable
    check_pruned(model, 0.5, tflite=False)


def test_softmax_producer_and_channels_first_are_barriers(flavour):
    K = flavour.module
    L = K.layers
    inputs = K.Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="conv", data_format="channels_first")(inputs)
    y = L.Dense(6, activation="softmax", name="soft")(L.Flatten()(x))
    model = K.Model(inputs, L.Dense(2)(y))
    graph = ChannelGraph(model)
    assert not graph.group("conv").prunable
    assert "channels_first" in graph.barriers["conv"][0][1]
    assert not graph.group("soft").prunable


def test_subclassed_models_and_non_models_are_rejected(flavour):
    class Sub(flavour.module.Model):
        def call(self, x):
            return x

    sub = Sub()
    sub(tf.zeros((1, 2)))
    with pytest.raises(ValueError, match="subclassed"):
        ChannelGraph(sub)
    with pytest.raises(TypeError, match="must be a Keras model"):
        fpgm_masks("not a model", 0.3)


def test_keras_ops_nodes_are_traced_like_their_layers():
    inputs = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(8, 3, name="conv")(inputs)
    x = x * keras3.ops.relu6(x + 3.0) / 6.0  # hard-swish written with keras.ops
    y = keras3.layers.Conv2D(8, 1, name="other")(inputs)[:, 1:-1, 1:-1, ::-1]  # mixes
    out = keras3.layers.Conv2D(4, 1, name="head")(keras3.ops.add(x, y))
    model = keras3.Model(inputs, keras3.layers.Dense(2)(keras3.layers.Flatten()(out)))
    graph = ChannelGraph(model)
    assert not graph.group("conv").prunable
    assert ("get_item", "probed: mixes channels -> barrier") in graph.barriers["conv"]
    inputs = keras3.Input((8, 8, 3))
    x = keras3.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras3.ops.mean(x * keras3.ops.relu6(x + 3.0) / 6.0, axis=[1, 2])
    model = keras3.Model(inputs, keras3.layers.Dense(2)(x))
    assert ChannelGraph(model).group("conv").prunable
    stats = check_pruned(model, 0.5)
    assert stats["macs_kept"] < 1


def test_masks_from_another_model_are_rejected():
    model = residual_cnn(width=8)
    masks = fpgm_masks(model, 0.5)
    wider = residual_cnn(width=16)
    with pytest.raises(ValueError, match="has 16 channels in the model but 8 in the masks"):
        rebuild(wider, masks)
    other = Masks({"nope": [0]}, sizes={"nope": 2})
    with pytest.raises(ValueError, match="group 'nope' does not exist"):
        apply_masks(model, other)
    with pytest.raises(ValueError, match="in 0..7"):
        Masks({"stem_conv": [0, 9]}, sizes={"stem_conv": 8})
    blocked = Masks({"logits": [0, 1]}, sizes={"logits": 10})
    with pytest.raises(ValueError, match="cannot be pruned"):
        apply_masks(model, blocked)
    with pytest.raises(TypeError, match="Masks"):
        apply_masks(model, {"stem_conv": [0]})


def test_counts_match_the_rebuilt_model(flavour):
    model = residual_cnn(width=8, flavour=flavour)
    graph = ChannelGraph(model)
    assert graph_params(graph) == model.count_params()
    # stem 16*16*9*1*8 + block1a/b 2*16*16*9*8*8 + dw 16*16*9*8 + 2a 8*8*9*8*16 + 2b 8*8*9*16*16
    # + logits 16*10
    assert graph_macs(graph) == 18432 + 2 * 147456 + 18432 + 73728 + 147456 + 160
    masks = select_masks(graph, 0.5)
    slim = rebuild(model, masks)
    assert graph_params(graph, masks) == slim.count_params() < model.count_params()
    assert graph_macs(graph, masks) == graph_macs(ChannelGraph(slim)) < graph_macs(graph)


def test_rebuilt_model_is_an_ordinary_savable_model(tmp_path, fresh_cnn, digits):
    _, (x, y) = digits
    masks = fpgm_masks(fresh_cnn, 0.5)
    slim = rebuild(fresh_cnn, masks)
    path = tmp_path / "slim.keras"
    slim.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x[:8]), slim(x[:8]), rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in fresh_cnn.layers]


def test_rebuild_keeps_a_lambda_that_uses_its_module_globals(flavour):
    # Keras 3 restores a Lambda's bytecode with Keras's own globals, where `tf` is unknown.
    K = flavour.module
    inputs = K.Input((6, 6, 2))
    h = K.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    h = K.layers.Conv2D(4, 3, padding="same")(h)
    out = K.layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), output_shape=(12, 12, 1))(h)
    stats = check_pruned(K.Model(inputs, out), 0.5, tflite=False)
    assert stats["macs_kept"] < 1
