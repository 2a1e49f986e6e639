"""Tiny models for export tests: conversions of these take about a second."""

import numpy as np
import pytest
import tensorflow as tf

from tfcompress._keras import keras, keras3


def _tiny_classifier(classes: int = 3, module=keras) -> "keras.Model":
    """Conv-Conv-ReLU-GAP-Dense on 8x8x1 inputs, in the Keras ``module`` (tf_keras default).

    The second kernel has 1152 weights: dynamic-range quantization skips tensors with
    fewer than 1024 elements.
    """
    return module.Sequential(
        [
            module.Input((8, 8, 1)),
            module.layers.Conv2D(8, 3, name="conv1"),
            module.layers.Conv2D(16, 3, name="conv2"),
            module.layers.ReLU(name="relu"),
            module.layers.GlobalAveragePooling2D(name="gap"),
            module.layers.Dense(classes, name="logits"),
        ],
        name="tiny",
    )


@pytest.fixture
def tiny_data():
    return np.random.default_rng(0).uniform(0.0, 1.0, (64, 8, 8, 1)).astype(np.float32)


@pytest.fixture
def tiny_classifier():
    """The factory, for tests that need several models of the same architecture."""
    return _tiny_classifier


@pytest.fixture
def tiny_model():
    return _tiny_classifier()


@pytest.fixture
def any_tiny_model(flavour):
    """The tiny classifier in each Keras in turn (tests using it run once per flavour)."""
    return _tiny_classifier(module=flavour.module)


@pytest.fixture
def keras3_subclassed():
    """A called Keras 3 subclassed model: no symbolic inputs, so no input signature."""

    class Subclassed(keras3.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras3.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    return model


class FakeQuant(keras3.layers.Layer):
    """A minimal Keras 3 QAT layer for the ``tfcompress_qat`` contract: 8-bit fake
    quantization on a fixed range, held in variables as QAT ranges are."""

    tfcompress_qat = True

    def __init__(self, low: float, high: float, **kwargs):
        super().__init__(**kwargs)
        self.range = (float(low), float(high))

    def build(self, input_shape):
        constant = keras3.initializers.Constant
        self.low = self.add_weight(shape=(), initializer=constant(self.range[0]),
                                   trainable=False, name="low")
        self.high = self.add_weight(shape=(), initializer=constant(self.range[1]),
                                    trainable=False, name="high")

    def call(self, inputs):
        return tf.quantization.fake_quant_with_min_max_vars(inputs, self.low, self.high)


def _keras3_qat_model(data: np.ndarray) -> "keras3.Model":
    """The tiny classifier in Keras 3 with a FakeQuant after the input and every layer (each
    tensor needs a range for an all-int8 graph), the ranges measured on ``data`` (a stand-in
    for trained QAT ranges)."""
    float_model = _tiny_classifier(module=keras3)
    probe = keras3.Model(float_model.inputs, [layer.output for layer in float_model.layers])
    ranges = [(min(0.0, v.min()), max(0.0, v.max())) for v in probe.predict(data, verbose=0)]
    inputs = keras3.Input((8, 8, 1))
    x = FakeQuant(0.0, 1.0, name="fq_input")(inputs)
    for layer, (low, high) in zip(float_model.layers, ranges):
        x = FakeQuant(low, high, name=f"fq_{layer.name}")(layer(x))
    return keras3.Model(inputs, x, name="tiny_qat")


@pytest.fixture
def qat_model(flavour, tiny_data):
    """A QAT tiny model in each Keras: tf_keras: tfmot's default 8-bit QAT, trained one epoch
    so its ranges are real; Keras 3: FakeQuant layers with measured ranges."""
    if flavour.is_keras3:
        return _keras3_qat_model(tiny_data)
    import tensorflow_model_optimization as tfmot

    model = tfmot.quantization.keras.quantize_model(_tiny_classifier())
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.arange(len(tiny_data)) % 3
    model.fit(tiny_data, labels, batch_size=16, epochs=1, verbose=0)
    return model
