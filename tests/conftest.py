"""Shared fixtures: bundled digits data and a trained small residual CNN."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcompress._keras import keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import residual_cnn  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """``((x_train, y_train), (x_test, y_test))`` of sklearn's digits at 16x16."""
    return load_digits(size=16)


def compile_classifier(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A residual CNN trained on digits (float); tests must clone it before changing it."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(residual_cnn((16, 16, 1), width=16))
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    return model


def clone_trained(model):
    """A compiled copy of ``model`` with the same weights."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return compile_classifier(clone)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    tf.random.set_seed(1234)
    yield
    keras.backend.clear_session()
