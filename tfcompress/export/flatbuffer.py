"""Reading a ``.tflite`` file: its ops, tensor dtypes and quantization ranges.

We parse the flatbuffer with the schema that ships with the LiteRT runtime
(``ai_edge_litert.schema_py_generated``) instead of asking an interpreter: an
interpreter replaces the ops it hands to a delegate (XNNPACK) by one ``DELEGATE``
node, so what it reports depends on the runtime, while the file does not.

Example:
  >>> import tempfile
  >>> import numpy as np
  >>> import tf_keras as keras
  >>> from tfcompress.export import to_tflite
  >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3),
  ...                           keras.layers.Flatten(), keras.layers.Dense(3)])
  >>> x = np.random.default_rng(0).uniform(size=(16, 4, 4, 1)).astype("float32")
  >>> path = to_tflite(model, tempfile.mkdtemp() + "/m.tflite", "int8", x)
  >>> [op.name for op in tflite_ops(path)]
  ['QUANTIZE', 'CONV_2D', 'RESHAPE', 'FULLY_CONNECTED', 'DEQUANTIZE']
  >>> quantization_kind(path), float_fallback_ops(path)
  ('int8', [])
  >>> all(r.dtype == "int8" and r.min <= 0.0 <= r.max for r in activation_ranges(path).values())
  True
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

from tfcompress._io import PathLike

__all__ = [
    "TFLiteOp",
    "QuantRange",
    "tflite_ops",
    "activation_ranges",
    "quantization_kind",
    "float_fallback_ops",
    "kind_of_ops",
    "fallbacks_of_ops",
    "read_tflite",
    "input_shapes",
    "flex_ops",
]

#: Ops that only move data between float and integer tensors.
CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})

_NUMPY_DTYPES = {
    "FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "BFLOAT16": "bfloat16",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32",
    "UINT32": "uint32", "INT64": "int64", "UINT64": "uint64", "INT4": "int4", "UINT4": "uint4",
    "INT2": "int2", "BOOL": "bool", "STRING": "string", "COMPLEX64": "complex64",
    "COMPLEX128": "complex128", "RESOURCE": "resource", "VARIANT": "variant",
}
_INTEGER_BITS = {"int8": 8, "uint8": 8, "int16": 16, "int4": 4, "uint4": 4, "int2": 2}
_FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: name, dtype name (numpy spelling) and whether it is a constant."""

    name: str
    dtype: str
    constant: bool


@dataclasses.dataclass(frozen=True)
class TFLiteOp:
    """One op of a ``.tflite`` graph, in execution order.

    Attributes:
      index: position of the op in the (first) subgraph.
      name: builtin op name as TFLite spells it, e.g. ``"CONV_2D"``; custom ops give their
        custom code.
      inputs: the op's input tensors (optional inputs that are absent are left out).
      outputs: the op's output tensors.
    """

    index: int
    name: str
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]

    @property
    def input_dtypes(self) -> Tuple[str, ...]:
        return tuple(t.dtype for t in self.inputs)

    @property
    def output_dtypes(self) -> Tuple[str, ...]:
        return tuple(t.dtype for t in self.outputs)

    @property
    def activation_dtypes(self) -> Tuple[str, ...]:
        """Dtypes of the non-constant inputs: what the op computes on."""
        return tuple(t.dtype for t in self.inputs if not t.constant)

    @property
    def computes_in_float(self) -> bool:
        """True if the op reads a float activation (it is not an integer kernel)."""
        return any(dtype in _FLOAT_DTYPES for dtype in self.activation_dtypes)


@dataclasses.dataclass(frozen=True)
class QuantRange:
    """The real-valued range an affine-quantized tensor can represent.

    ``real = scale * (q - zero_point)`` for the integers ``q`` of ``dtype``.
    """

    min: float
    max: float
    scale: float
    zero_point: int
    dtype: str

    @property
    def step(self) -> float:
        """One quantization step: the smallest difference between two representable values."""
        return self.scale


