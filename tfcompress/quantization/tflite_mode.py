"""Emitting low-bit quantization in the form the TFLite converter accepts.

TFLite kernels compute in 8-bit integers. A fake-quant op with ``num_bits < 8`` makes the
converter type the tensor as ``i4``/``i2`` …, which no TFLite op accepts. Inside
:func:`tflite_export_mode` the quantizers therefore emit 8-bit fake-quant ops that carry
the low-bit result:

* **weights** are first rounded to their ``b``-bit grid, then stored on an 8-bit grid whose
  step divides the ``b``-bit levels exactly, so each output channel's int8 values take at
  most ``2^b - 1`` distinct values (``2^b`` on the midrise grid of
  :mod:`~tfcompress.quantization.kernel_math`) and equal the QAT model's weights;
* **activations** keep their learned PACT range ``[-beta, alpha]`` as the int8 range: TFLite
  clips exactly where PACT clips, on a finer grid than the ``b``-bit one used in training.

``tfcompress.export.to_tflite`` enters this mode when it converts a quantized model.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_STATE = threading.local()


def exporting() -> bool:
    """True while :func:`tflite_export_mode` is active in this thread."""
    return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def tflite_export_mode() -> Iterator[None]:
    """Context in which PACT and weight quantizers trace TFLite-compatible 8-bit ops.

    Example:
      >>> import tensorflow as tf
      >>> with tflite_export_mode():
      ...     exporting()
      True
    """
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1
