"""Numeric probing of weightless layers no handler knows: channel-wise ones are traced through
(clean or not), the others stay barriers, and the rebuild's exactness catches what a naive
probe would miss."""

import numpy as np
import pytest
import tensorflow as tf
from _exactness import check_pruned

from tfcompress._keras import KERAS3
from tfcompress.pruning import ChannelGraph, Masks, select_masks
from tfcompress.pruning.handlers import probe as probe_module

CLEAN = "probed: channel-wise (clean)"
NOT_CLEAN = "probed: channel-wise (not clean: maps 0 to non-zero)"
MIXES = "probed: mixes channels -> barrier"


def layers(K):
    """Custom weightless layers, defined in the Keras module ``K``."""

    class ReflectionPadding2D(K.layers.Layer):
        def __init__(self, padding=(1, 1), **kwargs):
            super().__init__(**kwargs)
            self.padding = tuple(padding)

        def call(self, x):
            h, w = self.padding
            return tf.pad(x, [[0, 0], [h, h], [w, w], [0, 0]], mode="REFLECT")

        def get_config(self):
            return {**super().get_config(), "padding": self.padding}

    class Swish(K.layers.Layer):  # 0 -> 0: clean
        def call(self, x):
            return x * tf.sigmoid(x)

    class Gate(K.layers.Layer):  # 0 -> 0.5: not clean
        def call(self, x):
            return tf.sigmoid(x)

    class Center(K.layers.Layer):  # subtracts the mean over channels
        def call(self, x):
            return x - tf.reduce_mean(x, axis=-1, keepdims=True)

    class Roll(K.layers.Layer):
        def call(self, x):
            return tf.roll(x, 1, axis=-1)

    class LeakOne(K.layers.Layer):  # channel-wise, except the last channel also gets x[0]
        def call(self, x):
            return tf.concat([x[..., :-1], x[..., -1:] + x[..., :1]], axis=-1)

    class ByIndex(K.layers.Layer):  # channel-wise, but scales channel c by c + 1
        def call(self, x):
            return x * tf.cast(tf.range(1, tf.shape(x)[-1] + 1), x.dtype)

    class Constant(K.layers.Layer):  # a length-8 constant: breaks on 7 channels
        def call(self, x):
            return x + tf.constant(np.linspace(-1, 1, 8, dtype="float32"))

    return {cls.__name__: cls for cls in (ReflectionPadding2D, Swish, Gate, Center, Roll,
                                          LeakOne, ByIndex, Constant)}


