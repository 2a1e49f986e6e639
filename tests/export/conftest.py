"""Tiny models for export tests: conversions of these take about a second."""

import numpy as np
import pytest

from tfcompress._keras import keras


def _tiny_classifier(classes: int = 3) -> "keras.Model":
    """Conv-Conv-ReLU-GAP-Dense on 8x8x1 inputs.

    The second kernel has 1152 weights: dynamic-range quantization skips tensors with
    fewer than 1024 elements.
    """
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, name="conv1"),
            keras.layers.Conv2D(16, 3, name="conv2"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(classes, name="logits"),
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
def qat_model(tiny_model, tiny_data):
    """tfmot's default 8-bit QAT of the tiny model, trained one epoch so its ranges are real."""
    import tensorflow_model_optimization as tfmot

    model = tfmot.quantization.keras.quantize_model(tiny_model)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.arange(len(tiny_data)) % 3
    model.fit(tiny_data, labels, batch_size=16, epochs=1, verbose=0)
    return model
