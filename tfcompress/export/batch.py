"""The batch dimension of a ``.tflite`` file: dynamic, static, or chosen by a check.

``to_tflite(batch_size=...)``: an int writes a static batch of that size, ``None`` a dynamic
batch, ``"auto"`` (default) a dynamic batch unless the model needs static shapes
(recurrent layers), the converter fails without them, or the dynamic file fails
:func:`dynamic_batch_problem`; then a static batch of 1, with a
:class:`StaticBatchWarning` saying why.

Example:
  >>> check_batch_size("auto"), check_batch_size(None), check_batch_size(8)
  ('auto', None, 8)
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np

from tfcompress.export import flatbuffer, litert
from tfcompress.export.conversion_errors import captured_stderr
from tfcompress.export.verify import DEFAULT_RELATIVE_ATOL

__all__ = ["BatchSize", "StaticBatchWarning", "check_batch_size", "dynamic_batch_problem"]

BatchSize = Union[str, int, None]

_LOG = logging.getLogger("tfcompress.export")
#: Samples in the batch the dynamic-batch check runs: more than one, so a file that only
#: works for the traced batch of 1 is caught.
_CHECK_SAMPLES = 2


class StaticBatchWarning(UserWarning):
    """``to_tflite(batch_size="auto")`` wrote a static batch of 1 instead of a dynamic batch;
    the message says why."""


def check_batch_size(batch_size: Any) -> BatchSize:
    """Validates a ``batch_size`` option: ``"auto"``, ``None`` or a positive int.

    Raises:
      ValueError: for anything else, showing the value.
    """
    if batch_size == "auto" or batch_size is None:
        return batch_size
    if isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) \
            and batch_size >= 1:
        return int(batch_size)
    raise ValueError(
        f"Unknown batch_size={batch_size!r}. Pass 'auto' (dynamic if it works, else 1), "
        "None (dynamic) or a positive int (static)."
    )


def _inputs_for(model: Any, rng: np.random.Generator) -> Optional[np.ndarray]:
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        return None
    dtype = np.dtype(getattr(model.inputs[0].dtype, "name", model.inputs[0].dtype))
    if not np.issubdtype(dtype, np.floating):
        return np.zeros((_CHECK_SAMPLES,) + shape, dtype)  # e.g. token ids: 0 is valid
    return rng.standard_normal((_CHECK_SAMPLES,) + shape).astype(np.float32)


def _tolerance(kind: str, reference: np.ndarray) -> float:
    return DEFAULT_RELATIVE_ATOL[kind] * max(1.0, float(np.max(np.abs(reference))))


def dynamic_batch_problem(model: Any, path: Any, compare_keras: bool = True) -> Optional[str]:
    """Why the dynamic-batch file at ``path`` should not be shipped, or None.

    LiteRT must run it on a batch of two random samples; the outputs must equal those of
    the samples run one at a time and, for a float file of a float model
    (``compare_keras``), Keras's outputs (within
    :data:`~tfcompress.export.verify.DEFAULT_RELATIVE_ATOL`; a QAT model's fake-quant
    rounding may flip on random data). Files that cannot be checked
    here (several inputs or outputs, free non-batch dimensions, flex ops without a flex
    runtime) pass, with a DEBUG log line.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        _LOG.debug("Dynamic batch of %r not checked: several inputs or outputs.", model.name)
        return None
    x = _inputs_for(model, np.random.default_rng(0))
    if x is None:
        _LOG.debug("Dynamic batch of %r not checked: free input dimensions.", model.name)
        return None
    kind = flatbuffer.quantization_kind(path)
    try:
        with captured_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
            together = litert.run(path, x, batch_size=_CHECK_SAMPLES)
            alone = litert.run(path, x, batch_size=1)
    except litert.FlexRuntimeError as error:
        _LOG.debug("Dynamic batch of %r not checked: %s", model.name, error)
        return None
    except ValueError as error:
        cause = error.__cause__ or error
        reason = " ".join(str(cause).split())[:160]
        return f"LiteRT cannot run it on a batch of {_CHECK_SAMPLES} ({reason})"
    gap = float(np.max(np.abs(together - alone)))
    if not gap <= _tolerance(kind, alone):
        return (f"on a batch of {_CHECK_SAMPLES} its outputs differ from one sample at a time "
                f"by {gap:.3g}")
    if compare_keras and kind in ("float32", "float16"):
        expected = np.asarray(model(x, training=False), dtype=np.float32)
        gap = float(np.max(np.abs(together - expected)))
        if not gap <= _tolerance(kind, expected):
            return f"its outputs differ from Keras by {gap:.3g} on a random batch"
    return None
