"""tfcompress.convert: tf_keras <-> Keras 3 models with equal outputs, names and classes.

Every check runs the source and the converted model on the same random input and compares
their outputs (relative difference: max |a - b| / max |a|); the source weights are random
(not the initializers' zeros and ones), so an uncopied or misordered weight shows.
"""

import numpy as np
import pytest

from tfcompress import models
from tfcompress._keras import keras, keras3
from tfcompress.convert import to_keras3, to_tf_keras

TOLERANCE = 1e-6
FLAVOURS = {"tf_keras": keras, "keras3": keras3}
CONVERT = {"tf_keras": to_keras3, "keras3": to_tf_keras}  # source flavour -> converter
TARGET = {"tf_keras": keras3, "keras3": keras}


def _merge(name, **kwargs):
    def build(L, x):
        a, b = L.Dense(4, name="left")(x), L.Dense(4, name="right")(x)
        return getattr(L, name)(**kwargs)([a, b])
    return (6,), build


def _one(factory, shape):
    return shape, lambda L, x: factory(L)(x)


#: name -> (input shape, build(layers module, input tensor) -> output tensor)
LAYERS = {
    "Conv1D": _one(lambda L: L.Conv1D(4, 3, padding="same", dilation_rate=2), (9, 3)),
    "Conv2D": _one(lambda L: L.Conv2D(4, 3, strides=2, activation="relu"), (8, 8, 3)),
    "Conv2D_groups": _one(lambda L: L.Conv2D(4, 3, groups=2), (6, 6, 4)),
    "Conv3D": _one(lambda L: L.Conv3D(3, 2, padding="same"), (4, 4, 4, 2)),
    "Conv1DTranspose": _one(lambda L: L.Conv1DTranspose(3, 3, strides=2), (5, 2)),
    "Conv2DTranspose": _one(lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="same"),
                            (5, 5, 2)),
    "Conv3DTranspose": _one(lambda L: L.Conv3DTranspose(2, 2, strides=2), (3, 3, 3, 2)),
    "DepthwiseConv1D": _one(lambda L: L.DepthwiseConv1D(3, depth_multiplier=2), (8, 3)),
    "DepthwiseConv2D": _one(lambda L: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
    "SeparableConv1D": _one(lambda L: L.SeparableConv1D(4, 3), (8, 3)),
    "SeparableConv2D": _one(lambda L: L.SeparableConv2D(4, 3, padding="same"), (6, 6, 3)),
    "Dense": _one(lambda L: L.Dense(5, activation="tanh", kernel_regularizer="l2"), (6,)),
    "BatchNormalization": _one(lambda L: L.BatchNormalization(epsilon=1e-2), (5, 5, 3)),
    "LayerNormalization": _one(lambda L: L.LayerNormalization(), (4, 6)),
    "GroupNormalization": _one(lambda L: L.GroupNormalization(groups=2), (4, 6)),
    "UnitNormalization": _one(lambda L: L.UnitNormalization(), (6,)),
    "ReLU": _one(lambda L: L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.2), (6,)),
    "LeakyReLU": _one(lambda L: L.LeakyReLU(), (6,)),
    "PReLU": _one(lambda L: L.PReLU(), (6,)),
    "ELU": _one(lambda L: L.ELU(alpha=0.5), (6,)),
    "Softmax": _one(lambda L: L.Softmax(), (6,)),
    "Activation_swish": _one(lambda L: L.Activation("swish"), (6,)),
    "Activation_gelu": _one(lambda L: L.Activation("gelu"), (6,)),
    "Activation_relu6": _one(lambda L: L.Activation("relu6"), (6,)),
    "MaxPooling1D": _one(lambda L: L.MaxPooling1D(2), (8, 3)),
    "MaxPooling2D": _one(lambda L: L.MaxPooling2D(2, padding="same"), (5, 5, 3)),
    "MaxPooling3D": _one(lambda L: L.MaxPooling3D(2), (4, 4, 4, 2)),
    "AveragePooling1D": _one(lambda L: L.AveragePooling1D(2), (8, 3)),
    "AveragePooling2D": _one(lambda L: L.AveragePooling2D(2, strides=1), (5, 5, 3)),
    "AveragePooling3D": _one(lambda L: L.AveragePooling3D(2), (4, 4, 4, 2)),
    "GlobalAveragePooling2D": _one(lambda L: L.GlobalAveragePooling2D(), (5, 5, 3)),
    "GlobalMaxPooling1D": _one(lambda L: L.GlobalMaxPooling1D(), (8, 3)),
    "ZeroPadding1D": _one(lambda L: L.ZeroPadding1D(2), (8, 3)),
    "ZeroPadding2D": _one(lambda L: L.ZeroPadding2D(((1, 2), (0, 1))), (5, 5, 3)),
    "ZeroPadding3D": _one(lambda L: L.ZeroPadding3D(1), (3, 3, 3, 2)),
    "Cropping1D": _one(lambda L: L.Cropping1D((1, 2)), (8, 3)),
    "Cropping2D": _one(lambda L: L.Cropping2D(((1, 0), (0, 2))), (6, 6, 3)),
    "Cropping3D": _one(lambda L: L.Cropping3D(1), (4, 4, 4, 2)),
    "UpSampling1D": _one(lambda L: L.UpSampling1D(2), (4, 3)),
    "UpSampling2D": _one(lambda L: L.UpSampling2D(2, interpolation="bilinear"), (4, 4, 3)),
    "UpSampling3D": _one(lambda L: L.UpSampling3D(2), (2, 2, 2, 2)),
    "Dropout": _one(lambda L: L.Dropout(0.5, seed=3), (6,)),
    "SpatialDropout2D": _one(lambda L: L.SpatialDropout2D(0.3), (4, 4, 3)),
    "GaussianNoise": _one(lambda L: L.GaussianNoise(0.1), (6,)),
    "Flatten": _one(lambda L: L.Flatten(), (3, 4, 2)),
    "Reshape": _one(lambda L: L.Reshape((4, -1)), (3, 4, 2)),
    "Permute": _one(lambda L: L.Permute((2, 1)), (3, 4)),
    "RepeatVector": _one(lambda L: L.RepeatVector(3), (4,)),
    "Rescaling": _one(lambda L: L.Rescaling(1 / 255.0, offset=-0.5), (6,)),
    "GRU": _one(lambda L: L.GRU(4, return_sequences=True), (5, 3)),
    "LSTM": _one(lambda L: L.LSTM(4), (5, 3)),
    "SimpleRNN": _one(lambda L: L.SimpleRNN(4), (5, 3)),
    "Add": _merge("Add"),
    "Subtract": _merge("Subtract"),
    "Multiply": _merge("Multiply"),
    "Average": _merge("Average"),
    "Maximum": _merge("Maximum"),
    "Minimum": _merge("Minimum"),
    "Concatenate": _merge("Concatenate", axis=-1),
    "Dot": _merge("Dot", axes=1),
}


