"""PACT's math, written once for both Kerases: fake-quantization with PACT's gradients,
clip ranges, ``alpha_init="auto"`` calibration, and per-channel weight fake-quantization.

The functions take TensorFlow tensors and variables (tf_keras ``tf.Variable`` or Keras 3
variables on the TensorFlow backend; both read as tensors and support ``assign``). The
tfmot quantizers (:class:`~tfcompress.quantization.PACTQuantizer`,
:class:`~tfcompress.quantization.ChannelWeightQuantizer`) and the Keras 3 layers of
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

from tfcompress._validate import check_choice
from tfcompress.quantization.tflite_mode import exporting

MODES = ("asymmetric", "symmetric", "relu")
"""Clip ranges: ``[-beta, alpha]``, ``[-alpha, alpha]`` (PaddleSlim) and ``[0, alpha]`` (PACT)."""

LAYOUTS = ("channels_last", "depthwise", "transpose", "per_tensor")
"""How a kernel stores its output channels:

* ``channels_last`` - the last axis (Conv1D/2D/3D, Dense).
* ``depthwise`` - the last two axes together, ``in_channels * depth_multiplier``.
* ``transpose`` - axis -2 (Conv1D/2D/3DTranspose kernels are ``(..., out, in)``).
* ``per_tensor`` - one range for the whole tensor.
"""

MIN_RANGE = 1e-3  # keeps the quantization step positive if alpha is driven to zero
_MIN_WEIGHT_RANGE = 1e-8  # an all-zero (e.g. pruned) channel still gets a valid range
_CALIBRATION_SAMPLES = 4096  # values per batch used to pick the initial range
_CALIBRATION_FACTORS = [0.25 + 0.05 * i for i in range(16)]  # 0.25 .. 1.0 of [min, max]
_WEIGHT_FACTORS = [1.0 - 0.05 * i for i in range(15)]  # 1.0 .. 0.3 of the absolute maximum

WEIGHT_RANGES = ("max", "mse", "learned", "auto")
"""How a kernel's symmetric range is chosen: :func:`weight_range` (``"max"``, ``"mse"``),
:func:`learned_step` (``"learned"``), or ``"auto"`` (:func:`resolve_weight_range`)."""

AUTO_LEARNED_BITS = 3
"""``"auto"`` learns the step at this many weight bits or fewer and takes the maximum above:
in ``benchmarks/qat.py`` a learned step gained at 3 and 2 bits and lost at 4."""


def fake_quant(x, low, high, num_bits: int, narrow_range: bool):
    """Clips ``x`` to ``[low, high]`` and fake-quantizes it, with PACT's gradients.

    The forward op is ``FakeQuantWithMinMaxVars`` (which TFLite reads at conversion). The
    gradient is written out rather than taken from that op, so that it is exactly PACT's:
    straight-through inside the range, and the clip boundaries themselves belong to the
    clipped region (``x >= high`` feeds ``high``, ``x <= low`` feeds ``low``), as in the paper.
    """

    @tf.custom_gradient
    def quantize(x, low, high):
        y = tf.quantization.fake_quant_with_min_max_vars(
            x, low, high, num_bits=num_bits, narrow_range=narrow_range)

        def grad(dy):
            above, below = x >= high, x <= low
            inside = tf.logical_not(tf.logical_or(above, below))
            zeros = tf.zeros_like(dy)
            return (tf.where(inside, dy, zeros),
                    tf.reduce_sum(tf.where(below, dy, zeros)),
                    tf.reduce_sum(tf.where(above, dy, zeros)))

        return y, grad

    return quantize(x, tf.cast(low, x.dtype), tf.cast(high, x.dtype))


def clip_range(mode: str, alpha: Any, beta: Optional[Any] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(low, high)`` of a PACT range: ``[-beta, alpha]``, ``[-alpha, alpha]`` or ``[0, alpha]``
    for ``mode`` asymmetric, symmetric, relu (alpha at least ``MIN_RANGE``, beta at least 0)."""
    alpha = tf.maximum(tf.convert_to_tensor(alpha), MIN_RANGE)
    if mode == "relu":
        return tf.constant(0.0), alpha
    if mode == "symmetric":
        return -alpha, alpha
    return -tf.maximum(tf.convert_to_tensor(beta), 0.0), alpha


