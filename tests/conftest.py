"""Shared fixtures: bundled digits data and a trained small residual CNN."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Trace strictly: a bug in a channel handler fails the test instead of becoming a barrier
# (subprocesses started by tests inherit it).
os.environ["TFCOMPRESS_STRICT_TRACING"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfcompress._keras import FLAVOURS, KERAS3, keras  # noqa: E402
from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """``((x_train, y_train), (x_test, y_test))`` of sklearn's digits at 16x16."""
    return load_digits(size=16)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A residual CNN trained on digits (float); tests must clone it before changing it."""
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(residual_cnn((16, 16, 1), width=16))
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    return model


@pytest.fixture
def fresh_cnn(trained_cnn):
    """A compiled copy of the trained CNN that a test may change freely."""
    clone = keras.models.clone_model(trained_cnn)
    clone.set_weights(trained_cnn.get_weights())
    return compile_classifier(clone)


@pytest.fixture(params=FLAVOURS, ids=lambda f: f.name)
def flavour(request):
    """Each Keras in turn: a :class:`tfcompress._keras.Flavour` (``.module`` is the Keras)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    for flavour in FLAVOURS:  # each Keras keeps its own seed state
        flavour.module.utils.set_random_seed(1234)
    np.random.seed(1234)
    tf.random.set_seed(1234)
    yield
    keras.backend.clear_session()
    # Keras 3's default clear_session also runs gc.collect(), ~0.3 s per test (minutes over
    # the suite); Python's own collector frees the models in time.
    KERAS3.module.backend.clear_session(free_memory=False)
