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
def test_each_option_writes_its_kind_and_matches_keras(
    any_tiny_model, tiny_data, tmp_path, quantize
):
    model = any_tiny_model
    path = to_tflite(model, tmp_path / "m.tflite", quantize, representative_data=tiny_data)
    assert path == tmp_path / "m.tflite" and path.is_file()
    assert quantization_kind(path) == EXPECTED_KIND[quantize]
    assert verify(model, path, tiny_data).passed
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]  # no temporary files left


def test_auto_is_float_for_a_float_model(any_tiny_model, tmp_path):
    assert not is_qat_model(any_tiny_model)
    assert quantization_kind(to_tflite(any_tiny_model, tmp_path / "m.tflite")) == "float32"


def test_auto_is_full_int8_for_a_qat_model_without_data(qat_model, tiny_data, tmp_path):
    assert is_qat_model(qat_model)
    path = to_tflite(qat_model, tmp_path / "qat.tflite")
    compute = [op for op in tflite_ops(path) if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert [op.name for op in compute] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert all(op.activation_dtypes == ("int8",) for op in compute)
    report = verify(qat_model, path, tiny_data, allow_float_fallback=False)
    assert report.kind == "int8" and report.float_fallback_ops == []
    assert sorted(os.listdir(tmp_path)) == ["qat.tflite"]  # no staged SavedModel left


def test_qat_model_detected_inside_a_nested_model(qat_model, flavour):
    keras = flavour.module
    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, qat_model(inputs))
    assert is_qat_model(outer)


def test_keras3_qat_contract_is_the_class_attribute():
    from tfcompress._keras import keras3

    class Plain(keras3.layers.Layer):
        def call(self, inputs):
            return inputs

        def compute_output_shape(self, input_shape):
            return input_shape

    class Marked(Plain):
        tfcompress_qat = True

    def model_with(layer):
        inputs = keras3.Input((3, 4))
        return keras3.Model(inputs, keras3.layers.Dense(2)(layer(inputs)))

    wrapped = Plain()
    wrapped.tfcompress_qat = True  # an instance attribute is not the contract
    assert not is_qat_model(model_with(Plain())) and not is_qat_model(model_with(wrapped))
    assert is_qat_model(model_with(Marked()))
    # Through a wrapper layer (its public `layer`) and a nested model.
    assert is_qat_model(model_with(keras3.layers.TimeDistributed(Marked())))
    inputs = keras3.Input((3, 4))
    assert is_qat_model(keras3.Model(inputs, model_with(Marked())(inputs)))


@pytest.mark.parametrize("quantize", ["dynamic", "float16"])
def test_float_quantization_of_a_qat_model_is_refused(qat_model, tmp_path, quantize):
    with pytest.raises(ValueError, match="quantize='int8'"):
        to_tflite(qat_model, tmp_path / "m.tflite", quantize)
    assert not (tmp_path / "m.tflite").exists()


