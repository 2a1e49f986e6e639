"""``to_tflite(..., weight_storage="int4")``: weights trained at 4 bits stored two per byte.

The files are decoded here with the LiteRT schema, nibbles unpacked by hand, so the checks
do not go through the code that wrote them.
"""

import pathlib
import warnings

import numpy as np
import pytest

from tfcompress.export import Int4Warning, litert, repack_int4, tflite_ops, to_tflite
from tfcompress.export.flatbuffer import activation_ranges
from tfcompress.quantization import quantize_model

_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_CACHE = {}


def _qat4_model(module, bits=4):
    """Conv - depthwise - ReLU - conv - GAP - Dense, PACT QAT at 4/4 bits (4.9k weights),
    every layer at 4 bits (``first_last_bits=None``), so every weight tensor packs."""
    model = module.Sequential([
        module.Input((8, 8, 1)),
        module.layers.Conv2D(16, 3, name="conv"),
        module.layers.DepthwiseConv2D(3, name="depthwise"),
        module.layers.ReLU(name="relu"),
        module.layers.Conv2D(32, 3, name="conv2"),
        module.layers.GlobalAveragePooling2D(name="gap"),
        module.layers.Dense(3, name="logits"),
    ])
    return quantize_model(model, activation_bits=bits, weight_bits=bits, first_last_bits=None)


@pytest.fixture
def exported(flavour, tiny_data, tmp_path_factory):
    """``(qat model, int8 file, int4 file, Int4Warnings)`` per flavour, built once per module:
    the QAT model trained 4 steps (enough to move weights and ranges), exported both ways."""
    if flavour.name not in _CACHE:
        qat = _qat4_model(flavour.module)
        qat.compile("adam", flavour.module.losses.SparseCategoricalCrossentropy(from_logits=True))
        qat.fit(tiny_data, np.arange(len(tiny_data)) % 3, batch_size=16, epochs=1, verbose=0)
        folder = tmp_path_factory.mktemp(f"int4_{flavour.name}")
        int8 = to_tflite(qat, folder / "int8.tflite")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            int4 = to_tflite(qat, folder / "int4.tflite", weight_storage="int4")
        found = [w for w in caught if issubclass(w.category, Int4Warning)]
        _CACHE[flavour.name] = (qat, int8, int4, found)
    return _CACHE[flavour.name]


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _weights(path):
    """``[(op, tensor type name, real weight values, stored bytes)]`` of the weight inputs of
    the file's conv and dense ops, decoded independently of tfcompress."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(pathlib.Path(path).read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    subgraph, found = model.subgraphs[0], []
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name not in _WEIGHT_OPS:
            continue
        tensor = subgraph.tensors[op.inputs[1]]
        raw = np.asarray(model.buffers[tensor.buffer].data, np.uint8)
        count = int(np.prod(tensor.shape))
        if tensor.type == schema.TensorType.INT4:
            nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)[:count].astype(int)
            q = np.where(nibbles > 7, nibbles - 16, nibbles)  # two's complement, 4 bits
        else:
            q = raw.view(np.int8).astype(int)
        q = q.reshape(tuple(tensor.shape))
        scale = np.asarray(tensor.quantization.scale, np.float64)
        shape = [1] * q.ndim
        shape[tensor.quantization.quantizedDimension] = len(scale)
        found.append((name, type_names[tensor.type], q * scale.reshape(shape), raw.size))
    return found


def _output_step(int8_path) -> float:
    """The quantization step of the int8 file's output (the input of its last DEQUANTIZE)."""
    last = tflite_ops(int8_path)[-1]
    assert last.name == "DEQUANTIZE"
    return activation_ranges(int8_path)[last.inputs[0].name].step


def _buffer_count(path) -> int:
    return len(_schema().ModelT.InitFromPackedBuf(pathlib.Path(path).read_bytes(), 0).buffers)


def test_int4_file_stores_the_same_weights_in_half_the_bytes(exported):
    _, int8, int4, caught = exported
    assert caught == []  # every weight tensor fits: no Int4Warning
    before, after = _weights(int8), _weights(int4)
    assert [(op, kind) for op, kind, _, _ in after] == [
        ("CONV_2D", "INT4"), ("DEPTHWISE_CONV_2D", "INT4"), ("CONV_2D", "INT4"),
        ("FULLY_CONNECTED", "INT4")]
    saved = 0
    for (_, _, real8, bytes8), (_, _, real4, bytes4) in zip(before, after):
        np.testing.assert_allclose(real4, real8, rtol=1e-6, atol=0)  # the same real weights
        assert bytes8 == real8.size and bytes4 == (real8.size + 1) // 2
        saved += bytes8 - bytes4
    assert saved == (144 + 144 + 4608 + 96) // 2
    # The file shrinks by what the weights save, give or take the writer's 16-byte alignment
    # of each buffer and one new operator code (op version) per repacked op type.
    slack = 16 * _buffer_count(int4) + 32 * 3
    shrink = int8.stat().st_size - int4.stat().st_size
    assert abs(shrink - saved) <= slack, (shrink, saved, slack)