def _randomize(model, seed=0):
    """Random weights (positive for variances) so that every copied weight matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for variable, value in zip(layer.weights, layer.get_weights()):
            random = rng.normal(0.0, 0.5, value.shape)
            values.append(np.abs(random) + 0.5 if "variance" in variable.name else random)
        layer.set_weights([v.astype(np.float32) for v in values])
    return model


def _relative_difference(source, converted, inputs):
    expected = np.asarray(source(inputs, training=False))
    actual = np.asarray(converted(inputs, training=False))
    assert expected.shape == actual.shape
    return float(np.max(np.abs(expected - actual)) / max(np.max(np.abs(expected)), 1e-12))


def _random_input(shape, seed=1):
    return np.random.default_rng(seed).normal(size=(2,) + tuple(shape)).astype(np.float32)


def _check(source, converted, flavour, shape):
    """``converted`` is the other flavour's model of the same class, names and outputs."""
    assert isinstance(converted, TARGET[flavour].Model)
    assert type(converted).__name__ == type(source).__name__ or (
        {type(converted).__name__, type(source).__name__} <= {"Functional", "Model"})
    assert converted.name == source.name
    assert [layer.name for layer in converted.layers] == [layer.name for layer in source.layers]
    assert tuple(converted.output_shape) == tuple(source.output_shape)
    difference = _relative_difference(source, converted, _random_input(shape))
    assert difference <= TOLERANCE, difference
    return difference


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_converts_with_equal_outputs(name, flavour):
    shape, build = LAYERS[name]
    k = FLAVOURS[flavour]
    inputs = k.Input(shape, name="x")
    source = _randomize(k.Model(inputs, build(k.layers, inputs), name=f"m_{name}"))
    converted = CONVERT[flavour](source)
    _check(source, converted, flavour, shape)
