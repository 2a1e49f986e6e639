"""Every row of the handler registry, exercised in a tiny model: exact masking and rebuild.

The test is parametrized over ``HANDLERS`` itself: registering a handler for a new layer
class fails ``test_every_registered_class_has_an_example`` until an example is added below,
and the example then runs through the same exactness checks as every other layer.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from _exactness import check_pruned

from tfcompress._keras import FLAVOURS, KERAS3, TF_KERAS, flavour_of, keras
from tfcompress.layers import channel_bias_class
from tfcompress.pruning import (
    HANDLERS,
    ChannelGraph,
    count_macs,
    handler_for,
    register_handler,
    uncounted_layers,
)
from tfcompress.pruning.handlers import (
    OUT,
    BarrierHandler,
    ChannelHandler,
    CoupledHandler,
    WeightSpec,
)
from tfcompress.pruning.handlers.kerasop import KERAS_OPS

L = keras.layers
SHAPES = {2: (5,), 3: (6, 2), 4: (6, 6, 2), 5: (4, 4, 4, 2)}


def _producer(K, rank):
    return {2: lambda: K.layers.Dense(8, name="producer"),
            3: lambda: K.layers.Conv1D(8, 3, padding="same", name="producer"),
            4: lambda: K.layers.Conv2D(8, 3, padding="same", name="producer"),
            5: lambda: K.layers.Conv3D(8, 3, padding="same", name="producer")}[rank]()


def around(K, rank, body):
    """Input -> producer (8 channels) -> body -> Flatten -> Dense(3), in Keras ``K``."""
    inputs = K.Input(SHAPES[rank])
    h = body(_producer(K, rank)(inputs))
    if len(h.shape) > 2:
        h = K.layers.Flatten()(h)
    return K.Model(inputs, K.layers.Dense(3, name="head")(h))


def two_branches(K, rank, merge):
    """Two producers of 8 channels merged by ``merge``."""
    inputs = K.Input(SHAPES[rank])
    a = _producer(K, rank)(inputs)
    b = (K.layers.Conv2D(8, 1, name="other")(inputs) if rank == 4
         else K.layers.Dense(8, name="other")(inputs))
    h = merge([a, b])
    return K.Model(inputs, K.layers.Dense(3, name="head")(K.layers.Flatten()(h)))


def embedding_model(K):
    inputs = K.Input((5,), dtype="int32")
    h = K.layers.Embedding(20, 8, name="producer")(inputs)
    return K.Model(inputs, K.layers.Dense(3, name="head")(K.layers.Flatten()(K.layers.Dense(6)(h))))


def _applications(K, name):
    module = {"LayerScale": "convnext", "CustomScaleLayer": "inception_resnet_v2"}[name]
    return getattr(getattr(K.src.applications, module), name)


def _tf_op(K):
    return around(K, 4, lambda h: tf.nn.relu6(h * 2.0 + 1.0))


#: layer class name -> (model factory taking the Keras module, whether the producer's
#: channels stay prunable); ``keras.ops`` nodes are keyed ``ops.<Name>`` below.
EXAMPLES = {
    "Conv1D": (lambda K: around(K, 3, K.layers.Conv1D(6, 3, padding="same")), True),
    "Conv2D": (lambda K: around(K, 4, K.layers.Conv2D(6, 3, strides=2, activation="relu")),
               True),
    "Conv3D": (lambda K: around(K, 5, K.layers.Conv3D(6, 2)), True),
    "Conv1DTranspose": (lambda K: around(K, 3, K.layers.Conv1DTranspose(6, 3, strides=2)), True),
    "Conv2DTranspose": (lambda K: around(K, 4, K.layers.Conv2DTranspose(6, 3, strides=2)), True),
    "Conv3DTranspose": (lambda K: around(K, 5, K.layers.Conv3DTranspose(6, 2)), True),
    "SeparableConv1D": (lambda K: around(K, 3, K.layers.SeparableConv1D(6, 3, depth_multiplier=2)),
                        True),
    "SeparableConv2D": (lambda K: around(K, 4, K.layers.SeparableConv2D(6, 3, depth_multiplier=2)),
                        True),
    "Dense": (lambda K: around(K, 4, K.layers.Dense(6, activation="sigmoid")), True),
    "Embedding": (embedding_model, True),
    "DepthwiseConv2D": (lambda K: around(K, 4, K.layers.DepthwiseConv2D(3, depth_multiplier=2)),
                        True),
    "DepthwiseConv1D": (lambda K: around(K, 3, K.layers.DepthwiseConv1D(3, depth_multiplier=3)),
                        True),
    "BatchNormalization": (lambda K: around(K, 4, K.layers.BatchNormalization()), True),
    "LayerNormalization": (lambda K: around(K, 4, K.layers.LayerNormalization(axis=-1)), False),
    "GroupNormalization": (lambda K: around(K, 4, K.layers.GroupNormalization(groups=-1)), True),
    "Normalization": (lambda K: around(K, 4, K.layers.Normalization(
        axis=-1, mean=np.arange(8.0), variance=np.arange(1.0, 9.0))), True),
    "Rescaling": (lambda K: around(K, 4, K.layers.Rescaling(0.5, offset=0.25)), True),
    "PReLU": (lambda K: around(K, 4, K.layers.PReLU(shared_axes=[1, 2])), True),
    "LayerScale": (lambda K: around(K, 4, _applications(K, "LayerScale")(0.5, 8)), True),
    "ChannelBias": (lambda K: around(K, 4, channel_bias_class(K)()), True),
    "Activation": (lambda K: around(K, 4, K.layers.Activation("sigmoid")), True),
    "ReLU": (lambda K: around(K, 4, K.layers.ReLU(max_value=6.0)), True),
    "LeakyReLU": (lambda K: around(K, 4, K.layers.LeakyReLU(0.2)), True),
    "ELU": (lambda K: around(K, 4, K.layers.ELU()), True),
    "ThresholdedReLU": (lambda K: around(K, 4, K.layers.ThresholdedReLU(0.1)), True),
    "Softmax": (lambda K: around(K, 4, K.layers.Softmax(axis=-1)), False),
    "MaxPooling1D": (lambda K: around(K, 3, K.layers.MaxPooling1D()), True),
    "MaxPooling2D": (lambda K: around(K, 4, K.layers.MaxPooling2D()), True),
    "MaxPooling3D": (lambda K: around(K, 5, K.layers.MaxPooling3D()), True),
    "AveragePooling1D": (lambda K: around(K, 3, K.layers.AveragePooling1D(2, padding="same")),
                         True),
    "AveragePooling2D": (lambda K: around(K, 4, K.layers.AveragePooling2D(2)), True),
    "AveragePooling3D": (lambda K: around(K, 5, K.layers.AveragePooling3D(2)), True),
    "GlobalMaxPooling1D": (lambda K: around(K, 3, K.layers.GlobalMaxPooling1D()), True),
    "GlobalMaxPooling2D": (lambda K: around(K, 4, K.layers.GlobalMaxPooling2D(keepdims=True)),
                           True),
    "GlobalMaxPooling3D": (lambda K: around(K, 5, K.layers.GlobalMaxPooling3D()), True),
    "GlobalAveragePooling1D": (lambda K: around(K, 3, K.layers.GlobalAveragePooling1D()), True),
    "GlobalAveragePooling2D": (lambda K: around(K, 4, K.layers.GlobalAveragePooling2D()), True),
    "GlobalAveragePooling3D": (lambda K: around(K, 5, K.layers.GlobalAveragePooling3D()), True),
    "ZeroPadding1D": (lambda K: around(K, 3, K.layers.ZeroPadding1D(1)), True),
    "ZeroPadding2D": (lambda K: around(K, 4, K.layers.ZeroPadding2D(1)), True),
    "ZeroPadding3D": (lambda K: around(K, 5, K.layers.ZeroPadding3D(1)), True),
    "Cropping1D": (lambda K: around(K, 3, K.layers.Cropping1D(1)), True),
    "Cropping2D": (lambda K: around(K, 4, K.layers.Cropping2D(1)), True),
    "Cropping3D": (lambda K: around(K, 5, K.layers.Cropping3D(1)), True),
    "UpSampling1D": (lambda K: around(K, 3, K.layers.UpSampling1D()), True),
    "UpSampling2D": (lambda K: around(K, 4, K.layers.UpSampling2D(interpolation="bilinear")),
                     True),
    "UpSampling3D": (lambda K: around(K, 5, K.layers.UpSampling3D()), True),
    "Dropout": (lambda K: around(K, 4, K.layers.Dropout(0.5)), True),
    "SpatialDropout1D": (lambda K: around(K, 3, K.layers.SpatialDropout1D(0.5)), True),
    "SpatialDropout2D": (lambda K: around(K, 4, K.layers.SpatialDropout2D(0.5)), True),
    "SpatialDropout3D": (lambda K: around(K, 5, K.layers.SpatialDropout3D(0.5)), True),
    "GaussianNoise": (lambda K: around(K, 4, K.layers.GaussianNoise(0.1)), True),
    "GaussianDropout": (lambda K: around(K, 4, K.layers.GaussianDropout(0.1)), True),
    "AlphaDropout": (lambda K: around(K, 4, K.layers.AlphaDropout(0.1)), True),
    "ActivityRegularization": (lambda K: around(K, 4, K.layers.ActivityRegularization(0.1)),
                               True),
    "RepeatVector": (lambda K: around(K, 2, K.layers.RepeatVector(3)), True),
    "Add": (lambda K: two_branches(K, 4, K.layers.Add()), True),
    "Subtract": (lambda K: two_branches(K, 4, K.layers.Subtract()), True),
    "Average": (lambda K: two_branches(K, 4, K.layers.Average()), True),
    "Maximum": (lambda K: two_branches(K, 4, K.layers.Maximum()), True),
    "Minimum": (lambda K: two_branches(K, 4, K.layers.Minimum()), True),
    "Multiply": (lambda K: two_branches(K, 4, K.layers.Multiply()), True),
    "Concatenate": (lambda K: two_branches(K, 4, K.layers.Concatenate()), True),
    "CustomScaleLayer": (lambda K: two_branches(K, 4, _applications(K, "CustomScaleLayer")(0.3)),
                         True),
    "Flatten": (lambda K: around(K, 4, K.layers.Flatten()), True),
    "Reshape": (lambda K: around(K, 4, K.layers.Reshape((36, 8))), True),
    "Permute": (lambda K: around(K, 4, K.layers.Permute((2, 1, 3))), True),
    "TFOpLambda": (_tf_op, True),
    "LSTM": (lambda K: around(K, 3, K.layers.LSTM(6, return_sequences=True)), True),
    "GRU": (lambda K: around(K, 3, K.layers.GRU(6, reset_after=False)), True),
    "SimpleRNN": (lambda K: around(K, 3, K.layers.SimpleRNN(6, activation="relu")), True),
    "RNN": (lambda K: around(K, 3, K.layers.RNN(K.layers.GRUCell(6))), True),
    "Bidirectional": (lambda K: around(K, 3, K.layers.Bidirectional(
        K.layers.LSTM(5, return_sequences=True), merge_mode="sum")), True),
}

#: keras.ops nodes (Keras 3): unary ops run on the producer, with the arguments they need.
_OP_ARGS = {"Clip": (-1.0, 1.0), "Power": (2,), "Divide": (2.0,), "TrueDivide": (2.0,),
            "Threshold": (0.1, 0.0)}
_OP_INPUT = {"Sqrt": lambda K, h: K.ops.square(h) + 1.0, "Log1p": lambda K, h: K.ops.relu(h)}


def _snake(name):
    return "".join("_" + c.lower() if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


def _unary_op(name):
    def body(K, h):
        h = _OP_INPUT.get(name, lambda K, h: h)(K, h)
        return getattr(K.ops, _snake(name))(h, *_OP_ARGS.get(name, ()))
    return lambda K: around(K, 4, lambda h: body(K, h)), True


EXAMPLES.update({f"ops.{name}": _unary_op(name) for name in KERAS_OPS if KERAS_OPS[name] is None})
EXAMPLES.update({
    f"ops.{name}": (lambda K, fn=_snake(name): two_branches(
        K, 4, lambda ab: getattr(K.ops, fn)(*ab)), True)
    for name in KERAS_OPS if KERAS_OPS[name] is not None})
EXAMPLES["ops.Reciprocal"] = (EXAMPLES["ops.Reciprocal"][0], False)  # 1 / 0 = inf: a barrier
EXAMPLES.update({
    "ops.Mean": (lambda K: around(K, 4, lambda h: K.ops.mean(h, axis=[1, 2])), True),
    "ops.Max": (lambda K: around(K, 4, lambda h: K.ops.max(h, axis=1)), True),
    "ops.Amax": (lambda K: around(K, 4, lambda h: K.ops.amax(h, axis=1, keepdims=True)), True),
    "ops.Min": (lambda K: around(K, 4, lambda h: K.ops.min(h, axis=(1, 2))), True),
    "ops.Amin": (lambda K: around(K, 4, lambda h: K.ops.amin(h, axis=2)), True),
    "ops.Sum": (lambda K: around(K, 4, lambda h: K.ops.sum(h, axis=-2)), True),
    "ops.Concatenate": (lambda K: two_branches(
        K, 4, lambda ab: K.ops.concatenate(ab, axis=-1)), True),
})


def _key(cls):
    return f"ops.{cls.__name__}" if cls.__module__.startswith("keras.src.ops") else cls.__name__


def _flavour_module(cls):
    return flavour_of(cls.__new__(cls)).module


ROWS = list(HANDLERS.items())


def _row_id(cls):
    return f"{_flavour_module(cls).__name__}-{_key(cls)}"


def test_every_registered_class_has_an_example():
    missing = [_row_id(cls) for cls, _ in ROWS if _key(cls) not in EXAMPLES]
    assert not missing, f"add an example for {missing}"


def test_both_flavours_have_the_same_layer_rows():
    keys = {flavour: {_key(c) for c, _ in ROWS if _flavour_module(c) is flavour.module}
            for flavour in FLAVOURS}
    only_tf_keras = keys[TF_KERAS] - keys[KERAS3]
    assert only_tf_keras <= {"TFOpLambda", "ThresholdedReLU"}, only_tf_keras
    assert {"ops.Add", "ops.Relu", "ops.Mean", "ops.Concatenate"} <= keys[KERAS3]


@pytest.mark.parametrize("cls", [cls for cls, _ in ROWS], ids=_row_id)
def test_handler_is_exact(cls):
    factory, prunable = EXAMPLES[_key(cls)]
    model = factory(_flavour_module(cls))
    nodes = getattr(model, "operations", None) or model.layers
    assert any(type(layer) is cls for layer in nodes), "the example must use the class"
    graph = ChannelGraph(model)
    group = next(g for g in graph.groups if "producer" in g.layers and "producer" in g.producers)
    assert group.prunable == prunable, graph.barriers
    stats = check_pruned(model, ratio=0.5, tflite=False)
    if prunable:
        assert stats["macs_kept"] < 1 and stats["params_kept"] < 1


@pytest.mark.parametrize("cls", [cls for cls, _ in ROWS], ids=_row_id)
def test_lookup_walks_the_mro(cls):
    subclass = type("My" + cls.__name__, (cls,), {})
    assert handler_for(subclass.__new__(subclass)) is handler_for(cls.__new__(cls))


def test_unknown_layers_are_barriers():
    lam = L.Lambda(lambda x: x)
    assert isinstance(handler_for(lam), BarrierHandler)
    assert isinstance(handler_for(L.Dot(axes=1)), BarrierHandler)


def test_group_norm_with_several_channels_per_group_is_a_barrier(flavour):
    K = flavour.module
    model = around(K, 4, K.layers.GroupNormalization(groups=2))
    group = ChannelGraph(model).group("producer")
    assert not group.prunable
    assert any("4 channels of each group" in reason for _, reason in group.barriers)


# ----- the registry seam -----------------------------------------------------------------
class _Double(L.Layer):
    """A custom channel-wise layer no built-in handler knows, with a weight (a weightless
    one would be probed, see test_probe.py): output = x * scale, one scale per channel."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