def test_int8_of_a_float_model_needs_representative_data(any_tiny_model, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(any_tiny_model, tmp_path / "m.tflite", "int8")
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
def test_representative_data_of_the_wrong_shape_is_rejected(any_tiny_model, tmp_path, lazy):
    data = np.zeros((4, 9, 9, 1), np.float32)
    representative = (lambda: iter([data])) if lazy else data
    with pytest.raises(ValueError, match=r"does not fit the model input \(None, 8, 8, 1\)"):
        to_tflite(any_tiny_model, tmp_path / "m.tflite", "int8", representative)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("empty", [np.zeros((0, 8, 8, 1)), [], lambda: iter(())])
def test_empty_representative_data_is_rejected(tiny_model, tmp_path, empty):
    with pytest.raises(ValueError, match="yielded no samples"):
        to_tflite(tiny_model, tmp_path / "m.tflite", "int8", empty)


def test_integer_interface(any_tiny_model, tiny_data, tmp_path):
    tiny_model = any_tiny_model
    path = to_tflite(tiny_model, tmp_path / "m.tflite", "int8", tiny_data, io_dtype="int8")
    ops = tflite_ops(path)
    assert ops[0].input_dtypes[0] == "int8" and ops[-1].output_dtypes[0] == "int8"
    assert "QUANTIZE" not in [op.name for op in ops]
    # litert quantizes the float input and dequantizes the output for us.
    assert verify(tiny_model, path, tiny_data, min_agreement=0.9).passed
    with pytest.raises(ValueError, match="io_dtype='int8' needs an int8 model"):
        to_tflite(tiny_model, tmp_path / "f.tflite", None, io_dtype="int8")


def test_failed_conversion_leaves_no_file_and_keeps_the_old_one(
    any_tiny_model, flavour, tmp_path, monkeypatch
):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")
    # tf_keras models convert from the model, Keras 3 ones from a staged SavedModel.
    factory = "from_saved_model" if flavour.is_keras3 else "from_keras_model"
    real_factory = getattr(tf.lite.TFLiteConverter, factory)

    def broken_converter(source):
        def convert():
            raise RuntimeError("converter exploded\nC++ stack trace")

        converter = real_factory(source)
        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, factory, broken_converter)
    with pytest.raises(ConversionError, match="failed: converter exploded C\\+\\+ stack trace"):
        to_tflite(any_tiny_model, target, None, batch_size=None)  # "auto" would retry
    assert target.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_failed_write_keeps_the_old_file(any_tiny_model, tmp_path, monkeypatch):
    import pathlib

    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")
    real_write = pathlib.Path.write_bytes

    def half_write(self, data):
        real_write(self, data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="No space left"):
        to_tflite(any_tiny_model, target, None)
    assert target.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_bad_output_paths(any_tiny_model, tmp_path):
    with pytest.raises(ValueError, match="does not exist. Create it first"):
        to_tflite(any_tiny_model, tmp_path / "missing" / "m.tflite", None)
    with pytest.raises(ValueError, match="is a folder"):
        to_tflite(any_tiny_model, tmp_path, None)


def test_keras3_subclassed_model_is_refused_with_the_fix(keras3_subclassed, tmp_path):
    with pytest.raises(ValueError, match=r"subclassed Keras 3 model.*keras.Input\(shape\)"):
        to_tflite(keras3_subclassed, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_keras3_on_another_backend_is_refused_before_anything_is_written(
    any_tiny_model, flavour, tmp_path, monkeypatch
):
    from tfcompress import _keras

    monkeypatch.setattr(_keras, "backend", lambda: "jax")
    if flavour.is_keras3:
        with pytest.raises(RuntimeError, match="needs Keras 3's TensorFlow backend.*'jax'"):
            to_tflite(any_tiny_model, tmp_path / "m.tflite")
        assert os.listdir(tmp_path) == []
    else:  # tf_keras always runs on TensorFlow: Keras 3's backend does not matter
        assert to_tflite(any_tiny_model, tmp_path / "m.tflite").is_file()


def test_pruned_and_rebuilt_model_keeps_float_parity(flavour, tiny_data, tmp_path):
    from tfcompress.models import residual_cnn
    from tfcompress.pruning import count_params, fpgm_masks, rebuild

    model = residual_cnn((8, 8, 1), width=8, flavour=flavour.name)
    slim = rebuild(model, fpgm_masks(model, 0.5))
    assert type(slim) is type(model) and count_params(slim) < count_params(model)
    path = to_tflite(slim, tmp_path / "slim.tflite", None)
    expected = slim.predict(tiny_data, verbose=0)  # Keras itself, not the code under test
    np.testing.assert_allclose(litert.run(path, tiny_data), expected, atol=1e-4)
    assert verify(slim, path, tiny_data).kind == "float32"


def test_litert_output_matches_the_keras_model(any_tiny_model, tiny_data, tmp_path):
    tiny_model = any_tiny_model
    path = to_tflite(tiny_model, tmp_path / "m.tflite", None)
    expected = tiny_model.predict(tiny_data[:10], verbose=0)
    np.testing.assert_allclose(litert.run(path, tiny_data[:10], batch_size=4), expected, atol=1e-5)
