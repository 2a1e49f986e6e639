import numpy as np
import pytest
import tensorflow as tf

from tfcompress._keras import keras
from tfcompress.export import ParityError, to_tflite, verify


def test_report_of_a_float_export(any_tiny_model, tiny_data, tmp_path):
    tiny_model = any_tiny_model
    path = to_tflite(tiny_model, tmp_path / "m.tflite", None)
    report = verify(tiny_model, path, tiny_data)
    assert report.passed and report.failures == []
    assert report.kind == "float32" and report.samples == len(tiny_data)
    assert report.max_abs_diff < 1e-4 and report.mean_abs_diff <= report.max_abs_diff
    assert report.top1_agreement == 1.0
    assert report.op_counts == {"CONV_2D": 2, "MEAN": 1, "FULLY_CONNECTED": 1}
    largest = np.abs(tiny_model.predict(tiny_data, verbose=0)).max()
    assert report.atol == pytest.approx(1e-3 * max(1.0, largest))
    assert "parity PASSED: m.tflite (float32)" in report.summary()


def test_a_file_from_another_model_breaks_parity(tiny_classifier, tiny_data, tmp_path):
    keras.utils.set_random_seed(1)
    exported = tiny_classifier()
    path = to_tflite(exported, tmp_path / "m.tflite", None)
    other = tiny_classifier()  # same architecture, other weights
    with pytest.raises(ParityError, match="does not match its Keras model") as info:
        verify(other, path, tiny_data)
    report = info.value.report
    assert not report.passed and report.max_abs_diff > report.atol
    assert any("exceeds the tolerance" in failure for failure in report.failures)
    assert "parity FAILED" in report.summary()
    quiet = verify(other, path, tiny_data, raise_on_failure=False)
    assert quiet.failures == report.failures


def test_int8_is_judged_by_agreement_unless_atol_is_given(tiny_model, tiny_data, tmp_path):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", "int8", tiny_data)
    report = verify(tiny_model, path, tiny_data, min_agreement=0.0)
    assert report.atol is None and report.max_abs_diff > 0
    with pytest.raises(ParityError, match="exceeds the tolerance"):
        verify(tiny_model, path, tiny_data, atol=0.0)


def test_disagreeing_classes_break_parity(tiny_classifier, tiny_model, tiny_data, tmp_path):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", None)
    rolled = tiny_classifier()
    weights = tiny_model.get_weights()
    weights[-2], weights[-1] = np.roll(weights[-2], 1, axis=1), np.roll(weights[-1], 1)
    rolled.set_weights(weights)  # class j scores what class j-1 scored: argmax always moves
    report = verify(rolled, path, tiny_data, atol=1e9, raise_on_failure=False)
    assert report.top1_agreement == 0.0
    assert report.failures == ["top-1 agreement 0.00% is below 99.00%."]


def test_float_fallback_ops_are_listed_and_can_fail_the_check(tiny_data, tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(tf.math.sin)(x)  # SIN has no int8 kernel
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    path = to_tflite(model, tmp_path / "m.tflite", "int8", tiny_data)
    report = verify(model, path, tiny_data, min_agreement=0.0)
    assert [name.split("#")[0] for name in report.float_fallback_ops] == ["SIN"]
    with pytest.raises(ParityError, match="ops left in float: SIN#"):
        verify(model, path, tiny_data, min_agreement=0.0, allow_float_fallback=False)


def test_outputs_without_classes_are_judged_by_tolerance(tiny_data, tmp_path):
    layers = [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    path = to_tflite(model, tmp_path / "m.tflite", None)
    report = verify(model, path, tiny_data)
    assert report.top1_agreement is None and report.atol is not None and report.passed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": np.zeros((0, 8, 8, 1))}, "non-empty numeric array"),
        ({"data": np.zeros((4, 9, 9, 1))}, "does not fit"),
        ({"min_agreement": 1.5}, r"min_agreement. must be in \[0, 1\]"),
        ({"atol": -1.0}, "atol. must be >= 0"),
    ],
)
def test_bad_arguments(tiny_model, tiny_data, tmp_path, kwargs, message):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", None)
    arguments = {"data": tiny_data, **kwargs}
    with pytest.raises(ValueError, match=message):
        verify(tiny_model, path, **arguments)