def batch_range(inputs, mode: str, num_bits: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """The ``(low, high)`` that minimizes this batch's ``num_bits`` quantization error (MSE).

    Candidates shrink the batch's ``[min, max]`` by a common factor; at low bit widths the
    best clip is well inside the extremes (the reason PACT exists), at 8 bits it is close to
    them.
    """
    x = tf.reshape(tf.cast(inputs, tf.float32), [-1])
    x = x[:: tf.maximum(tf.size(x) // _CALIBRATION_SAMPLES, 1)]
    high, low = tf.reduce_max(x), tf.minimum(tf.reduce_min(x), 0.0)
    if mode == "symmetric":
        high = tf.maximum(high, -low)
        low = -high
    elif mode == "relu":
        low = tf.zeros_like(low)
    high = tf.maximum(high, MIN_RANGE)
    factors = tf.constant(_CALIBRATION_FACTORS)[:, None]
    lows, highs = low * factors, high * factors
    levels = 2.0 ** num_bits - 1.0 - float(mode == "symmetric")
    step = (highs - lows) / levels
    clipped = tf.minimum(tf.maximum(x[None, :], lows), highs)
    q = tf.round((clipped - lows) / step) * step + lows
    best = tf.argmin(tf.reduce_mean(tf.square(q - x[None, :]), axis=1))
    return lows[best, 0], highs[best, 0]


def calibrate(inputs, variables: Dict[str, Any], mode: str, num_bits: int,
              calibration_steps: int) -> tf.Tensor:
    """Folds this batch's best range into the running means over the first batches.

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
    low, high = tf.cond(active, lambda: batch_range(inputs, mode, num_bits),
                        lambda: (tf.zeros(()), tf.zeros(())))
    n = steps + 1.0
    # The first batch replaces the placeholder init; later ones average in; keep = 1
    # (nothing changes) after calibration.
    keep = tf.where(active, tf.where(steps > 0, (n - 1.0) / n, 0.0), 1.0)
    ops = [alpha.assign(keep * alpha + (1.0 - keep) * high)]
    if beta is not None:
        ops.append(beta.assign(keep * beta + (1.0 - keep) * -low))
    with tf.control_dependencies(ops):
        return tf.identity(steps.assign_add(tf.where(active, 1.0, 0.0)))


def track(inputs, variables: Dict[str, Any], mode: str) -> tf.Tensor:
    """Widens the range to cover this batch: ``alpha`` (and ``beta``) become the running
    maximum (and minus the running minimum) of every training batch so far, so no value seen
    in training is clipped. Returns the updated step count (a control dependency)."""
    x = tf.cast(inputs, tf.float32)
    high, low = tf.reduce_max(x), tf.minimum(tf.reduce_min(x), 0.0)
    if mode == "symmetric":
        high = tf.maximum(high, -low)
    steps, alpha, beta = variables["calibrated_steps"], variables["alpha"], variables.get("beta")
    first = steps < 0.5
    ops = [alpha.assign(tf.where(first, high, tf.maximum(alpha, high)))]
    if beta is not None:
        ops.append(beta.assign(tf.where(first, -low, tf.maximum(beta, -low))))
    with tf.control_dependencies(ops):
        return tf.identity(steps.assign_add(1.0))


def quantize_activation(inputs, training: Any, variables: Dict[str, Any], *, num_bits: int,
                        mode: str, calibration_steps: int = 32,
                        track_range: bool = False) -> tf.Tensor:
    """PACT's forward pass on one tensor: calibrate (training, ``calibrated_steps`` present)
    or, with ``track_range``, widen the range to the batch (:func:`track`), clip to the
    range, fake-quantize to ``num_bits`` (8 while exporting to TFLite: the learned range
    becomes the int8 range). Symmetric mode uses the narrow integer range so that zero sits
    exactly in the middle of ``[-alpha, alpha]``."""
    if training and "calibrated_steps" in variables:
        update = track(inputs, variables, mode) if track_range else calibrate(
            inputs, variables, mode, num_bits, calibration_steps)
        with tf.control_dependencies([update]):
            inputs = tf.identity(inputs)
    low, high = clip_range(mode, variables["alpha"], variables.get("beta"))
    return fake_quant(inputs, low, high, 8 if exporting() else num_bits, mode == "symmetric")


def check_weight_range(value: Any) -> str:
    """Returns ``value`` if it is one of :data:`WEIGHT_RANGES`.

    Raises:
      ValueError: for anything else.
    """
    return check_choice(value, "weight_range", WEIGHT_RANGES)


def _levels(num_bits: int) -> float:
    """Positive levels of a symmetric narrow ``num_bits`` grid: ``2^(b-1) - 1``."""
    return 2.0 ** (num_bits - 1) - 1.0


def resolve_weight_range(method: str, num_bits: int) -> str:
    """The range method a ``num_bits`` kernel really uses: ``"max"`` at 8 bits (the other
    methods only matter on coarser grids), ``"auto"`` resolved by :data:`AUTO_LEARNED_BITS`.

    Example:
      >>> [resolve_weight_range("auto", b) for b in (2, 3, 4, 8)]
      ['learned', 'learned', 'max', 'max']
    """
    if num_bits >= 8:
        return "max"
    if method == "auto":
        return "learned" if num_bits <= AUTO_LEARNED_BITS else "max"
    return method


def weight_range(x, num_bits: int, axes, method: str = "max") -> tf.Tensor:
    """The symmetric range of a kernel (per channel when ``axes`` leaves the last axis):
    its absolute maximum, or with ``method="mse"`` below 8 bits the fraction of it whose
    ``num_bits`` grid reproduces the kernel with the least squared error.

    At 2-3 bits the maximum is a poor scale: on a ternary grid every weight under half the
    largest one rounds to zero. The search is recomputed from the current weights at every
    step (no state) and is not differentiated (the straight-through estimator sees a fixed
    range, as with the maximum).
    """
    high = tf.maximum(tf.reduce_max(tf.abs(x), axis=axes), _MIN_WEIGHT_RANGE)
    if method != "mse" or num_bits >= 8:
        return high
    levels = _levels(num_bits)
    x = tf.stop_gradient(x)
    best, best_error = high, None
    for factor in _WEIGHT_FACTORS:
        step = high * factor / levels
        error = tf.reduce_sum(tf.square(
            tf.clip_by_value(tf.round(x / step), -levels, levels) * step - x), axis=axes)
        if best_error is None:
            best, best_error = high * factor, error
        else:
            better = error < best_error
            best = tf.where(better, high * factor, best)
            best_error = tf.where(better, error, best_error)
    return tf.stop_gradient(best)


def step_shape(kernel_shape, layout: str) -> Tuple[int, ...]:
    """The shape of a kernel's learned step variable: one per output channel of ``layout``.

    Example:
      >>> step_shape((3, 3, 4, 2), "depthwise"), step_shape((5, 6), "per_tensor")
      ((8,), ())
    """
    shape = [int(d) for d in kernel_shape]
    if layout == "per_tensor":
        return ()
    if layout == "depthwise":
        return (shape[-2] * shape[-1],)
    return (shape[-2],) if layout == "transpose" else (shape[-1],)


def step_variables(method: str, num_bits: int, kernel_shape,
                   layout: str) -> Dict[str, Tuple[Tuple[int, ...], bool]]:
    """``{name: (shape, trainable)}`` of the variables a kernel's quantizer owns: for a
    learned step (:func:`resolve_weight_range` gives ``"learned"``) ``log_step`` and
    ``step_ready`` (:func:`learned_step`), all zero-initialized and MEAN-aggregated; none
    otherwise. Each front-end creates them with its own ``add_weight``.

    Example:
      >>> step_variables("auto", 3, (3, 3, 4, 6), "channels_last")
      {'log_step': ((6,), True), 'step_ready': ((), False)}
      >>> step_variables("auto", 4, (3, 3, 4, 6), "channels_last")
      {}
    """
    if resolve_weight_range(method, num_bits) != "learned":
        return {}
    return {"log_step": (step_shape(kernel_shape, layout), True), "step_ready": ((), False)}


def learned_step(x, variables: Dict[str, Any], num_bits: int, axes, training: Any) -> tf.Tensor:
    """A kernel's grid step per channel, learned as in LSQ (Esser et al., ICLR 2020).

    ``variables`` holds ``log_step`` (trainable, shaped by :func:`step_shape`; the step is
    its exponential, so it stays positive and an optimizer moves it in relative terms) and
    ``step_ready``. Until the first training step the step is the ``"mse"`` range's
    (:func:`weight_range`), so a model exports correctly before any training; that step
    then writes it into ``log_step`` and sets ``step_ready``.
    """
    levels = _levels(num_bits)
    log_step, ready_flag = variables["log_step"], variables["step_ready"]
    ready = tf.convert_to_tensor(ready_flag) > 0.5

    def mse_step():
        return weight_range(x, num_bits, axes, "mse") / levels

    if not training:
        stored = tf.exp(tf.convert_to_tensor(log_step))
        if exporting():  # no control flow in the converted graph: both sides fold to constants
            return tf.where(ready, stored, mse_step())
        return tf.cond(ready, lambda: stored, mse_step)  # no search once the step is stored
    first = tf.cond(ready, lambda: tf.ones_like(log_step), mse_step)
    # Assigned outside tf.cond, as in `calibrate` (a cross-replica sync under tf.distribute).
    ops = [log_step.assign(tf.where(ready, log_step, tf.math.log(first))),
           ready_flag.assign(tf.ones_like(ready_flag))]
    with tf.control_dependencies(ops):
        return tf.exp(tf.convert_to_tensor(log_step))


def _learned_fake_quant(x, step, num_bits: int, axes):
    """``x`` on the narrow ``num_bits`` grid of ``step``, with LSQ's gradients: straight
    through inside the range, and for the step the rounding error (inside) or the clipped
    level (outside), scaled by ``1 / sqrt(values per channel * levels)``."""
    levels = _levels(num_bits)
    count = tf.cast(tf.size(x), tf.float32) / tf.cast(tf.maximum(tf.size(step), 1), tf.float32)
    scale = tf.math.rsqrt(count * levels)

    @tf.custom_gradient
    def quantize(x, step):
        high = step * levels
        if axes is None:
            y = tf.quantization.fake_quant_with_min_max_vars(
                x, -high, high, num_bits=num_bits, narrow_range=True)
        else:
            y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, -high, high, num_bits=num_bits, narrow_range=True)

        def grad(dy):
            v = x / step
            inside = tf.abs(v) <= levels
            d_step = tf.where(inside, tf.round(v) - v, tf.sign(v) * levels)
            return (tf.where(inside, dy, tf.zeros_like(dy)),
                    tf.reduce_sum(dy * d_step, axis=axes) * scale)

        return y, grad

    return quantize(x, step)


def _symmetric_fake_quant(x, num_bits: int, per_channel: bool, method: str,
                          variables: Optional[Dict[str, Any]], training: Any):
    axes = list(range(x.shape.rank - 1)) if per_channel else None
    method = resolve_weight_range(method, num_bits)
    if method == "learned":
        if variables is None or "log_step" not in variables:
            raise ValueError('weight_range="learned" needs the quantizer\'s `log_step` and '
                             '`step_ready` variables; quantize through the layer that owns them.')
        step = learned_step(x, variables, num_bits, axes, training)
        if not exporting():
            return _learned_fake_quant(x, step, num_bits, axes)
        high = step * _levels(num_bits)
    else:
        high = weight_range(x, num_bits, axes, method)
    if exporting() and num_bits < 8:
        # Round to the b-bit grid, then store it on an 8-bit grid whose step divides the
        # b-bit step: the int8 values are multiples of `ratio` (see tflite_mode).
        levels = 2 ** (num_bits - 1) - 1
        ratio = 127 // levels
        step = high / levels
        x = tf.clip_by_value(tf.round(x / step), -levels, levels) * step
        high = step * (127.0 / ratio)
        num_bits = 8
    if not per_channel:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, -high, high, num_bits=num_bits, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, -high, high, num_bits=num_bits, narrow_range=True)


def quantize_weight(kernel, num_bits: int, layout: str = "channels_last",
                    method: str = "max", variables: Optional[Dict[str, Any]] = None,
                    training: Any = False) -> tf.Tensor:
    """Symmetric narrow-range fake-quantization of a kernel, one range per output channel.

    Each channel's range comes from its current weights (:func:`weight_range`: the absolute
    maximum, or with ``method="mse"`` below 8 bits the least squared rounding error), or
    with ``method="learned"`` below 8 bits from the step in ``variables``
    (:func:`learned_step`); ``layout`` (one of :data:`LAYOUTS`) says where the output
    channels are.

    Example:
      >>> import tensorflow as tf
      >>> kernel = tf.constant([[0.4, -2.0], [1.0, 0.5], [0.6, 1.2]])
      >>> quantize_weight(kernel, num_bits=2).numpy()
      array([[ 0., -2.],
             [ 1.,  0.],
             [ 1.,  2.]], dtype=float32)
      >>> quantize_weight(kernel, num_bits=2, method="mse").numpy().round(4)  # 0.4, 0.6 kept
      array([[ 0.65, -1.6 ],
             [ 0.65,  0.  ],
             [ 0.65,  1.6 ]], dtype=float32)
    """
    x = tf.convert_to_tensor(kernel)
    options = (method, variables, training)
    if layout == "depthwise":
        shape = tf.shape(x)
        flat = tf.reshape(x, tf.concat([shape[:-2], [-1]], axis=0))
        return tf.reshape(_symmetric_fake_quant(flat, num_bits, True, *options), shape)
    if layout == "transpose":
        perm = list(range(x.shape.rank))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return tf.transpose(
            _symmetric_fake_quant(tf.transpose(x, perm), num_bits, True, *options), perm)
    return _symmetric_fake_quant(x, num_bits, layout != "per_tensor", *options)
