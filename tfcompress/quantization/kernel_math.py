"""Kernel fake-quantization, written once for both Kerases: per-channel symmetric grids
whose range is the maximum, the least-squares fraction of it, or a learned step (LSQ).

Two grids, both symmetric about zero and both exact in TFLite's per-channel int8 (zero
point 0, see :mod:`tfcompress.quantization.tflite_mode`):

* **narrow** (every range but ``"learned_midrise"``): the ``2^b - 1`` levels ``k * step``,
  ``|k| <= 2^(b-1) - 1``; at 2 bits the ternary ``{-1, 0, 1} * step``;
* **midrise** (``"learned_midrise"``): all ``2^b`` levels ``(k + 1/2) * step``,
  ``-2^(b-1) <= k < 2^(b-1)``; at 2 bits ``{-1.5, -0.5, 0.5, 1.5} * step``, one level more
  and no zero.

The tfmot quantizer (:class:`~tfcompress.quantization.ChannelWeightQuantizer`) and the
Keras 3 wrapper (:class:`~tfcompress.quantization.PACTQuantizeWrapper`) call
:func:`quantize_weight` and create the variables :func:`step_variables` lists.

Example:
  >>> import tensorflow as tf
  >>> kernel = tf.constant([[0.4, -2.0], [1.0, 0.5], [0.6, 1.2]])
  >>> quantize_weight(kernel, num_bits=2).numpy()
  array([[ 0., -2.],
         [ 1.,  0.],
         [ 1.,  2.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from tfcompress._validate import check_choice
from tfcompress.quantization.surrogate import with_gradient
from tfcompress.quantization.tflite_mode import exporting

LAYOUTS = ("channels_last", "depthwise", "transpose", "per_tensor")
"""How a kernel stores its output channels:

* ``channels_last`` - the last axis (Conv1D/2D/3D, Dense).
* ``depthwise`` - the last two axes together, ``in_channels * depth_multiplier``.
* ``transpose`` - axis -2 (Conv1D/2D/3DTranspose kernels are ``(..., out, in)``).
* ``per_tensor`` - one range for the whole tensor.
"""

WEIGHT_RANGES = ("max", "mse", "learned", "learned_midrise", "auto")
"""How a kernel's symmetric range is chosen: :func:`weight_range` (``"max"``, ``"mse"``),
:func:`learned_step` (``"learned"``, ``"learned_midrise"``), or ``"auto"``
(:func:`resolve_weight_range`)."""

LEARNED_RANGES = ("learned", "learned_midrise")
"""The ranges with a trainable step, on the narrow and on the midrise grid."""

AUTO_LEARNED_BITS = 3
"""``"auto"`` learns the step at this many weight bits or fewer and takes the maximum above:
in ``benchmarks/qat.py`` a learned step gained at 3 and 2 bits and lost at 4."""

AUTO_MIDRISE_BITS = 2
"""``"auto"`` learns a midrise grid at this many weight bits or fewer: at 2 bits its fourth
level gained in ``benchmarks/qat.py``."""

_MIN_WEIGHT_RANGE = 1e-8  # an all-zero (e.g. pruned) channel still gets a valid range
_WEIGHT_FACTORS = [1.0 - 0.05 * i for i in range(15)]  # 1.0 .. 0.3 of the absolute maximum


def check_weight_range(value: Any) -> str:
    """Returns ``value`` if it is one of :data:`WEIGHT_RANGES`.

    Raises:
      ValueError: for anything else.
    """
    return check_choice(value, "weight_range", WEIGHT_RANGES)


def resolve_weight_range(method: str, num_bits: int) -> str:
    """The range method a ``num_bits`` kernel really uses: ``"max"`` at 8 bits (the other
    methods only matter on coarser grids), ``"auto"`` resolved by :data:`AUTO_LEARNED_BITS`
    and :data:`AUTO_MIDRISE_BITS`.

    Example:
      >>> [resolve_weight_range("auto", b) for b in (2, 3, 4, 8)]
      ['learned_midrise', 'learned', 'max', 'max']
    """
    if num_bits >= 8:
        return "max"
    if method == "auto":
        if num_bits <= AUTO_MIDRISE_BITS:
            return "learned_midrise"
        return "learned" if num_bits <= AUTO_LEARNED_BITS else "max"
    return method


def _levels(num_bits: int) -> float:
    """Positive levels of a symmetric narrow ``num_bits`` grid: ``2^(b-1) - 1``."""
    return 2.0 ** (num_bits - 1) - 1.0


def _top(num_bits: int, midrise: bool) -> float:
    """The largest level of a grid, in steps: ``2^(b-1) - 1`` (narrow), ``2^(b-1) - 1/2``
    (midrise). The range is ``[-top * step, top * step]``."""
    return _levels(num_bits) + (0.5 if midrise else 0.0)


def _on_grid(v, num_bits: int, midrise: bool):
    """``v`` (in steps) rounded to the nearest level of the grid, in steps."""
    if not midrise:
        top = _levels(num_bits)
        return tf.clip_by_value(tf.round(v), -top, top)
    half = 2.0 ** (num_bits - 1)
    return tf.clip_by_value(tf.floor(v), -half, half - 1.0) + 0.5


def _best_high(x, high, num_bits: int, axes, midrise: bool) -> tf.Tensor:
    """The fraction of ``high`` (per channel) whose grid reproduces ``x`` with the least
    squared error, searched over ``_WEIGHT_FACTORS``; not differentiated."""
    top = _top(num_bits, midrise)
    x = tf.stop_gradient(x)
    best, best_error = high, None
    for factor in _WEIGHT_FACTORS:
        step = high * factor / top
        error = tf.reduce_sum(tf.square(_on_grid(x / step, num_bits, midrise) * step - x),
                              axis=axes)
        if best_error is None:
            best, best_error = high * factor, error
        else:
            better = error < best_error
            best = tf.where(better, high * factor, best)
            best_error = tf.where(better, error, best_error)
    return tf.stop_gradient(best)


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
    return _best_high(x, high, num_bits, axes, midrise=False)


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
    learned step (:func:`resolve_weight_range` gives one of :data:`LEARNED_RANGES`)
    ``log_step`` and ``step_ready`` (:func:`learned_step`), all zero-initialized and
    MEAN-aggregated; none otherwise. Each front-end creates them with its own ``add_weight``.

    Example:
      >>> step_variables("auto", 3, (3, 3, 4, 6), "channels_last")
      {'log_step': ((6,), True), 'step_ready': ((), False)}
      >>> step_variables("auto", 4, (3, 3, 4, 6), "channels_last")
      {}
    """
    if resolve_weight_range(method, num_bits) not in LEARNED_RANGES:
        return {}
    return {"log_step": (step_shape(kernel_shape, layout), True), "step_ready": ((), False)}


