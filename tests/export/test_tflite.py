import os

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.export import (
    QUANTIZE_OPTIONS,
    ConversionError,
    is_qat_model,
    litert,
    quantization_kind,
    tflite_ops,
    to_tflite,
    verify,
)

EXPECTED_KIND = {None: "float32", "dynamic": "dynamic", "float16": "float16", "int8": "int8"}


@pytest.mark.parametrize("quantize", [None, "dynamic", "float16", "int8"])
def test_each_option_writes_its_kind_and_matches_keras(tiny_model, tiny_data, tmp_path, quantize):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", quantize, representative_data=tiny_data)
    assert path == tmp_path / "m.tflite" and path.is_file()
    assert quantization_kind(path) == EXPECTED_KIND[quantize]
    assert verify(tiny_model, path, tiny_data).passed
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]  # no temporary files left


def test_auto_is_float_for_a_float_model(tiny_model, tmp_path):
    assert not is_qat_model(tiny_model)
    assert quantization_kind(to_tflite(tiny_model, tmp_path / "m.tflite")) == "float32"


def test_auto_is_full_int8_for_a_qat_model_without_data(qat_model, tiny_data, tmp_path):
    assert is_qat_model(qat_model)
    path = to_tflite(qat_model, tmp_path / "qat.tflite")
    compute = [op for op in tflite_ops(path) if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert [op.name for op in compute] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert all(op.activation_dtypes == ("int8",) for op in compute)
    report = verify(qat_model, path, tiny_data, allow_float_fallback=False)
    assert report.kind == "int8" and report.float_fallback_ops == []


def test_qat_model_detected_inside_a_nested_model(qat_model):
    from tfcompress._keras import keras

    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, qat_model(inputs))
    assert is_qat_model(outer)


@pytest.mark.parametrize("quantize", ["dynamic", "float16"])
def test_float_quantization_of_a_qat_model_is_refused(qat_model, tmp_path, quantize):
    with pytest.raises(ValueError, match="quantize='int8'"):
        to_tflite(qat_model, tmp_path / "m.tflite", quantize)
    assert not (tmp_path / "m.tflite").exists()


def test_int8_of_a_float_model_needs_representative_data(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(tiny_model, tmp_path / "m.tflite", "int8")
    assert os.listdir(tmp_path) == []


def test_unknown_option_lists_the_choices(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="Unknown quantize='int4'") as info:
        to_tflite(tiny_model, tmp_path / "m.tflite", "int4")
    for option in QUANTIZE_OPTIONS:
        assert repr(option) in str(info.value)


@pytest.mark.parametrize(
    "make_data",
    [
        lambda x: [(x[i : i + 8], np.zeros(8)) for i in range(0, 32, 8)],  # (x, y) batches
        lambda x: (lambda: iter(x[:16])),  # a function returning single samples
        lambda x: tf.data.Dataset.from_tensor_slices(x[:16]).batch(4),
    ],
    ids=["xy-batches", "callable-samples", "tf-data"],
)
def test_representative_data_forms(tiny_model, tiny_data, tmp_path, make_data):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", "int8", make_data(tiny_data))
    assert quantization_kind(path) == "int8"


@pytest.mark.parametrize("lazy", [False, True], ids=["array", "generator"])
def test_representative_data_of_the_wrong_shape_is_rejected(tiny_model, tmp_path, lazy):
    data = np.zeros((4, 9, 9, 1), np.float32)
    representative = (lambda: iter([data])) if lazy else data
    with pytest.raises(ValueError, match=r"does not fit the model input \(None, 8, 8, 1\)"):
        to_tflite(tiny_model, tmp_path / "m.tflite", "int8", representative)
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("empty", [np.zeros((0, 8, 8, 1)), [], lambda: iter(())])
def test_empty_representative_data_is_rejected(tiny_model, tmp_path, empty):
    with pytest.raises(ValueError, match="yielded no samples"):
        to_tflite(tiny_model, tmp_path / "m.tflite", "int8", empty)


def test_integer_interface(tiny_model, tiny_data, tmp_path):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", "int8", tiny_data, io_dtype="int8")
    ops = tflite_ops(path)
    assert ops[0].input_dtypes[0] == "int8" and ops[-1].output_dtypes[0] == "int8"
    assert "QUANTIZE" not in [op.name for op in ops]
    # litert quantizes the float input and dequantizes the output for us.
    assert verify(tiny_model, path, tiny_data, min_agreement=0.9).passed
    with pytest.raises(ValueError, match="io_dtype='int8' needs an int8 model"):
        to_tflite(tiny_model, tmp_path / "f.tflite", None, io_dtype="int8")


def test_failed_conversion_leaves_no_file_and_keeps_the_old_one(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")

    real_factory = tf.lite.TFLiteConverter.from_keras_model

    def broken_converter(model):
        def convert():
            raise RuntimeError("converter exploded\nC++ stack trace")

        converter = real_factory(model)
        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", broken_converter)
    with pytest.raises(ConversionError, match="failed: converter exploded C\\+\\+ stack trace"):
        to_tflite(tiny_model, target, None)
    assert target.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_failed_write_keeps_the_old_file(tiny_model, tmp_path, monkeypatch):
    import pathlib

    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")
    real_write = pathlib.Path.write_bytes

    def half_write(self, data):
        real_write(self, data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="No space left"):
        to_tflite(tiny_model, target, None)
    assert target.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_bad_output_paths(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="does not exist. Create it first"):
        to_tflite(tiny_model, tmp_path / "missing" / "m.tflite", None)
    with pytest.raises(ValueError, match="is a folder"):
        to_tflite(tiny_model, tmp_path, None)


def test_keras3_model_is_rejected_with_the_fix(tmp_path):
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match="import tf_keras as keras"):
        to_tflite(model, tmp_path / "m.tflite")


def test_litert_output_matches_the_keras_model(tiny_model, tiny_data, tmp_path):
    path = to_tflite(tiny_model, tmp_path / "m.tflite", None)
    expected = tiny_model.predict(tiny_data[:10], verbose=0)
    np.testing.assert_allclose(litert.run(path, tiny_data[:10], batch_size=4), expected, atol=1e-5)
