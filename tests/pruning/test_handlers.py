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

from tfcompress._keras import keras
from tfcompress.pruning import (
    HANDLERS,
    ChannelGraph,
    count_macs,
    handler_for,
    register_handler,
    uncounted_layers,
)
from tfcompress.pruning.handlers import (
    BarrierHandler,
    ChannelHandler,
    CoupledHandler,
    WeightSpec,
)

L = keras.layers
SHAPES = {2: (5,), 3: (6, 2), 4: (6, 6, 2), 5: (4, 4, 4, 2)}
PRODUCERS = {2: lambda: L.Dense(8, name="producer"),
             3: lambda: L.Conv1D(8, 3, padding="same", name="producer"),
             4: lambda: L.Conv2D(8, 3, padding="same", name="producer"),
             5: lambda: L.Conv3D(8, 3, padding="same", name="producer")}


def around(rank, body):
    """Input -> producer (8 channels) -> body -> Flatten -> Dense(3)."""
    inputs = keras.Input(SHAPES[rank])
    h = PRODUCERS[rank]()(inputs)
    h = body(h)
    if len(h.shape) > 2:
        h = L.Flatten()(h)
    return keras.Model(inputs, L.Dense(3, name="head")(h))


def two_branches(rank, merge):
    """Two producers of 8 channels merged by ``merge``."""
    inputs = keras.Input(SHAPES[rank])
    a = PRODUCERS[rank]()(inputs)
    b = L.Conv2D(8, 1, name="other")(inputs) if rank == 4 else L.Dense(8, name="other")(inputs)
    h = merge([a, b])
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(h)))


def embedding_model():
    inputs = keras.Input((5,), dtype="int32")
    h = L.Embedding(20, 8, name="producer")(inputs)
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(L.Dense(6)(h))))


def _applications_class(path):
    obj = keras
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


LayerScale = _applications_class("src.applications.convnext.LayerScale")
CustomScaleLayer = _applications_class("src.applications.inception_resnet_v2.CustomScaleLayer")
TFOpLambda = _applications_class("src.layers.core.TFOpLambda")

