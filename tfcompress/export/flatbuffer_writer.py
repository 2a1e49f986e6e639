"""Writing a ``.tflite`` file from LiteRT's flatbuffer object API
(``ai_edge_litert.schema_py_generated``): :func:`read_model` gives the mutable ``ModelT``,
:func:`write_model` packs it again with the ``"TFL3"`` identifier.

The generated Python ``Pack`` aligns buffer data to one byte; the schema asks for 16
(``force_align``), which the converter honours and some kernels rely on (int32 biases,
SIMD loads). :func:`write_model` aligns every buffer to 16 bytes.

Example:
  >>> import tempfile
  >>> import tf_keras as keras
  >>> from tfcompress.export import to_tflite
  >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  >>> content = to_tflite(model, tempfile.mkdtemp() + "/m.tflite", None).read_bytes()
  >>> schema, parsed = read_model(content)
  >>> again = write_model(parsed)
  >>> again[4:8], len(schema.ModelT.InitFromPackedBuf(again, 0).subgraphs[0].operators)
  (b'TFL3', 1)
"""

from __future__ import annotations

import functools
from typing import Any, Tuple

import numpy as np

__all__ = ["read_model", "write_model"]

_ALIGNMENT = 16  # the schema's force_align for buffer data


def read_model(content: bytes) -> Tuple[Any, Any]:
    """``(schema module, ModelT)`` of a TFLite flatbuffer's bytes."""
    from ai_edge_litert import schema_py_generated as schema

    return schema, schema.ModelT.InitFromPackedBuf(content, 0)


@functools.lru_cache(maxsize=None)
def _aligned_buffer_class(schema) -> type:
    """``BufferT`` whose data is aligned to 16 bytes in the file."""

    class AlignedBufferT(schema.BufferT):
        def Pack(self, builder):
            if self.data is None or len(self.data) == 0:
                return super().Pack(builder)
            payload = np.asarray(self.data, np.uint8).tobytes()
            builder.StartVector(1, len(payload), _ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head: builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
            schema.BufferStart(builder)
            schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def write_model(model: Any) -> bytes:
    """The bytes of a ``ModelT`` (from :func:`read_model`), buffers aligned to 16 bytes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    original = model.buffers
    aligned = []
    for buffer in original or ():
        copy = _aligned_buffer_class(schema)()
        copy.data, copy.offset, copy.size = buffer.data, buffer.offset, buffer.size
        aligned.append(copy)
    model.buffers = aligned
    try:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    finally:
        model.buffers = original
    return bytes(builder.Output())
