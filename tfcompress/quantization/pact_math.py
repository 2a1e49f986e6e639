"""PACT's math, written once for both Kerases: fake-quantization with PACT's gradients,
clip ranges and ``alpha_init="auto"`` calibration of activations (kernels:
:mod:`tfcompress.quantization.kernel_math`).

The functions take TensorFlow tensors and variables (tf_keras ``tf.Variable`` or Keras 3
variables on the TensorFlow backend; both read as tensors and support ``assign``). The
tfmot quantizer (:class:`~tfcompress.quantization.PACTQuantizer`) and the Keras 3 layers of
:mod:`tfcompress.quantization.keras3_layers` call them, so both paths compute the same
thing. Inside :func:`~tfcompress.quantization.tflite_mode.tflite_export_mode` they trace the
8-bit ops the TFLite converter accepts.

Example:
  >>> import tensorflow as tf
  >>> low, high = clip_range("relu", tf.constant(2.0))
  >>> fake_quant(tf.constant([-1.0, 1.0, 5.0]), low, high, num_bits=4,
  ...            narrow_range=False).numpy()
  array([0.       , 0.9333334, 2.       ], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from tfcompress.quantization.surrogate import with_gradient
from tfcompress.quantization.tflite_mode import exporting

MODES = ("asymmetric", "symmetric", "relu")
"""Clip ranges: ``[-beta, alpha]``, ``[-alpha, alpha]`` (PaddleSlim) and ``[0, alpha]`` (PACT)."""

CALIBRATIONS = ("auto", "mse", "minmax")
"""How ``alpha_init`` calibration ranges each batch (:func:`batch_range`): ``"mse"``, the
clip with the least quantization error; ``"minmax"``, the batch's extremes; ``"auto"``,
the extremes at 8 bits and the least error below (:func:`resolve_calibration`)."""

RANGE_LEARNINGS = ("auto", "pact", "lsq")
"""How a trainable clip range learns (:func:`resolve_range_learning`): ``"pact"``, PACT's
gradient (only the clipped values pull on it); ``"lsq"``, LSQ's step gradient (the rounding
error of the values inside the range too), with the range stored in units of
``1 / LSQ_RANGE_SCALE`` so that it learns ``LSQ_RANGE_SCALE`` times faster than PACT's;
``"auto"``, LSQ's at ``AUTO_LSQ_BITS`` bits and PACT's above."""

AUTO_LSQ_BITS = 2  # at 3/3 and 4/4 LSQ's way measured level or worse (benchmarks/qat.py)
LSQ_RANGE_SCALE = 10.0  # exploratory 8-seed 2/2 runs of that model: 1 (no gain), 10 (best), 30, 100

MIN_RANGE = 1e-3  # keeps the quantization step positive if alpha is driven to zero
_CALIBRATION_SAMPLES = 4096  # values per batch used to pick the initial range
_CALIBRATION_FACTORS = [0.25 + 0.05 * i for i in range(16)]  # 0.25 .. 1.0 of [min, max]


def fake_quant(x, low, high, num_bits: int, narrow_range: bool,
               rounding_gradient: bool = False):
    """Clips ``x`` to ``[low, high]`` and fake-quantizes it, with PACT's gradients.

    The forward op is ``FakeQuantWithMinMaxVars`` (which TFLite reads at conversion). The
    gradient is a surrogate's (:func:`~tfcompress.quantization.surrogate.with_gradient`)
    rather than that op's, so that it is exactly PACT's:
    straight-through inside the range, and the clip boundaries themselves belong to the
    clipped region (``x >= high`` feeds ``high``, ``x <= low`` feeds ``low``), as in the paper.

    With ``rounding_gradient`` the range also gets LSQ's term for the values inside it
    (Esser et al. 2020): ``y = low + step * round(v)`` with ``v = (x - low) / step`` and
    ``step = (high - low) / levels``, so ``dy/dhigh = (round(v) - v) / levels`` and
    ``dy/dlow = -(round(v) - v) / levels`` (``round`` passed straight through).
    """
    low, high = tf.cast(low, x.dtype), tf.cast(high, x.dtype)
    y = tf.quantization.fake_quant_with_min_max_vars(
        x, low, high, num_bits=num_bits, narrow_range=narrow_range)
    if exporting():  # the converter reads the FakeQuant op alone
        return y
    through = x
    if rounding_gradient:  # d/dhigh = +error, d/dlow = -error, nothing more for x
        error = _rounding_error(x, low, high, num_bits, narrow_range)
        through = x + tf.stop_gradient(error) * (high - low)
    return with_gradient(y, tf.where(x >= high, high, tf.where(x <= low, low, through)))


def _rounding_error(x, low, high, num_bits: int, narrow_range: bool):
    """``(round(v) - v) / levels`` for ``v = (x - low) / step``: LSQ's ``dy/dhigh`` inside."""
    levels = 2.0 ** num_bits - 1.0 - float(narrow_range)
    v = (x - low) / ((high - low) / levels)
    return (tf.round(v) - v) / levels


