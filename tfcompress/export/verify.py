"""Parity guard: does a ``.tflite`` file compute what its Keras model computes?"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfcompress._io import PathLike
from tfcompress._keras import check_model, keras
from tfcompress.export import flatbuffer, litert

__all__ = ["ParityReport", "ParityError", "verify"]

#: Default tolerance on max |keras - tflite|, relative to max(1, max |keras output|), by the
#: file's quantization kind. For the integer kinds it applies only to outputs without
#: classes: for class scores, top-1 agreement is the check and the difference is reported.
DEFAULT_RELATIVE_ATOL = {"float32": 1e-3, "float16": 1e-2, "dynamic": 0.1, "int8": 0.1}
_FLOAT_KINDS = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Keras vs TFLite outputs on the same data.

    Attributes:
      tflite_path: the file checked.
      kind: its quantization kind (see :func:`tfcompress.export.flatbuffer.quantization_kind`).
      samples: number of samples compared.
      max_abs_diff: largest absolute output difference.
      mean_abs_diff: mean absolute output difference.
      top1_agreement: fraction of samples whose argmax agrees, ``None`` for outputs
        without a class axis of at least 2.
      atol: tolerance applied to ``max_abs_diff`` (``None``: not checked).
      min_agreement: required ``top1_agreement``.
      op_counts: ``{op name: count}`` of the TFLite graph.
      float_fallback_ops: ``"NAME#index"`` of ops that compute in float in an int8 file.
      failures: why the check failed, one sentence each; empty if it passed.
      input_shape: the file's input shape, ``None`` for a free (dynamic) dimension.
      skipped: why the file could not be run here (TF Select ops without a flex runtime),
        or None. A skipped check has no failures, but has not passed either.
    """

    tflite_path: str
    kind: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: Optional[float]
    atol: Optional[float]
    min_agreement: float
    op_counts: Dict[str, int]
    float_fallback_ops: List[str]
    failures: List[str]
    input_shape: Tuple[Optional[int], ...] = ()
    skipped: Optional[str] = None

    @property
    def passed(self) -> bool:
        """The file ran and matched the model."""
        return not self.failures and self.skipped is None

    def summary(self) -> str:
        """A few human-readable lines, as the CLI prints them: the verdict, then
        :meth:`details` and one line per failure."""
        name = pathlib.Path(self.tflite_path).name
        if self.skipped is not None:
            return f"parity NOT CHECKED: {name} ({self.kind}): {self.skipped}"
        header = (
            f"parity {'PASSED' if self.passed else 'FAILED'}: "
            f"{name} ({self.kind}) vs Keras on {self.samples} samples"
        )
        failures = [f"  failure: {failure}" for failure in self.failures]
        return "\n".join([header, *self.details(), *failures])

    def details(self, criteria: bool = True) -> List[str]:
        """The measurements without a verdict: differences, agreement, ops, fallbacks.

        Args:
          criteria: also show the tolerance and the required agreement.
        """
        agreement = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.2%}"
        atol = "not checked" if self.atol is None else f"{self.atol:.3g}"
        ops = ", ".join(f"{name} x{count}" for name, count in sorted(self.op_counts.items()))
        tolerance = f" (tolerance {atol})" if criteria else ""
        required = f" (required {self.min_agreement:.2%})" if criteria else ""
        lines = [
            f"  max |diff| {self.max_abs_diff:.3g}{tolerance}, mean |diff| "
            f"{self.mean_abs_diff:.3g}, top-1 agreement {agreement}{required}",
            f"  ops: {ops}",
        ]
        if self.input_shape:
            batch = self.input_shape[0]
            shape = "(" + ", ".join("None" if d is None else str(d) for d in self.input_shape)
            lines.append(f"  input {shape.rstrip(', ')}): "
                         + ("dynamic batch" if batch is None else f"static batch of {batch}"))
        if self.float_fallback_ops:
            lines.append(f"  float fallback ops: {', '.join(self.float_fallback_ops)}")
        return lines


class ParityError(ValueError):
    """Raised by :func:`verify` when the TFLite file does not match its Keras model.

    Attributes:
      report: the :class:`ParityReport` that failed.
    """

    def __init__(self, report: ParityReport):
        super().__init__(
            f"{pathlib.Path(report.tflite_path).name} does not match its Keras model: "
            + " ".join(report.failures)
        )
        self.report = report


def _check_data(model: "keras.Model", data) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim < 2 or len(data) == 0 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"`data` must be a non-empty numeric array (n, *input_shape), got shape "
            f"{data.shape} of {data.dtype}. Pass some test samples."
        )
    if not getattr(model, "inputs", None):  # Keras 3 subclassed models have no attribute
        raise ValueError(
            f"{model.name!r} ({type(model).__name__}) is a subclassed model without symbolic "
            "inputs, so its input shape is unknown. Verify a Functional or Sequential model, "
            "or wrap it: `inputs = keras.Input(shape); keras.Model(inputs, model(inputs))`."
        )
    if len(model.inputs) != 1:
        raise ValueError(
            f"{model.name!r} has {len(model.inputs)} inputs; verify compares single-input "
            "models. Verify a sub-model with one input."
        )
    expected = tuple(model.inputs[0].shape[1:])
    if len(expected) != data.ndim - 1 or any(
        want is not None and want != got for want, got in zip(expected, data.shape[1:])
    ):
        raise ValueError(
            f"`data` of shape {data.shape} does not fit the input (None, "
            f"{', '.join(map(str, expected))}) of {model.name!r}. Pass samples of that shape."
        )
    return data.astype(np.float32, copy=False)