def test_2_bit_midrise_weights_pack_as_odd_nibbles(flavour, tiny_data, tmp_path):
    # quantize_model's "auto" weight range learns 2-bit kernels on the midrise grid
    # {-1.5, -0.5, 0.5, 1.5} * step: int8 multiples {-3, -1, 1, 3} * 42 of a finer step.
    qat = _qat4_model(flavour.module, bits=2)
    qat.compile("adam", flavour.module.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(tiny_data, np.arange(len(tiny_data)) % 3, batch_size=16, epochs=1, verbose=0)
    int8 = to_tflite(qat, tmp_path / "int8.tflite")
    int4 = to_tflite(qat, tmp_path / "int4.tflite", weight_storage="int4")
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(int4.read_bytes(), 0)
    for (_, kind, real4, _), (_, _, real8, _) in zip(_weights(int4), _weights(int8)):
        assert kind == "INT4"
        np.testing.assert_allclose(real4, real8, rtol=1e-6, atol=0)
    for tensor in model.subgraphs[0].tensors:
        if tensor.type == schema.TensorType.INT4:
            raw = np.asarray(model.buffers[tensor.buffer].data, np.uint8)
            nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)[
                : int(np.prod(tensor.shape))].astype(int)
            q = np.where(nibbles > 7, nibbles - 16, nibbles)
            assert set(np.unique(q)) <= {-3, -1, 1, 3}  # four odd levels, no zero
    expected = litert.run(int8, tiny_data)
    assert np.mean(litert.run(int4, tiny_data).argmax(1) == expected.argmax(1)) >= 0.95


def _as_int8(int4_path, out_path):
    """The int4 file with its int4 weights written back as int8 bytes (same integers, same
    scales): what the int4 kernels must compute, by a second route."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(pathlib.Path(int4_path).read_bytes(), 0)
    for tensor in model.subgraphs[0].tensors:
        if tensor.type == schema.TensorType.INT4:
            raw = np.asarray(model.buffers[tensor.buffer].data, np.uint8)
            nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1).astype(np.int16)
            q = np.where(nibbles > 7, nibbles - 16, nibbles)[: int(np.prod(tensor.shape))]
            model.buffers[tensor.buffer].data = q.astype(np.int8).view(np.uint8)
            tensor.type = schema.TensorType.INT8
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    pathlib.Path(out_path).write_bytes(bytes(builder.Output()))
    return out_path


def _builtin_run(path, x):
    """LiteRT's builtin kernels alone (no XNNPACK): int8 output integers."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_int4_kernels_compute_what_int8_kernels_compute_on_the_same_integers(
        exported, tiny_data, tmp_path):
    _, _, int4, _ = exported
    same = _as_int8(int4, tmp_path / "same_integers.tflite")
    np.testing.assert_array_equal(_builtin_run(int4, tiny_data), _builtin_run(same, tiny_data))


def test_int4_file_computes_what_the_int8_file_computes(exported, tiny_data):
    _, int8, int4, _ = exported
    expected = litert.run(int8, tiny_data)
    actual = litert.run(int4, tiny_data)
    # Same real weights, but a coarser weight scale: TFLite's fixed-point requantization (and
    # the int4 bias, rounded to the coarser unit) rounds a few outputs of each layer one step
    # the other way; through the model's layers that stays within two output steps, and
    # most outputs (the logits, ranged for 8 bits: few saturate) agree to the step.
    diff = np.abs(actual - expected) / _output_step(int8)
    assert diff.max() <= 2.001 and diff.mean() <= 0.5, (diff.max(), diff.mean())
    assert np.mean(actual.argmax(1) == expected.argmax(1)) >= 0.95