def clip_range(mode: str, alpha: Any, beta: Optional[Any] = None,
               scale: float = 1.0) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(low, high)`` of a PACT range: ``[-beta, alpha]``, ``[-alpha, alpha]`` or ``[0, alpha]``
    for ``mode`` asymmetric, symmetric, relu (alpha at least ``MIN_RANGE``, beta at least 0),
    where ``alpha`` and ``beta`` are the stored variables times ``scale``
    (:func:`range_scale`)."""
    alpha = tf.maximum(tf.convert_to_tensor(alpha) * scale, MIN_RANGE)
    if mode == "relu":
        return tf.constant(0.0), alpha
    if mode == "symmetric":
        return -alpha, alpha
    return -tf.maximum(tf.convert_to_tensor(beta) * scale, 0.0), alpha


def resolve_range_learning(method: str, num_bits: int) -> str:
    """The range learning a ``num_bits`` tensor really uses (:data:`RANGE_LEARNINGS`):
    ``"auto"`` takes LSQ's at 2 bits and PACT's above (``benchmarks/qat.py``'s
    ``range_learning`` rows).

    Example:
      >>> [resolve_range_learning("auto", b) for b in (2, 3, 8)], range_scale("auto", 2)
      (['lsq', 'pact', 'pact'], 10.0)
    """
    if method == "auto":
        return "lsq" if num_bits <= AUTO_LSQ_BITS else "pact"
    return method


def range_scale(method: str, num_bits: int) -> float:
    """The factor from the stored alpha and beta to the range: ``LSQ_RANGE_SCALE`` for LSQ's
    range learning (an optimizer's step on the variable then moves the range that many
    times further), 1 for PACT's."""
    return LSQ_RANGE_SCALE if resolve_range_learning(method, num_bits) == "lsq" else 1.0


def resolve_calibration(method: str, num_bits: int) -> str:
    """The batch ranging a ``num_bits`` tensor really uses: ``"auto"`` takes the extremes at
    8 bits (where clipping the rare large values costs more accuracy than their rounding
    error: ``benchmarks/qat.py``'s ``alpha_init="mse"`` row) and the least error below.

    Example:
      >>> [resolve_calibration("auto", b) for b in (2, 4, 8)]
      ['mse', 'mse', 'minmax']
    """
    if method == "auto":
        return "minmax" if num_bits >= 8 else "mse"
    return method


def _extremes(x, mode: str) -> Tuple[tf.Tensor, tf.Tensor]:
    high, low = tf.reduce_max(x), tf.minimum(tf.reduce_min(x), 0.0)
    if mode == "symmetric":
        high = tf.maximum(high, -low)
        low = -high
    elif mode == "relu":
        low = tf.zeros_like(low)
    return low, tf.maximum(high, MIN_RANGE)