def read_tflite(path: PathLike) -> bytes:
    """Returns the bytes of a TFLite file after checking that it is one.

    Raises:
      FileNotFoundError: if ``path`` is not a file.
      ValueError: if the file lacks the TFLite flatbuffer identifier.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No TFLite file at {str(path)!r}. Check the path.")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            f"{str(path)!r} is not a TFLite flatbuffer (no 'TFL3' identifier). "
            "Pass a file written by `tfcompress.export.to_tflite`."
        )
    return data


def _read(path: PathLike):
    # Imported here so that reading the package does not load the runtime.
    from ai_edge_litert import schema_py_generated as schema

    return schema, schema.ModelT.InitFromPackedBuf(read_tflite(path), 0)


def enum_names(enum_class) -> Dict[int, str]:
    """``{value: name}`` of a schema enum class (``BuiltinOperator``, ``TensorType``)."""
    members = vars(enum_class).items()
    return {v: k for k, v in members if not k.startswith("_") and isinstance(v, int)}


def decode_name(name: Optional[bytes]) -> str:
    """A schema string (bytes in the object API, str or None elsewhere) as ``str``."""
    return name.decode("utf-8") if isinstance(name, bytes) else (name or "")


def _is_constant(model, tensor) -> bool:
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers or ()):
        return False
    buffer = model.buffers[tensor.buffer]
    return (buffer.data is not None and len(buffer.data) > 0) or bool(buffer.size)


def _tensor_infos(schema, model, subgraph) -> List[TensorInfo]:
    type_names = enum_names(schema.TensorType)
    return [
        TensorInfo(
            name=decode_name(t.name),
            dtype=_NUMPY_DTYPES.get(type_names.get(t.type, ""), type_names.get(t.type, "unknown")),
            constant=_is_constant(model, t),
        )
        for t in subgraph.tensors
    ]


def tflite_ops(path: PathLike) -> List[TFLiteOp]:
    """Lists the ops of a ``.tflite`` file with their tensors and dtypes.

    Args:
      path: a TFLite flatbuffer file.

    Returns:
      The ops of the main subgraph in execution order.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not a TFLite flatbuffer.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
      >>> (conv,) = tflite_ops(to_tflite(model, tempfile.mkdtemp() + "/m.tflite", None))
      >>> conv.name, conv.activation_dtypes, [t.constant for t in conv.inputs]
      ('CONV_2D', ('float32',), [False, True, True])
    """
    schema, model = _read(path)
    op_names = enum_names(schema.BuiltinOperator)
    subgraph = model.subgraphs[0]
    tensors = _tensor_infos(schema, model, subgraph)
    ops = []
    for index, op in enumerate(subgraph.operators or ()):
        code = model.operatorCodes[op.opcodeIndex]
        if code.customCode:
            name = decode_name(code.customCode)
        else:
            # Codes >= 127 live in `builtinCode`; older files only fill the deprecated byte.
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
        inputs = op.inputs if op.inputs is not None else ()
        outputs = op.outputs if op.outputs is not None else ()
        ops.append(
            TFLiteOp(
                index=index,
                name=name,
                inputs=tuple(tensors[i] for i in inputs if i >= 0),  # -1: absent optional input
                outputs=tuple(tensors[i] for i in outputs),
            )
        )
    return ops


def activation_ranges(path: PathLike) -> Dict[str, QuantRange]:
    """Returns the real-valued range of every per-tensor quantized activation.

    Constant tensors (weights, biases) and per-channel quantized tensors are left out.
    The range of a tensor is what its integer type covers:
    ``[scale * (qmin - zero_point), scale * (qmax - zero_point)]``.

    Args:
      path: a TFLite flatbuffer file.

    Returns:
      ``{tensor name: QuantRange}``; use :func:`tflite_ops` to see which op produces
      a tensor.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not a TFLite flatbuffer.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> x = np.linspace(0.0, 1.0, 30, dtype="float32").reshape(10, 3)
      >>> ranges = activation_ranges(to_tflite(model, tempfile.mkdtemp() + "/m.tflite",
      ...                                      "int8", x))
      >>> r = ranges["tfl.quantize"]  # the input, calibrated on [0, 1]
      >>> round(r.min, 3), round(r.max, 3), round((r.max - r.min) / r.step)
      (0.0, 1.0, 255)
    """
    schema, model = _read(path)
    subgraph = model.subgraphs[0]
    infos = _tensor_infos(schema, model, subgraph)
    ranges = {}
    for tensor, info in zip(subgraph.tensors, infos):
        q = tensor.quantization
        bits = _INTEGER_BITS.get(info.dtype)
        if info.constant or bits is None or q is None or q.scale is None or len(q.scale) != 1:
            continue
        scale = float(q.scale[0])
        zero_point = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        if info.dtype.startswith("u"):
            qmin, qmax = 0, 2**bits - 1
        else:
            qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        ranges[info.name] = QuantRange(
            min=scale * (qmin - zero_point),
            max=scale * (qmax - zero_point),
            scale=scale,
            zero_point=zero_point,
            dtype=info.dtype,
        )
    return ranges


def quantization_kind(path: PathLike) -> str:
    """Classifies a ``.tflite`` file by how it was quantized.

    Returns:
      ``"int8"`` if some op computes on integer activations (full-integer or QAT export),
      ``"dynamic"`` if weights are integer but every op reads float activations,
      ``"float16"`` if weights are stored as float16, else ``"float32"``.
    """
    return kind_of_ops(tflite_ops(path))


def kind_of_ops(ops: Sequence[TFLiteOp]) -> str:
    """:func:`quantization_kind` of ops already read with :func:`tflite_ops`.

    Example:
      >>> kind_of_ops([])  # no ops, no integer activations or weights
      'float32'
    """
    quantized = set(_INTEGER_BITS)
    compute_ops = [op for op in ops if op.name not in CONVERSION_OPS]
    if any(quantized.intersection(op.activation_dtypes) for op in compute_ops):
        return "int8"
    constants = {t.dtype for op in ops for t in op.inputs if t.constant}
    if constants & set(_INTEGER_BITS):
        return "dynamic"
    if "float16" in constants:
        return "float16"
    return "float32"


def float_fallback_ops(path: PathLike) -> List[TFLiteOp]:
    """Ops of an int8 file that still compute on float activations.

    Only meaningful for files whose :func:`quantization_kind` is ``"int8"``; other
    kinds compute in float by design and give an empty list. ``QUANTIZE`` and
    ``DEQUANTIZE`` at the float model interface are not fallbacks.
    """
    return fallbacks_of_ops(tflite_ops(path))


def fallbacks_of_ops(ops: Sequence[TFLiteOp]) -> List[TFLiteOp]:
    """:func:`float_fallback_ops` of ops already read with :func:`tflite_ops`.

    Example:
      >>> fallbacks_of_ops([])
      []
    """
    if kind_of_ops(ops) != "int8":
        return []
    return [op for op in ops if op.name not in CONVERSION_OPS and op.computes_in_float]


def input_shapes(path: PathLike) -> List[Tuple[Optional[int], ...]]:
    """The shape of each input of the main subgraph, ``None`` where a dimension is free
    (a dynamic batch): what the file itself declares, before any interpreter resizes it.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> folder = tempfile.mkdtemp()
      >>> input_shapes(to_tflite(model, folder + "/free.tflite", None, batch_size=None))
      [(None, 3)]
      >>> input_shapes(to_tflite(model, folder + "/four.tflite", None, batch_size=4))
      [(4, 3)]
    """
    _, model = _read(path)
    subgraph = model.subgraphs[0]
    shapes = []
    for index in subgraph.inputs if subgraph.inputs is not None else ():
        tensor = subgraph.tensors[index]
        dims = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        shapes.append(tuple(None if int(d) < 0 else int(d) for d in (dims if dims is not None
                                                                     else ())))
    return shapes


def flex_ops(ops: Sequence[TFLiteOp]) -> List[str]:
    """The TF Select (flex) ops among ``ops``, e.g. ``["FlexMaxPool3D"]``: ops that run
    only where the LiteRT runtime has the flex delegate linked.

    Example:
      >>> flex_ops([])
      []
    """
    return sorted({op.name for op in ops if op.name.startswith("Flex")})