def test_ops_without_an_int4_kernel_stay_int8_with_a_warning(exported, tmp_path, monkeypatch):
    from tfcompress.export import int4

    monkeypatch.delitem(int4.INT4_OPS, "DEPTHWISE_CONV_2D")
    with pytest.warns(Int4Warning) as caught:
        path = to_tflite(exported[0], tmp_path / "m.tflite", weight_storage="int4")
    (message,) = [str(w.message) for w in caught if issubclass(w.category, Int4Warning)]
    assert "3 weight tensors stored as int4, 1 kept int8" in message
    assert "depthwise" in message and "LiteRT has no int4 kernel for DEPTHWISE_CONV_2D" in message
    kinds = [(op, kind) for op, kind, _, _ in _weights(path)]
    assert kinds[1] == ("DEPTHWISE_CONV_2D", "INT8")


def test_weights_trained_at_8_bits_are_refused_naming_them(qat_model, tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="no weights of '.*' to store in 4 bits") as info:
        to_tflite(qat_model, path, weight_storage="int4")
    message = str(info.value)
    assert "conv1" in message and "beyond int4's [-8, 7]" in message
    assert "quantize_model(model, weight_bits=4)" in message
    assert "Traceback" not in message and not path.exists()


@pytest.mark.parametrize("quantize, storage, message", [
    (None, "int4", r"quantize=None gives float32 weights"),
    ("auto", "int2", r"Unknown weight_storage='int2'. Choose 'int8'"),
])
def test_bad_options_are_refused_before_converting(exported, tmp_path, quantize, storage,
                                                   message):
    qat = exported[0]
    with pytest.raises(ValueError, match=message):
        to_tflite(qat, tmp_path / "m.tflite", quantize, weight_storage=storage)
    assert not (tmp_path / "m.tflite").exists()


def test_a_float_model_is_refused(any_tiny_model, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="not quantization-aware.*weight_bits=4"):
        to_tflite(any_tiny_model, tmp_path / "m.tflite", "int8", tiny_data,
                  weight_storage="int4")


def test_tensors_off_the_4_bit_grid_stay_int8(exported, tiny_data, tmp_path):
    """Only what fits is repacked: the Dense kernel moved off the grid (one value + 1, as
    8-bit training would leave it) stays int8, the rest is int4 and computes the same."""
    _, int8, _, _ = exported
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(int8.read_bytes(), 0)
    subgraph = model.subgraphs[0]
    dense = next(op for op in subgraph.operators
                 if len(op.inputs) > 1 and len(subgraph.tensors[op.inputs[1]].shape) == 2)
    buffer = model.buffers[subgraph.tensors[dense.inputs[1]].buffer]
    values = np.asarray(buffer.data, np.uint8).view(np.int8).copy()
    values[0] += 1 if values[0] < 127 else -1
    buffer.data = values.view(np.uint8)
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    edited = tmp_path / "edited.tflite"
    edited.write_bytes(bytes(builder.Output()))

    report = repack_int4(edited, tmp_path / "int4.tflite")
    assert [t.op for t in report.packed] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert [(t.op, t.reason.split(":")[-1].strip()) for t in report.kept] == [
        ("FULLY_CONNECTED", "trained at more than 4 bits")]
    assert [kind for _, kind, _, _ in _weights(tmp_path / "int4.tflite")] == [
        "INT4", "INT4", "INT4", "INT8"]
    same = _as_int8(tmp_path / "int4.tflite", tmp_path / "same_integers.tflite")
    np.testing.assert_array_equal(_builtin_run(tmp_path / "int4.tflite", tiny_data),
                                  _builtin_run(same, tiny_data))


def test_biases_the_converter_shares_are_repacked_too(flavour, tiny_data, tmp_path):
    """An untrained QAT model: every bias is zero, so the converter stores one buffer for all
    of them; each op's bias is rescaled on its own and every kernel is repacked."""
    qat = _qat4_model(flavour.module)
    int8 = to_tflite(qat, tmp_path / "int8.tflite")
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(int8.read_bytes(), 0)
    subgraph = model.subgraphs[0]
    biases = [subgraph.tensors[op.inputs[2]].buffer for op in subgraph.operators
              if len(op.inputs) > 2]
    assert len(biases) == 4 and len(set(biases)) < len(biases)  # shared: the case under test
    report = repack_int4(int8, tmp_path / "int4.tflite")
    assert len(report.packed) == 4 and report.kept == ()
    same = _as_int8(tmp_path / "int4.tflite", tmp_path / "same_integers.tflite")
    np.testing.assert_array_equal(_builtin_run(tmp_path / "int4.tflite", tiny_data),
                                  _builtin_run(same, tiny_data))