def batch_range(inputs, mode: str, num_bits: int,
                method: str = "mse") -> Tuple[tf.Tensor, tf.Tensor]:
    """This batch's ``(low, high)``: with ``method="mse"`` the clip that minimizes its
    ``num_bits`` quantization error, with ``"minmax"`` its extremes (``"auto"``:
    :func:`resolve_calibration`).

    MSE candidates shrink the batch's ``[min, max]`` (of a strided sample) by a common
    factor; at low bit widths the best clip is well inside the extremes (the reason PACT
    exists), at 8 bits it is closer to them but still clips the rarest values.
    """
    x = tf.reshape(tf.cast(inputs, tf.float32), [-1])
    if resolve_calibration(method, num_bits) == "minmax":
        return _extremes(x, mode)
    x = x[:: tf.maximum(tf.size(x) // _CALIBRATION_SAMPLES, 1)]
    low, high = _extremes(x, mode)
    factors = tf.constant(_CALIBRATION_FACTORS)[:, None]
    lows, highs = low * factors, high * factors
    levels = 2.0 ** num_bits - 1.0 - float(mode == "symmetric")
    step = (highs - lows) / levels
    clipped = tf.minimum(tf.maximum(x[None, :], lows), highs)
    q = tf.round((clipped - lows) / step) * step + lows
    best = tf.argmin(tf.reduce_mean(tf.square(q - x[None, :]), axis=1))
    return lows[best, 0], highs[best, 0]


def calibrate(inputs, variables: Dict[str, Any], mode: str, num_bits: int,
              calibration_steps: int, method: str = "mse", scale: float = 1.0) -> tf.Tensor:
    """Folds this batch's range (:func:`batch_range` by ``method``), divided by the variables'
    ``scale``, into the running means over the first batches.

    ``variables`` holds ``alpha``, ``calibrated_steps`` and, in asymmetric mode, ``beta``.
    Only the range search sits inside ``tf.cond``; the assignments stay outside it (and
    write back unchanged values once calibration is over), because under ``tf.distribute``
    assigning a MEAN-aggregated variable is a cross-replica sync, which TensorFlow does not
    allow inside control flow. Each replica then contributes its own batch's range and the
    variables take their mean.

    Returns:
      The updated step count, to use as a control dependency.
    """
    steps = variables["calibrated_steps"]
    alpha, beta = variables["alpha"], variables.get("beta")
    active = steps < float(calibration_steps)
    low, high = tf.cond(active, lambda: batch_range(inputs, mode, num_bits, method),
                        lambda: (tf.zeros(()), tf.zeros(())))
    low, high = low / scale, high / scale
    n = steps + 1.0
    # The first batch replaces the placeholder init; later ones average in; keep = 1
    # (nothing changes) after calibration.
    keep = tf.where(active, tf.where(steps > 0, (n - 1.0) / n, 0.0), 1.0)
    ops = [alpha.assign(keep * alpha + (1.0 - keep) * high)]
    if beta is not None:
        ops.append(beta.assign(keep * beta + (1.0 - keep) * -low))
    with tf.control_dependencies(ops):
        return tf.identity(steps.assign_add(tf.where(active, 1.0, 0.0)))


def track(inputs, variables: Dict[str, Any], mode: str, scale: float = 1.0) -> tf.Tensor:
    """Widens the range to cover this batch: ``alpha`` (and ``beta``) become the running
    maximum (and minus the running minimum) of every training batch so far, divided by the
    variables' ``scale``, so no value seen in training is clipped. Returns the updated step
    count (a control dependency)."""
    low, high = _extremes(tf.cast(inputs, tf.float32), mode)
    low, high = low / scale, high / scale
    steps, alpha, beta = variables["calibrated_steps"], variables["alpha"], variables.get("beta")
    first = steps < 0.5
    ops = [alpha.assign(tf.where(first, high, tf.maximum(alpha, high)))]
    if beta is not None:
        ops.append(beta.assign(tf.where(first, -low, tf.maximum(beta, -low))))
    with tf.control_dependencies(ops):
        return tf.identity(steps.assign_add(1.0))


def quantize_activation(inputs, training: Any, variables: Dict[str, Any], *, num_bits: int,
                        mode: str, calibration_steps: int = 32, calibration: str = "auto",
                        track_range: bool = False, range_learning: str = "pact") -> tf.Tensor:
    """PACT's forward pass on one tensor: calibrate (training, ``calibrated_steps`` present;
    each batch ranged by ``calibration``, one of :data:`CALIBRATIONS`) or, with
    ``track_range``, widen the range to the batch (:func:`track`), clip to the
    range, fake-quantize to ``num_bits`` (8 while exporting to TFLite: the learned range
    becomes the int8 range) with the gradients of ``range_learning`` (one of
    :data:`RANGE_LEARNINGS`, which also sets the variables' :func:`range_scale`). Symmetric
    mode uses the narrow integer range so that zero sits exactly in the middle of
    ``[-alpha, alpha]``."""
    learning = resolve_range_learning(range_learning, num_bits)
    scale = range_scale(learning, num_bits)
    if training and "calibrated_steps" in variables:
        update = track(inputs, variables, mode, scale) if track_range else calibrate(
            inputs, variables, mode, num_bits, calibration_steps, calibration, scale)
        with tf.control_dependencies([update]):
            inputs = tf.identity(inputs)
    low, high = clip_range(mode, variables["alpha"], variables.get("beta"), scale)
    return fake_quant(inputs, low, high, 8 if exporting() else num_bits, mode == "symmetric",
                      rounding_gradient=learning == "lsq")