def generator(K):
    """A small CycleGAN-style generator: reflection padding before its 3x3 convolutions."""
    L, pad = K.layers, layers(K)["ReflectionPadding2D"]
    inputs = K.Input((16, 16, 3))
    x = L.Conv2D(8, 3, name="c1")(pad(name="pad1")(inputs))
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, 2, padding="same", name="down")(x)))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, name="r1")(pad(name="pad2")(x))))
    h = L.BatchNormalization()(L.Conv2D(16, 3, name="r2")(pad(name="pad3")(h)))
    x = L.Add()([x, h])
    x = L.Conv2DTranspose(8, 3, 2, padding="same", name="up")(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Conv2D(3, 3, activation="tanh", name="rgb")(pad(name="pad4")(x))
    return K.Model(inputs, x)


def test_reflection_padding_generator_is_pruned(flavour):
    model = generator(flavour.module)
    graph = ChannelGraph(model)
    assert graph.probed == {f"pad{i}": CLEAN for i in range(1, 5)}
    assert all(graph.group(g).prunable for g in ("c1", "down", "r1", "up"))
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert stats["macs_kept"] < 0.5, stats  # 0.30; without probing (main, 02710a9): 0.883


@pytest.mark.parametrize("name, verdict, clean", [("Swish", CLEAN, True),
                                                  ("Gate", NOT_CLEAN, False)])
def test_channelwise_activation_is_probed_clean_or_not(flavour, name, verdict, clean):
    K = flavour.module
    inputs = K.Input((6, 6, 3))
    h = layers(K)[name](name="act")(K.layers.Conv2D(8, 3, name="conv")(inputs))
    model = K.Model(inputs, K.layers.Dense(2)(K.layers.Flatten()(K.layers.Conv2D(4, 1)(h))))
    graph = ChannelGraph(model)
    assert graph.probed == {"act": verdict}
    assert graph.records["act"].calls[0].outputs[0].clean is clean  # swish(0) = 0, sigmoid 0.5
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert graph.group("conv").prunable and stats["macs_kept"] < 0.6


def _through(K, layer, channels=8):
    inputs = K.Input((6, 6, 3))
    h = layer(K.layers.Conv2D(channels, 3, name="conv")(inputs))
    return K.Model(inputs, K.layers.Dense(2)(K.layers.Flatten()(K.layers.Conv2D(4, 1)(h))))


REFUSED = {
    "Center": MIXES,
    "Roll": MIXES,
    "LeakOne": MIXES,  # one pair of channels out of 8 x 7 (the bit sets cover every pair)
    "ByIndex": "probed: depends on the channel count or index (differs on 7 channels) -> "
               "barrier",
    "Constant": "probed: fails on 7 channels (InvalidArgumentError) -> barrier",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_layers_that_are_not_channelwise_stay_barriers(flavour, name):
    K = flavour.module
    model = _through(K, layers(K)[name](name="odd"))
    graph = ChannelGraph(model)
    reason = REFUSED[name]
    assert graph.probed == {"odd": reason}
    assert ("odd", reason) in graph.barriers["conv"]
    summary = select_masks(graph, 0.5).summary()
    assert f"odd ({reason})" in summary and f"  odd: {reason}" in summary


def _naive(call, *args):
    """A probe that checks only the channel count: what the real one must not be."""
    shape = call.output_shapes[0]
    same = shape[-1] == call.input_shapes[0][-1]
    return probe_module.Verdict(same, False, "probed: naive")


@pytest.mark.parametrize("name", ["LeakOne", "ByIndex"])
def test_exactness_fails_loudly_where_a_naive_probe_is_fooled(flavour, name, monkeypatch):
    K = flavour.module
    monkeypatch.setattr(probe_module, "probe", _naive)
    model = _through(K, layers(K)[name](name="odd"))
    assert ChannelGraph(model).group("conv").prunable  # fooled
    with pytest.raises(AssertionError, match="masked and rebuilt outputs differ"):
        check_pruned(model, ratio=0.5, tflite=False)


def test_a_length_c_constant_breaks_the_rebuild_under_a_naive_probe(flavour, monkeypatch):
    K = flavour.module
    monkeypatch.setattr(probe_module, "probe", _naive)
    model = _through(K, layers(K)["Constant"](name="odd"))
    with pytest.raises(Exception, match="[Ii]ncompatible|broadcast|shapes"):
        check_pruned(model, ratio=0.5, tflite=False)


def test_lambda_and_op_nodes_doing_spatial_ops_are_probed(flavour):
    K = flavour.module
    inputs = K.Input((8, 8, 3))
    h = K.layers.Conv2D(8, 3, name="conv")(inputs)
    h = K.layers.Lambda(lambda t: t[:, ::2, ::2, :], name="subsample")(h)
    pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
    h = K.ops.pad(h, pad) if flavour is KERAS3 else tf.pad(h, pad)  # an op node / TFOpLambda
    model = K.Model(inputs, K.layers.Dense(2)(K.layers.Flatten()(K.layers.Conv2D(4, 1)(h))))
    graph = ChannelGraph(model)
    assert list(graph.probed.values()) == [CLEAN, CLEAN], graph.probed
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert stats["macs_kept"] < 0.6


def test_a_lambda_declaring_the_channel_count_is_a_barrier(flavour):
    # channel-wise when run, but rebuilt on fewer channels it would still declare 8
    K = flavour.module
    lam = K.layers.Lambda(lambda t: 2.0 * t, output_shape=(6, 6, 8), name="declared")
    graph = ChannelGraph(_through(K, lam))
    assert graph.probed == {"declared": "probed: declares 8 output channels for 7 (its config "
                                        "holds the channel count) -> barrier"}
    padding = layers(K)["ReflectionPadding2D"]((3, 3), name="pad")  # 3 is not a channel count
    assert ChannelGraph(_through(K, padding, channels=3)).probed == {"pad": CLEAN}


def test_probing_is_cheap_and_deterministic(flavour):
    K = flavour.module
    calls = []

    class Counted(K.layers.Layer):
        def call(self, x):
            calls.append(tuple(x.shape))
            return tf.nn.relu(x)

    model = _through(K, Counted(name="counted"), channels=64)
    calls.clear()
    verdicts = [ChannelGraph(model).probed for _ in range(2)]
    assert verdicts[0] == verdicts[1] == {"counted": CLEAN}
    # per probe: base + 2 x 6 bit sets + 2 zeroed copies in one call; 3 channels dropped;
    # one symbolic call on 63 channels
    assert calls == [(15, 4, 4, 64), (3, 4, 4, 63), (None, 4, 4, 63)] * 2


def test_layers_with_weights_or_two_inputs_are_not_probed(flavour):
    K = flavour.module
    inputs = K.Input((6, 6, 3))
    a = K.layers.Conv2D(8, 3, name="a")(inputs)
    b = K.layers.Conv2D(8, 3, name="b")(inputs)
    h = K.layers.Lambda(lambda ab: ab[0] * ab[1], name="pair")([a, b])
    graph = ChannelGraph(K.Model(inputs, K.layers.Conv2D(2, 1)(h)))
    assert graph.probed == {}
    reason = probe_module.UNKNOWN + "; not probed: 2 inputs, 1 outputs"
    assert graph.barriers["a"][0] == ("pair", reason)


def test_masks_carry_the_verdicts_through_json(flavour):
    graph = ChannelGraph(generator(flavour.module))
    masks = select_masks(graph, 0.5)
    assert masks.probed == graph.probed
    loaded = Masks.from_json(masks.to_json())
    assert loaded.probed == graph.probed
    assert "  pad1: probed: channel-wise (clean)" in loaded.summary()
    with pytest.raises(ValueError, match="'probed' must map layer names to verdicts"):
        Masks.from_config({**masks.get_config(), "probed": ["pad1"]})