#: layer class -> (model factory, whether the producer's channels stay prunable)
EXAMPLES = {
    L.Conv1D: (lambda: around(3, L.Conv1D(6, 3, padding="same")), True),
    L.Conv2D: (lambda: around(4, L.Conv2D(6, 3, strides=2, activation="relu")), True),
    L.Conv3D: (lambda: around(5, L.Conv3D(6, 2)), True),
    L.Conv1DTranspose: (lambda: around(3, L.Conv1DTranspose(6, 3, strides=2)), True),
    L.Conv2DTranspose: (lambda: around(4, L.Conv2DTranspose(6, 3, strides=2)), True),
    L.Conv3DTranspose: (lambda: around(5, L.Conv3DTranspose(6, 2)), True),
    L.SeparableConv1D: (lambda: around(3, L.SeparableConv1D(6, 3, depth_multiplier=2)), True),
    L.SeparableConv2D: (lambda: around(4, L.SeparableConv2D(6, 3, depth_multiplier=2)), True),
    L.Dense: (lambda: around(4, L.Dense(6, activation="sigmoid")), True),
    L.Embedding: (embedding_model, True),
    L.DepthwiseConv2D: (lambda: around(4, L.DepthwiseConv2D(3, depth_multiplier=2)), True),
    L.DepthwiseConv1D: (lambda: around(3, L.DepthwiseConv1D(3, depth_multiplier=3)), True),
    L.BatchNormalization: (lambda: around(4, L.BatchNormalization()), True),
    L.LayerNormalization: (lambda: around(4, L.LayerNormalization(axis=-1)), False),
    L.Normalization: (lambda: around(4, L.Normalization(axis=-1, mean=np.arange(8.0),
                                                        variance=np.arange(1.0, 9.0))), True),
    L.Rescaling: (lambda: around(4, L.Rescaling(0.5, offset=0.25)), True),
    L.PReLU: (lambda: around(4, L.PReLU(shared_axes=[1, 2])), True),
    LayerScale: (lambda: around(4, LayerScale(0.5, 8)), True),
    L.Activation: (lambda: around(4, L.Activation("sigmoid")), True),
    L.ReLU: (lambda: around(4, L.ReLU(max_value=6.0)), True),
    L.LeakyReLU: (lambda: around(4, L.LeakyReLU(0.2)), True),
    L.ELU: (lambda: around(4, L.ELU()), True),
    L.ThresholdedReLU: (lambda: around(4, L.ThresholdedReLU(0.1)), True),
    L.Softmax: (lambda: around(4, L.Softmax(axis=-1)), False),
    L.MaxPooling1D: (lambda: around(3, L.MaxPooling1D()), True),
    L.MaxPooling2D: (lambda: around(4, L.MaxPooling2D()), True),
    L.MaxPooling3D: (lambda: around(5, L.MaxPooling3D()), True),
    L.AveragePooling1D: (lambda: around(3, L.AveragePooling1D(padding="same")), True),
    L.AveragePooling2D: (lambda: around(4, L.AveragePooling2D()), True),
    L.AveragePooling3D: (lambda: around(5, L.AveragePooling3D()), True),
    L.GlobalMaxPooling1D: (lambda: around(3, L.GlobalMaxPooling1D()), True),
    L.GlobalMaxPooling2D: (lambda: around(4, L.GlobalMaxPooling2D(keepdims=True)), True),
    L.GlobalMaxPooling3D: (lambda: around(5, L.GlobalMaxPooling3D()), True),
    L.GlobalAveragePooling1D: (lambda: around(3, L.GlobalAveragePooling1D()), True),
    L.GlobalAveragePooling2D: (lambda: around(4, L.GlobalAveragePooling2D()), True),
    L.GlobalAveragePooling3D: (lambda: around(5, L.GlobalAveragePooling3D()), True),
    L.ZeroPadding1D: (lambda: around(3, L.ZeroPadding1D(1)), True),
    L.ZeroPadding2D: (lambda: around(4, L.ZeroPadding2D(1)), True),
    L.ZeroPadding3D: (lambda: around(5, L.ZeroPadding3D(1)), True),
    L.Cropping1D: (lambda: around(3, L.Cropping1D(1)), True),
    L.Cropping2D: (lambda: around(4, L.Cropping2D(1)), True),
    L.Cropping3D: (lambda: around(5, L.Cropping3D(1)), True),
    L.UpSampling1D: (lambda: around(3, L.UpSampling1D()), True),
    L.UpSampling2D: (lambda: around(4, L.UpSampling2D(interpolation="bilinear")), True),
    L.UpSampling3D: (lambda: around(5, L.UpSampling3D()), True),
    L.Dropout: (lambda: around(4, L.Dropout(0.5)), True),
    L.SpatialDropout1D: (lambda: around(3, L.SpatialDropout1D(0.5)), True),
    L.SpatialDropout2D: (lambda: around(4, L.SpatialDropout2D(0.5)), True),
    L.SpatialDropout3D: (lambda: around(5, L.SpatialDropout3D(0.5)), True),
    L.GaussianNoise: (lambda: around(4, L.GaussianNoise(0.1)), True),
    L.GaussianDropout: (lambda: around(4, L.GaussianDropout(0.1)), True),
    L.AlphaDropout: (lambda: around(4, L.AlphaDropout(0.1)), True),
    L.ActivityRegularization: (lambda: around(4, L.ActivityRegularization(0.1)), True),
    L.RepeatVector: (lambda: around(2, L.RepeatVector(3)), True),
    L.Add: (lambda: two_branches(4, L.Add()), True),
    L.Subtract: (lambda: two_branches(4, L.Subtract()), True),
    L.Average: (lambda: two_branches(4, L.Average()), True),
    L.Maximum: (lambda: two_branches(4, L.Maximum()), True),
    L.Minimum: (lambda: two_branches(4, L.Minimum()), True),
    L.Multiply: (lambda: two_branches(4, L.Multiply()), True),
    L.Concatenate: (lambda: two_branches(4, L.Concatenate()), True),
    CustomScaleLayer: (lambda: two_branches(4, CustomScaleLayer(0.3)), True),
    L.Flatten: (lambda: around(4, L.Flatten()), True),
    L.Reshape: (lambda: around(4, L.Reshape((36, 8))), True),
    L.Permute: (lambda: around(4, L.Permute((2, 1, 3))), True),
    TFOpLambda: (lambda: around(4, lambda h: tf.nn.relu6(h * 2.0 + 1.0)), True),
}

ROWS = list(HANDLERS.items())


def test_every_registered_class_has_an_example():
    missing = [cls.__name__ for cls, _ in ROWS if cls not in EXAMPLES]
    assert not missing, f"add an example for {missing}"


@pytest.mark.parametrize("cls", [cls for cls, _ in ROWS], ids=lambda c: c.__name__)
def test_handler_is_exact(cls):
    factory, prunable = EXAMPLES[cls]
    model = factory()
    assert any(type(layer) is cls for layer in model.layers), "the example must use the class"
    graph = ChannelGraph(model)
    group = next(g for g in graph.groups if "producer" in g.layers and "producer" in g.producers)
    assert group.prunable == prunable, graph.barriers
    stats = check_pruned(model, ratio=0.5, tflite=False)
    if prunable:
        assert stats["macs_kept"] < 1 and stats["params_kept"] < 1


@pytest.mark.parametrize("cls", [cls for cls, _ in ROWS], ids=lambda c: c.__name__)
def test_lookup_walks_the_mro(cls):
    subclass = type("My" + cls.__name__, (cls,), {})
    assert handler_for(subclass.__new__(subclass)) is handler_for(cls.__new__(cls))


def test_unknown_layers_are_barriers():
    lam = L.Lambda(lambda x: x)
    assert isinstance(handler_for(lam), BarrierHandler)
    assert isinstance(handler_for(L.Dot(axes=1)), BarrierHandler)


# ----- the registry seam -----------------------------------------------------------------
class _Double(L.Layer):
    """A custom channel-wise layer no built-in handler knows."""

    def call(self, inputs):
        return 2.0 * inputs


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
        pass

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
                   "unsupported op)")]
    assert count_macs(model) == 5 * 8 + 8 * 3  # the two Dense layers, by hand
    assert "leaves out 1 layer(s) it cannot count: double" in caplog.text
