"""4-bit weight storage: repacking the int8 weights of a ``.tflite`` file as ``INT4`` tensors.

A model trained with weights at <= 4 bits (PACT QAT, ``quantize_model(..., weight_bits=4)``)
converts to int8 weight tensors on a coarse grid: each output channel takes at most 15
values, multiples of one step (see :mod:`tfcompress.quantization.tflite_mode`). Dividing a
channel's int8 values by their greatest common divisor ``g`` gives integers in ``[-8, 7]``
and the same real values with the scale ``g * scale``: they fit TFLite's ``INT4`` type (two
values per byte). The bias of the op, an int32 in units of ``input scale * weight scale``,
is rescaled alike (rounded to the new, coarser unit).

Only the weights of ops whose LiteRT kernels take int4 weights with int8 activations are
repacked (:data:`INT4_OPS`, each checked by running the file in LiteRT against the int8
file); other weight tensors stay int8 and :class:`Int4Report` says why. See
:func:`repack_int4` for an example.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfcompress._io import PathLike, atomic_file, output_path
from tfcompress.export.flatbuffer import decode_name, enum_names, read_tflite
from tfcompress.export.flatbuffer_writer import read_model, write_model

__all__ = ["INT4_OPS", "WEIGHT_STORAGES", "Int4Op", "Int4Report", "Int4Warning", "KeptTensor",
           "PackedTensor", "check_weight_storage", "repack_int4", "repack_int4_bytes"]

#: The ``weight_storage`` options of ``to_tflite``.
WEIGHT_STORAGES = ("int8", "int4")


@dataclasses.dataclass(frozen=True)
class Int4Op:
    """Where an op reads its activation, weights and bias, and the op version that declares
    int4 weights with int8 activations (TFLite's ``op_version.cc``)."""

    version: int
    data: int = 0
    weights: int = 1
    bias: int = 2


#: Ops whose LiteRT kernels run int4 weights with int8 activations, one row each.
INT4_OPS: Dict[str, Int4Op] = {
    "CONV_2D": Int4Op(version=7),
    "DEPTHWISE_CONV_2D": Int4Op(version=7),
    "FULLY_CONNECTED": Int4Op(version=10),
}

_INT4_MIN, _INT4_MAX = -8, 7


class Int4Warning(UserWarning):
    """``to_tflite(..., weight_storage="int4")`` left some weight tensors at int8 (trained
    at more than 4 bits, or read by an op without an int4 kernel); the message names them."""


@dataclasses.dataclass(frozen=True)
class PackedTensor:
    """A weight tensor stored as INT4.

    Attributes:
      op: the op that reads it, e.g. ``"CONV_2D"``.
      tensor: its name in the file (the layer's name is part of it).
      elements: number of weights; int8 storage takes that many bytes, int4 half (rounded up).
    """

    op: str
    tensor: str
    elements: int

    @property
    def saved_bytes(self) -> int:
        return self.elements - (self.elements + 1) // 2


@dataclasses.dataclass(frozen=True)
class KeptTensor:
    """An int8 weight tensor left at int8, and why."""

    op: str
    tensor: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Int4Report:
    """What :func:`repack_int4` changed.

    Attributes:
      packed: the weight tensors now stored as INT4.
      kept: int8 weight tensors left at int8, with the reason (trained at more than 4
        bits, or read by an op without an int4 kernel).
      int8_size: bytes of the int8 file.
      int4_size: bytes of the repacked file.
    """

    packed: Tuple[PackedTensor, ...]
    kept: Tuple[KeptTensor, ...]
    int8_size: int
    int4_size: int

    def summary(self) -> List[str]:
        """A few lines, as the CLI prints them."""
        ratio = self.int4_size / self.int8_size
        lines = [f"int4 weights: {len(self.packed)} tensors repacked, file "
                 f"{self.int8_size / 1024:.1f} KiB (int8) -> {self.int4_size / 1024:.1f} KiB "
                 f"(int4), {ratio:.1%} of the int8 size"]
        lines += [f"  kept int8: {t.tensor} ({t.op}): {t.reason}" for t in self.kept]
        return lines


def check_weight_storage(weight_storage: str, quantize: Optional[str], qat: bool) -> None:
    """Refuses what cannot be stored as ``weight_storage`` before anything is converted.

    Example:
      >>> check_weight_storage("int4", "int8", qat=False)
      Traceback (most recent call last):
      ...
      ValueError: weight_storage='int4' needs weights trained at <= 4 bits, ...
    """
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(
            f"Unknown weight_storage={weight_storage!r}. Choose 'int8' (one byte per weight) "
            "or 'int4' (two weights per byte, for weights trained at <= 4 bits).")
    if weight_storage == "int8":
        return
    if not qat:
        raise ValueError(
            "weight_storage='int4' needs weights trained at <= 4 bits, but the model is not "
            "quantization-aware (its int8 weights would use all 255 levels). Train it with "
            "`quantize_model(model, weight_bits=4)` first, or use weight_storage='int8'.")
    if quantize not in ("int8", "auto"):
        raise ValueError(
            f"weight_storage='int4' repacks int8 weights, but quantize={quantize!r} gives "
            f"{quantize or 'float32'} weights. Export the QAT model with quantize='int8' "
            "(or 'auto').")


def _op_names(schema, model) -> List[str]:
    names = enum_names(schema.BuiltinOperator)
    return [decode_name(c.customCode)
            or names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "UNKNOWN")
            for c in model.operatorCodes]


