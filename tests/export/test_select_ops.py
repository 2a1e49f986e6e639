"""TF ops without a TFLite builtin kernel: a short error naming op, layer and fix; TF Select
(flex) export on request; flex files run where a flex interpreter exists, else a skip."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.export import ConversionError, flex_ops, tflite_ops, to_tflite, verify
from tfcompress.export.conversion_errors import captured_stderr


def _cnn3d(keras):
    """Conv3D + MaxPool3D: TFLite has CONV_3D but no 3-D max pooling kernel."""
    return keras.Sequential([
        keras.Input((4, 4, 4, 2)),
        keras.layers.Conv3D(3, 1, name="conv3d"),
        keras.layers.MaxPool3D(2, name="pool3d"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="logits"),
    ], name="cnn3d")


def _patches_model(keras):
    """A custom layer calling ``tf.image.extract_patches`` (TF op ExtractImagePatches)."""

    class Patchify(keras.layers.Layer):
        def call(self, inputs):
            return tf.image.extract_patches(inputs, sizes=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                            rates=[1, 1, 1, 1], padding="VALID")

    return keras.Sequential([keras.Input((4, 4, 1)), Patchify(name="patchify"),
                             keras.layers.Flatten(), keras.layers.Dense(2)], name="patches")


def _check_refused_then_flex(model, tmp_path, capfd, op, layer):
    target = tmp_path / "m.tflite"
    with pytest.raises(ConversionError) as info:
        to_tflite(model, target, None)
    error, message = info.value, str(info.value)
    assert len(message.splitlines()) <= 5, message
    assert op in message and repr(layer) in message and "select_tf_ops=True" in message
    assert "flex" in message  # the runtime requirement
    assert error.ops == (op,) and error.layers == (layer,)
    # The converter's MLIR diagnostics are kept on the error, not printed.
    assert "loc(" in error.details and len(error.details) > 1000
    assert "loc(" not in capfd.readouterr().err
    assert os.listdir(tmp_path) == []
    path = to_tflite(model, target, None, select_tf_ops=True)
    assert flex_ops(tflite_ops(path)) == [f"Flex{op}"]
    return path


def test_maxpool3d_is_refused_with_the_fix_and_converts_with_select_tf_ops(
        flavour, tmp_path, capfd):
    _check_refused_then_flex(_cnn3d(flavour.module), tmp_path, capfd, "MaxPool3D", "pool3d")


@pytest.mark.slow
def test_extract_patches_in_a_custom_layer_is_refused_and_converts_with_select_tf_ops(
        flavour, tmp_path, capfd):
    _check_refused_then_flex(_patches_model(flavour.module), tmp_path, capfd,
                             "ExtractImagePatches", "patchify")


def test_a_flex_file_runs_where_a_flex_interpreter_exists(tmp_path):
    from tfcompress._keras import keras

    model = _cnn3d(keras)
    path = to_tflite(model, tmp_path / "m.tflite", None, select_tf_ops=True)
    x = np.random.default_rng(0).normal(size=(6, 4, 4, 4, 2)).astype(np.float32)
    report = verify(model, path, x, raise_on_failure=False)
    if report.skipped is not None:
        # Nothing measured and nothing failed: the report says why it could not run.
        assert "FlexMaxPool3D" in report.skipped and "flex delegate" in report.skipped
        assert report.failures == [] and not report.passed and report.samples == 0
        assert report.summary().startswith("parity NOT CHECKED: m.tflite (float32)")
        pytest.skip(report.skipped)
    assert report.passed and report.max_abs_diff < 1e-4


def test_captured_stderr_reads_back_what_cpp_writes_to_the_file_descriptor(capfd):
    with captured_stderr() as captured:
        os.write(2, b"written to fd 2\n")
    assert captured.text == "written to fd 2\n"
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")  # the descriptor is restored
    assert capfd.readouterr().err == "after\n"