def _skipped(path, kind: str, ops, shapes, min_agreement: float, reason: str
             ) -> ParityReport:
    """The report of a file that cannot run here: nothing measured, the reason kept."""
    nan = float("nan")
    return ParityReport(
        tflite_path=str(path), kind=kind, samples=0, max_abs_diff=nan, mean_abs_diff=nan,
        top1_agreement=None, atol=None, min_agreement=min_agreement,
        op_counts=dict(collections.Counter(op.name for op in ops)), float_fallback_ops=[],
        failures=[], input_shape=shapes[0] if shapes else (), skipped=reason)


def verify(
    keras_model: "keras.Model",
    tflite_path: PathLike,
    data,
    *,
    atol: Optional[float] = None,
    min_agreement: float = 0.99,
    allow_float_fallback: bool = True,
    batch_size: int = 256,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Runs ``keras_model`` and the TFLite file on ``data`` and compares their outputs.

    The check passes when top-1 agreement is at least ``min_agreement`` (for outputs
    with a class axis) and ``max_abs_diff <= atol``. With ``atol=None`` the tolerance is
    ``DEFAULT_RELATIVE_ATOL[kind] * max(1, max |keras output|)`` for float files and for
    outputs without classes; int8 and dynamic-range files with class scores are judged
    by agreement alone (their max difference is reported).

    Args:
      keras_model: the model the file was exported from (tf_keras or Keras 3; single input
        and output).
      tflite_path: the ``.tflite`` file.
      data: samples ``(n, *input_shape)``, e.g. the test split.
      atol: tolerance on the largest absolute output difference.
      min_agreement: required fraction of samples with the same argmax, in [0, 1].
      allow_float_fallback: if False, ops left in float in an int8 file fail the check.
      batch_size: samples per Keras and TFLite call.
      raise_on_failure: raise :class:`ParityError` on failure (else just report it).

    A file with TF Select (flex) ops runs where an interpreter links the flex delegate
    (see :mod:`tfcompress.export.litert`); elsewhere the report is ``skipped`` with the
    reason (``passed`` is False, nothing is raised).

    Returns:
      The :class:`ParityReport`.

    Raises:
      ParityError: (a ``ValueError``) if parity breaks and ``raise_on_failure``.
      TypeError: for a non-model.
      ValueError: for bad arguments or data that does not fit the model.
      FileNotFoundError: if ``tflite_path`` does not exist.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
      >>> report = verify(model, to_tflite(model, tempfile.mkdtemp() + "/m.tflite", None), x)
      >>> report.passed, report.kind, report.top1_agreement, report.op_counts
      (True, 'float32', 1.0, {'FULLY_CONNECTED': 1})
      >>> print(report.summary().splitlines()[0])
      parity PASSED: m.tflite (float32) vs Keras on 32 samples
    """
    check_model(keras_model, "keras_model")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"`min_agreement` must be in [0, 1], got {min_agreement!r}.")
    if atol is not None and not atol >= 0:
        raise ValueError(f"`atol` must be >= 0 or None, got {atol!r}.")
    data = _check_data(keras_model, data)
    ops = flatbuffer.tflite_ops(tflite_path)
    kind = flatbuffer.kind_of_ops(ops)
    expected = keras_model.predict(data, batch_size=batch_size, verbose=0)
    if isinstance(expected, (list, tuple, dict)):
        raise ValueError(
            f"{keras_model.name!r} has several outputs; verify compares single-output models. "
            "Verify a model that returns one of them."
        )
    expected = np.asarray(expected, dtype=np.float32)
    shapes = flatbuffer.input_shapes(tflite_path)
    try:
        actual = litert.run(tflite_path, data, batch_size=batch_size)
    except litert.FlexRuntimeError as error:
        return _skipped(tflite_path, kind, ops, shapes, min_agreement, str(error))
    if actual.shape != expected.shape:
        raise ValueError(
            f"TFLite output shape {actual.shape} differs from Keras output shape "
            f"{expected.shape}: the file was not exported from this model."
        )
    diff = np.abs(actual.astype(np.float32) - expected)
    has_classes = expected.ndim == 2 and expected.shape[-1] >= 2
    agreement = float(np.mean(actual.argmax(-1) == expected.argmax(-1))) if has_classes else None
    if atol is None and (kind in _FLOAT_KINDS or not has_classes):
        atol = DEFAULT_RELATIVE_ATOL[kind] * max(1.0, float(np.max(np.abs(expected))))
    fallbacks = [f"{op.name}#{op.index}" for op in flatbuffer.fallbacks_of_ops(ops)]

    failures = []
    max_diff = float(diff.max())
    if atol is not None and not max_diff <= atol:
        failures.append(f"max |diff| {max_diff:.3g} exceeds the tolerance {atol:.3g}.")
    if agreement is not None and agreement < min_agreement:
        failures.append(f"top-1 agreement {agreement:.2%} is below {min_agreement:.2%}.")
    if fallbacks and not allow_float_fallback:
        failures.append(f"ops left in float: {', '.join(fallbacks)}.")
    report = ParityReport(
        tflite_path=str(tflite_path),
        kind=kind,
        samples=len(data),
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()),
        top1_agreement=agreement,
        atol=atol,
        min_agreement=min_agreement,
        op_counts=dict(collections.Counter(op.name for op in ops)),
        float_fallback_ops=fallbacks,
        failures=failures,
        input_shape=shapes[0] if shapes else (),
    )
    if failures and raise_on_failure:
        raise ParityError(report)
    return report
