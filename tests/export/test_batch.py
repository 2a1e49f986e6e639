"""``to_tflite(batch_size=...)``: static and dynamic batches, and "auto" falling back to a
static batch of 1 when LiteRT cannot run the dynamic file."""

import os
import warnings

import numpy as np
import pytest

from tfcompress.export import (
    StaticBatchWarning,
    input_shapes,
    litert,
    quantization_kind,
    to_tflite,
    verify,
)


def _dense(keras):
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                             keras.layers.Dense(2)], name="dense")


def _generator(keras):
    """A small image generator with GroupNormalization(groups=-1) (one group per channel).
    tf_keras's version converts with a dynamic batch, but LiteRT then fails to prepare a
    BROADCAST_TO for batches other than the traced one."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((8,)),
        layers.Dense(4 * 4 * 8),
        layers.Reshape((4, 4, 8)),
        layers.Conv2DTranspose(4, 3, strides=2, padding="same"),
        layers.GroupNormalization(groups=-1, name="norm"),
        layers.ReLU(),
        layers.Conv2D(1, 3, padding="same", activation="tanh"),
    ], name="generator")


def _relative_gap(actual, expected):
    return np.max(np.abs(actual - expected)) / max(1.0, np.max(np.abs(expected)))


def test_an_int_batch_is_static_and_auto_stays_dynamic_when_it_works(flavour, tmp_path):
    model = _dense(flavour.module)
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaticBatchWarning)
        auto = to_tflite(model, tmp_path / "auto.tflite", None)
    static = to_tflite(model, tmp_path / "four.tflite", None, batch_size=4)
    assert input_shapes(auto) == [(None, 3)] and input_shapes(static) == [(4, 3)]
    expected = model.predict(x, verbose=0)
    # 10 samples through a batch of 4: two full batches and one padded one.
    assert _relative_gap(litert.run(static, x), expected) < 1e-4
    assert _relative_gap(litert.run(auto, x, batch_size=7), expected) < 1e-4
    with pytest.raises(ValueError, match="static batch of 4; pass batches of exactly 4"):
        litert.latency(static, x[:2], runs=1)
    assert "static batch of 4" in verify(model, static, x).summary()


def test_int8_calibrates_in_batches_of_the_static_size(tmp_path):
    from tfcompress._keras import keras

    model = _dense(keras)
    x = np.random.default_rng(0).normal(size=(33, 3)).astype(np.float32)
    path = to_tflite(model, tmp_path / "m.tflite", "int8", x, batch_size=8)
    assert input_shapes(path) == [(8, 3)] and quantization_kind(path) == "int8"
    assert verify(model, path, x, atol=0.1 * np.abs(model.predict(x, verbose=0)).max()).passed
    with pytest.raises(ValueError, match="fewer than 64 samples"):
        to_tflite(model, tmp_path / "m.tflite", "int8", x, batch_size=64)


def test_auto_falls_back_to_a_static_batch_of_one_that_litert_runs(flavour, tmp_path):
    model = _generator(flavour.module)
    # Measured: tf_keras's GroupNormalization needs the fallback, Keras 3's does not.
    needs_static = not flavour.is_keras3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = to_tflite(model, tmp_path / "g.tflite", None)
    messages = [str(w.message) for w in caught if issubclass(w.category, StaticBatchWarning)]
    if needs_static:
        assert len(messages) == 1 and "BROADCAST_TO" in messages[0], messages
        assert "static batch of 1" in messages[0]
        assert input_shapes(path) == [(1, 8)]
    else:
        assert messages == [] and input_shapes(path) == [(None, 8)]
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    assert _relative_gap(litert.run(path, x), model.predict(x, verbose=0)) < 1e-4
    assert sorted(os.listdir(tmp_path)) == ["g.tflite"]


def test_batch_none_is_honoured_even_where_litert_cannot_run_it(tmp_path):
    from tfcompress._keras import keras

    path = to_tflite(_generator(keras), tmp_path / "g.tflite", None, batch_size=None)
    assert input_shapes(path) == [(None, 8)]
    with pytest.raises(ValueError, match=r"BROADCAST_TO.*export a static batch"):
        litert.run(path, np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("bad", ["dynamic", 0, -2, 1.5, True])
def test_bad_batch_sizes_are_refused_before_converting(tmp_path, bad):
    from tfcompress._keras import keras

    with pytest.raises(ValueError, match=r"Unknown batch_size=.*'auto'.*None.*positive int"):
        to_tflite(_dense(keras), tmp_path / "m.tflite", None, batch_size=bad)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_qat_model_stays_all_int8_with_a_static_batch(qat_model, tiny_data, tmp_path):
    """The static-batch route keeps fake-quant ops convertible, like the dynamic one."""
    path = to_tflite(qat_model, tmp_path / "qat.tflite", batch_size=2)
    assert input_shapes(path) == [(2, 8, 8, 1)]
    report = verify(qat_model, path, tiny_data, allow_float_fallback=False)
    assert report.kind == "int8" and report.float_fallback_ops == []
