import numpy as np
import pytest

from tfcompress.export import activation_ranges, litert, quantization_kind, tflite_ops, to_tflite


def test_ops_in_execution_order_with_tensor_dtypes(tiny_model, tmp_path):
    ops = tflite_ops(to_tflite(tiny_model, tmp_path / "m.tflite", None))
    assert [op.name for op in ops] == ["CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert [op.index for op in ops] == [0, 1, 2, 3]
    conv = ops[0]
    assert conv.input_dtypes == ("float32", "float32", "float32")  # input, kernel, bias
    assert conv.activation_dtypes == ("float32",) and conv.computes_in_float
    assert [t.constant for t in conv.inputs] == [False, True, True]
    assert ops[0].outputs[0] == ops[1].inputs[0]  # the graph is connected by tensor


def test_activation_ranges_match_the_runtime(tiny_model, tiny_data, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    path = to_tflite(tiny_model, tmp_path / "m.tflite", "int8", tiny_data)
    ranges = activation_ranges(path)
    runtime = {d["name"]: d["quantization"] for d in Interpreter(str(path)).get_tensor_details()}
    activations = {t.name for op in tflite_ops(path) for t in op.outputs if t.dtype == "int8"}
    assert activations and activations <= set(ranges)
    for name, r in ranges.items():
        assert (r.scale, r.zero_point) == pytest.approx(runtime[name])
        assert r.dtype == "int8" and r.step == r.scale
        assert (r.max - r.min) / r.scale == pytest.approx(255)
        assert r.min <= 0.0 <= r.max  # zero is representable
    # The input is calibrated on [0, 1): its range covers it within one step.
    (input_name,) = [op.outputs[0].name for op in tflite_ops(path) if op.name == "QUANTIZE"]
    assert ranges[input_name].min == pytest.approx(0.0, abs=ranges[input_name].step)
    assert ranges[input_name].max == pytest.approx(tiny_data.max(), abs=ranges[input_name].step)


def test_float_files_have_no_activation_ranges(tiny_model, tmp_path):
    assert activation_ranges(to_tflite(tiny_model, tmp_path / "m.tflite", "dynamic")) == {}


def test_not_a_tflite_file(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        tflite_ops(tmp_path / "x.tflite")
    with pytest.raises(FileNotFoundError, match="No TFLite file"):
        quantization_kind(tmp_path / "missing.tflite")


def test_integer_only_shape_ops_do_not_make_a_float_file_int8(tmp_path):
    import tensorflow as tf

    from tfcompress._keras import keras

    inputs = keras.Input((4, 2))
    outputs = keras.layers.Lambda(lambda x: tf.reshape(x, tf.stack([tf.shape(x)[0], 8])))(inputs)
    path = to_tflite(keras.Model(inputs, outputs), tmp_path / "m.tflite", None)
    assert any(op.activation_dtypes and set(op.activation_dtypes) == {"int32"}
               for op in tflite_ops(path))
    assert quantization_kind(path) == "float32"
    np.testing.assert_array_equal(litert.run(path, np.ones((2, 4, 2))), np.ones((2, 8)))


def _op(name, activations, constants=()):
    from tfcompress.export.flatbuffer import TensorInfo, TFLiteOp

    inputs = tuple(TensorInfo(f"a{i}", d, False) for i, d in enumerate(activations))
    inputs += tuple(TensorInfo(f"c{i}", d, True) for i, d in enumerate(constants))
    return TFLiteOp(0, name, inputs, (TensorInfo("out", activations[0], False),))


@pytest.mark.parametrize("ops, kind, fallbacks", [
    ([_op("CONV_2D", ["float32"], ["float32", "float32"])], "float32", []),
    ([_op("DEQUANTIZE", ["float16"]), _op("CONV_2D", ["float32"], ["float16"])], "float16", []),
    ([_op("FULLY_CONNECTED", ["float32"], ["int8", "float32"])], "dynamic", []),
    ([_op("QUANTIZE", ["float32"]), _op("CONV_2D", ["int8"], ["int8", "int32"]),
      _op("SIN", ["float32"]), _op("DEQUANTIZE", ["int8"])], "int8", ["SIN"]),
    ([_op("RESHAPE", ["float32", "int32"])], "float32", []),  # int32 shape input: not int8
])
def test_kind_and_fallbacks_of_hand_made_op_lists(ops, kind, fallbacks):
    from tfcompress.export.flatbuffer import fallbacks_of_ops, kind_of_ops

    assert kind_of_ops(ops) == kind
    assert [op.name for op in fallbacks_of_ops(ops)] == fallbacks