def _double_model():
    x = keras.Input((5,))
    h = _Double(name="double")(L.Dense(8, name="producer")(x))
    return keras.Model(x, L.Dense(3)(h))


@pytest.fixture
def registry_snapshot():
    """Restores the registry after a test registers handlers of its own."""
    from tfcompress.pruning.handlers import registry

    saved = dict(registry._TABLE)
    yield
    registry._TABLE.clear()
    registry._TABLE.update(saved)
    registry.handler_for_class.cache_clear()


def test_one_decorator_makes_a_custom_layer_prunable(registry_snapshot):
    assert not ChannelGraph(_double_model()).group("producer").prunable  # a barrier first

    @register_handler(_Double)
    class DoubleHandler(CoupledHandler):
        weights = {"scale": WeightSpec({0: OUT})}

    model = _double_model()
    assert isinstance(handler_for(model.get_layer("double")), DoubleHandler)  # cache cleared
    assert ChannelGraph(model).group("producer").prunable
    stats = check_pruned(model, ratio=0.5, tflite=False)
    assert stats["macs_kept"] < 1


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((), {"handler": CoupledHandler()}, TypeError, r"at least one layer class"),
    (("Conv2D",), {"handler": CoupledHandler()}, TypeError, r"layer classes, got 'Conv2D'"),
    ((_Double,), {"handler": object()}, TypeError, r"ChannelHandler instance"),
    ((_Double,), {"handler": type("Bad", (CoupledHandler,), {"weights": {"w": {0: "in"}}})()},
     TypeError, r"weights\['w'\] must be a WeightSpec"),
    ((_Double,), {"handler": type("Bad", (CoupledHandler,),
                                  {"weights": {"w": WeightSpec({0: "channels"})}})()},
     ValueError, r"unknown|roles \['channels'\]"),
])
def test_register_handler_validates(registry_snapshot, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        register_handler(*args, **kwargs)
    assert _Double not in HANDLERS


def test_decorator_refuses_a_non_handler_class(registry_snapshot):
    with pytest.raises(TypeError, match="decorates a ChannelHandler subclass"):
        register_handler(_Double)(object)


def test_a_handler_needs_propagate():
    class Incomplete(ChannelHandler):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


# ----- strict tracing ---------------------------------------------------------------------
class _Broken(CoupledHandler):
    def propagate(self, call, tracer):
        raise RuntimeError("handler bug")


def test_strict_tracing_raises_a_handler_error(registry_snapshot, caplog):
    register_handler(_Double, handler=_Broken())
    with pytest.raises(RuntimeError, match="handler bug"):
        ChannelGraph(_double_model(), strict=True)
    graph = ChannelGraph(_double_model(), strict=False)  # users: a barrier and a warning
    assert not graph.group("producer").prunable
    assert ("double", "tracing failed (RuntimeError: handler bug)") in graph.barriers["producer"]
    assert "'double' (_Double) is a barrier" in caplog.text


def test_the_test_suite_traces_strictly():
    from tfcompress.pruning.trace import STRICT_ENV, strict_default

    assert os.environ.get(STRICT_ENV) == "1" and strict_default()


# ----- counting reports what it cannot count ---------------------------------------------
def test_count_macs_names_the_layers_it_cannot_count(caplog):
    model = _double_model()
    graph = ChannelGraph(model)
    assert uncounted_layers(graph) == [
        ("double", "no channel handler for this layer type (custom layer, Lambda or "
                   "unsupported op); not probed: it has weights")]
    assert count_macs(model) == 5 * 8 + 8 * 3  # the two Dense layers, by hand
    assert "leaves out 1 layer(s) it cannot count: double" in caplog.text


def test_probed_layers_are_not_counted_either():
    x = keras.Input((5,))
    h = L.Lambda(lambda t: 2.0 * t, name="double")(L.Dense(8, name="producer")(x))
    graph = ChannelGraph(keras.Model(x, L.Dense(3)(h)))
    assert graph.group("producer").prunable  # channel-wise, but its cost is unknown
    assert uncounted_layers(graph) == [("double", "probed: channel-wise (clean)")]