def learned_step(x, variables: Dict[str, Any], num_bits: int, axes, training: Any,
                 midrise: bool = False) -> tf.Tensor:
    """A kernel's grid step per channel, learned as in LSQ (Esser et al., ICLR 2020).

    ``variables`` holds ``log_step`` (trainable, shaped by :func:`step_shape`; the step is
    its exponential, so it stays positive and an optimizer moves it in relative terms) and
    ``step_ready``. Until the first training step the step is the least-squares one of the
    grid (as ``"mse"`` picks a range), so a model exports correctly before any training;
    that step then writes it into ``log_step`` and sets ``step_ready``.
    """
    top = _top(num_bits, midrise)
    log_step, ready_flag = variables["log_step"], variables["step_ready"]
    ready = tf.convert_to_tensor(ready_flag) > 0.5

    def mse_step():
        return _best_high(x, weight_range(x, num_bits, axes), num_bits, axes, midrise) / top

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


def _learned_fake_quant(x, step, num_bits: int, midrise: bool):
    """``x`` on the ``num_bits`` grid of ``step``, with LSQ's gradients: straight through
    inside the range, and for the step the rounding error (inside) or the clipped level
    (outside), scaled by ``1 / sqrt(values per channel * top level)`` (``step`` broadcasts
    against ``x``, so its gradient sums over the values of its channel)."""
    top = _top(num_bits, midrise)
    count = tf.cast(tf.size(x), tf.float32) / tf.cast(tf.maximum(tf.size(step), 1), tf.float32)
    scale = tf.math.rsqrt(count * top)
    v = x / step
    grid = _on_grid(v, num_bits, midrise)
    inside = tf.abs(v) <= top
    d_step = tf.where(inside, grid - v, tf.sign(v) * top) * scale
    surrogate = tf.where(inside, x, tf.zeros_like(x)) + tf.stop_gradient(d_step) * step
    return with_gradient(grid * step, surrogate)


def _int8_carrier(x, step, num_bits: int, midrise: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(x on its grid, int8 range)`` for export: the grid's levels are multiples of
    ``step / 2`` (midrise) or ``step``; they are stored as int8 multiples of ``ratio`` on a
    finer 8-bit grid whose step divides them exactly (see :mod:`tflite_mode`)."""
    units = 2.0 if midrise else 1.0
    ratio = 127 // int(_top(num_bits, midrise) * units)
    x = _on_grid(x / step, num_bits, midrise) * step
    return x, step / (units * ratio) * 127.0


def _symmetric_fake_quant(x, num_bits: int, per_channel: bool, method: str,
                          variables: Optional[Dict[str, Any]], training: Any):
    axes = list(range(x.shape.rank - 1)) if per_channel else None
    method = resolve_weight_range(method, num_bits)
    midrise = method == "learned_midrise"
    if method in LEARNED_RANGES:
        if variables is None or "log_step" not in variables:
            raise ValueError(f'weight_range="{method}" needs the quantizer\'s `log_step` and '
                             '`step_ready` variables; quantize through the layer that owns them.')
        step = learned_step(x, variables, num_bits, axes, training, midrise)
        if not exporting():
            return _learned_fake_quant(x, step, num_bits, midrise)
        high = step * _top(num_bits, midrise)
    else:
        high = weight_range(x, num_bits, axes, method)
        step = high / _levels(num_bits)
    if exporting() and num_bits < 8:
        x, high = _int8_carrier(x, step, num_bits, midrise)
        num_bits = 8
    if not per_channel:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, -high, high, num_bits=num_bits, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, -high, high, num_bits=num_bits, narrow_range=True)


def quantize_weight(kernel, num_bits: int, layout: str = "channels_last",
                    method: str = "max", variables: Optional[Dict[str, Any]] = None,
                    training: Any = False) -> tf.Tensor:
    """Symmetric fake-quantization of a kernel, one range per output channel.

    Each channel's range comes from its current weights (:func:`weight_range`: the absolute
    maximum, or with ``method="mse"`` below 8 bits the least squared rounding error), or
    with a learned ``method`` below 8 bits from the step in ``variables``
    (:func:`learned_step`); ``layout`` (one of :data:`LAYOUTS`) says where the output
    channels are.

    Example:
      >>> import tensorflow as tf
      >>> kernel = tf.constant([[0.4, -2.0], [1.0, 0.5], [0.6, 1.2]])
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