def _name(tensor) -> str:
    return decode_name(tensor.name).split(";")[0]


def _data(model, tensor) -> Optional[np.ndarray]:
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    if buffer is None or buffer.data is None or len(buffer.data) == 0:
        return None
    return np.asarray(buffer.data, np.uint8)


def _channel_steps(q: np.ndarray, axis: int, channels: int) -> np.ndarray:
    """Per channel, the largest integer dividing all its values (1 for an all-zero one)."""
    rows = np.moveaxis(q, axis, 0).reshape(channels, -1) if channels > 1 else q.reshape(1, -1)
    steps = np.gcd.reduce(np.abs(rows.astype(np.int32)), axis=1)
    return np.maximum(steps, 1)


def _int4_values(schema, model, tensor) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """``(values in [-8, 7], per-channel steps, "")`` for an int8 weight tensor that fits
    int4, else ``(None, None, reason)``."""
    q = tensor.quantization
    data = _data(model, tensor)
    if tensor.type != schema.TensorType.INT8 or data is None or q is None or q.scale is None:
        return None, None, "not an int8 constant"
    if q.zeroPoint is not None and np.any(np.asarray(q.zeroPoint) != 0):
        return None, None, "asymmetric (non-zero zero point)"
    values = data.view(np.int8).reshape(tuple(tensor.shape))
    steps = _channel_steps(values, q.quantizedDimension, len(q.scale))
    shape = [1] * values.ndim
    if len(steps) > 1:
        shape[q.quantizedDimension] = len(steps)
    small = values.astype(np.int32) // steps.reshape(shape)
    if small.min() < _INT4_MIN or small.max() > _INT4_MAX:
        widest = int(np.max(np.abs(small)))
        return None, None, (f"values up to +-{widest} on their channel grid, beyond int4's "
                            f"[{_INT4_MIN}, {_INT4_MAX}]: trained at more than 4 bits")
    return small.astype(np.int8), steps, ""


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Two int4 values per byte, in row-major order, the first in the low nibble."""
    flat = values.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


class _Model:
    """The parsed flatbuffer and the bookkeeping of one repacking."""

    def __init__(self, content: bytes):
        self.schema, self.model = read_model(content)
        self.op_names = _op_names(self.schema, self.model)
        self.users: Dict[int, int] = {}
        for subgraph in self.model.subgraphs:
            for tensor in subgraph.tensors:
                self.users[tensor.buffer] = self.users.get(tensor.buffer, 0) + 1

    def opcode(self, old_index: int, version: int) -> int:
        """The index of an operator code like ``old_index`` at ``version`` (added if new)."""
        old = self.model.operatorCodes[old_index]
        if old.version >= version:
            return old_index
        for index, code in enumerate(self.model.operatorCodes):
            if (code.builtinCode, code.customCode, code.version) == (
                    old.builtinCode, old.customCode, version):
                return index
        new = type(old)()
        new.deprecatedBuiltinCode, new.builtinCode = old.deprecatedBuiltinCode, old.builtinCode
        new.customCode, new.version = old.customCode, version
        self.model.operatorCodes.append(new)
        return len(self.model.operatorCodes) - 1

    def shared(self, tensor) -> bool:
        return self.users.get(tensor.buffer, 0) > 1

    def rescale_bias(self, bias, steps: np.ndarray, weight_scales, input_scale) -> None:
        """The int32 bias in units of the coarser ``input scale * int4 weight scale``; a
        buffer the converter shares between equal biases (e.g. zeros) is copied first if
        its values change."""
        old = _data(self.model, bias).view(np.int32)
        new = np.round(old.astype(np.int64) / steps).astype(np.int32)
        if not np.array_equal(new, old):
            if self.shared(bias):
                self.users[bias.buffer] -= 1
                self.model.buffers.append(self.schema.BufferT())
                bias.buffer = len(self.model.buffers) - 1
                self.users[bias.buffer] = 1
            self.model.buffers[bias.buffer].data = new.view(np.uint8)
        if input_scale is not None:
            scales = np.float64(input_scale) * np.asarray(weight_scales, np.float64)
        else:
            scales = np.asarray(bias.quantization.scale, np.float64) * steps
        bias.quantization.scale = scales.astype(np.float32).tolist()

    def repack(self, subgraph, op, name: str) -> Tuple[Optional[PackedTensor],
                                                       Optional[KeptTensor]]:
        """Repacks the weights of one op of :data:`INT4_OPS`, or says why not."""
        row, tensors, inputs = INT4_OPS[name], subgraph.tensors, op.inputs
        weights, data = tensors[inputs[row.weights]], tensors[inputs[row.data]]
        bias = tensors[inputs[row.bias]] if len(inputs) > row.bias and inputs[row.bias] >= 0 \
            else None
        values, steps, reason = _int4_values(self.schema, self.model, weights)
        if values is None:
            return None, KeptTensor(name, _name(weights), reason)
        if data.type != self.schema.TensorType.INT8:
            return None, KeptTensor(name, _name(weights), "its input is not int8")
        if self.shared(weights):
            return None, KeptTensor(name, _name(weights), "its buffer is shared with another op")
        scales = (np.asarray(weights.quantization.scale, np.float64) * steps).astype(np.float32)
        if bias is not None and _data(self.model, bias) is not None:
            in_scale = data.quantization.scale if data.quantization is not None else None
            in_scale = in_scale[0] if in_scale is not None and len(in_scale) == 1 else None
            self.rescale_bias(bias, steps, scales, in_scale)
        weights.quantization.scale = scales.tolist()
        weights.type = self.schema.TensorType.INT4
        self.model.buffers[weights.buffer].data = _pack_nibbles(values)
        op.opcodeIndex = self.opcode(op.opcodeIndex, row.version)
        return PackedTensor(name, _name(weights), int(values.size)), None

    def int8_weights(self, subgraph, op):
        """The int8 constant inputs of an op (its weights, where it has any)."""
        for index in op.inputs if op.inputs is not None else ():
            tensor = subgraph.tensors[index] if index >= 0 else None
            if (tensor is not None and tensor.type == self.schema.TensorType.INT8
                    and _data(self.model, tensor) is not None):
                yield tensor


def _refusal(name: str, kept: List[KeptTensor]) -> ValueError:
    if not kept:
        return ValueError(
            f"weight_storage='int4': {name} has no int8 weights. Export a QAT model with "
            "quantize='int8', or use weight_storage='int8'.")
    shown = "; ".join(f"{t.tensor} ({t.op}): {t.reason}" for t in kept[:4])
    more = f"; and {len(kept) - 4} more" if len(kept) > 4 else ""
    return ValueError(
        f"weight_storage='int4' found no weights of {name} to store in 4 bits: {shown}{more}. "
        "Train with `quantize_model(model, weight_bits=4)` (or fewer bits; its first and last "
        "layers keep 8 bits unless `first_last_bits=None`) before exporting, or use "
        "weight_storage='int8'.")


def repack_int4_bytes(content: bytes, name: str = "the model") -> Tuple[bytes, Int4Report]:
    """The flatbuffer ``content`` with every weight tensor that fits stored as INT4, and the
    :class:`Int4Report`; ``name`` names the model in error messages.

    Raises:
      ValueError: if no weight tensor fits (naming the tensors and why).

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
      >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
      >>> path = to_tflite(model, tempfile.mkdtemp() + "/m.tflite", "int8", x)  # not QAT
      >>> repack_int4_bytes(path.read_bytes(), "'m'")
      Traceback (most recent call last):
      ...
      ValueError: weight_storage='int4' found no weights of 'm' to store in 4 bits: ...
    """
    parsed = _Model(content)
    packed, kept = [], []
    for subgraph in parsed.model.subgraphs:
        for op in subgraph.operators or ():
            op_name = parsed.op_names[op.opcodeIndex]
            if op_name in INT4_OPS:
                done, left = parsed.repack(subgraph, op, op_name)
                packed += [done] if done else []
                kept += [left] if left else []
            else:
                kept += [KeptTensor(op_name, _name(t), f"LiteRT has no int4 kernel for {op_name}")
                         for t in parsed.int8_weights(subgraph, op)]
    if not packed:
        raise _refusal(name, kept)
    out = write_model(parsed.model)
    return out, Int4Report(tuple(packed), tuple(kept), len(content), len(out))


def repack_int4(int8_path: PathLike, int4_path: PathLike) -> Int4Report:
    """Writes ``int4_path``: the int8 ``.tflite`` file ``int8_path`` with its weights trained
    at <= 4 bits stored as INT4 (``to_tflite(..., weight_storage="int4")`` does this for you).

    Weight tensors that do not fit (trained at more than 4 bits, e.g. first and last layers
    kept at 8 bits) or that an op without an int4 kernel reads stay int8: the report lists
    them. The file is written atomically; ``int4_path`` may be ``int8_path``.

    Returns:
      The :class:`Int4Report`.

    Raises:
      FileNotFoundError: if ``int8_path`` does not exist.
      ValueError: if it is not a TFLite file, or no weight tensor fits in 4 bits.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> from tfcompress.quantization import quantize_model
      >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(8, 3),
      ...                           keras.layers.Flatten(), keras.layers.Dense(3)])
      >>> qat = quantize_model(model, activation_bits=4, weight_bits=4, first_last_bits=None)
      >>> folder = tempfile.mkdtemp()
      >>> report = repack_int4(to_tflite(qat, folder + "/int8.tflite"), folder + "/int4.tflite")
      >>> [(t.op, t.elements) for t in report.packed]
      [('CONV_2D', 72), ('FULLY_CONNECTED', 96)]
      >>> from tfcompress.export import tflite_ops
      >>> [op.input_dtypes[1] for op in tflite_ops(folder + "/int4.tflite") if op.name in INT4_OPS]
      ['int4', 'int4']
    """
    content = read_tflite(int8_path)
    out, report = repack_int4_bytes(content, repr(pathlib.Path(int8_path).name))
    with atomic_file(output_path(int4_path)) as tmp:
        tmp.write_bytes(out)
    return report
