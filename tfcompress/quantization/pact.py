"""PACT: activation fake-quantization on a learned clipping range.

PACT (Choi et al., 2018, "PACT: Parameterized Clipping Activation for Quantized Neural
Networks") replaces the moving-average min/max of classic quantization-aware training
with a clipping range that is trained by back-propagation. Outliers stop dictating the
quantization step, which is what keeps 2-4 bit activations usable.

:class:`PACTQuantizer` is a tfmot :class:`~tfmot.quantization.keras.quantizers.Quantizer`,
so it plugs into ``QuantizeConfig``/``quantize_apply`` like tfmot's own quantizers.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple, Union

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras
from tfcompress._validate import check_int, check_number
from tfcompress.quantization._config import ConfigValue
from tfcompress.quantization.tflite_mode import exporting

MODES = ("asymmetric", "symmetric", "relu")
"""Clip ranges: ``[-beta, alpha]``, ``[-alpha, alpha]`` (PaddleSlim) and ``[0, alpha]`` (PACT)."""

_MIN_RANGE = 1e-3  # keeps the quantization step positive if alpha is driven to zero
_CALIBRATION_SAMPLES = 4096  # values per batch used to pick the initial range
_CALIBRATION_FACTORS = [0.25 + 0.05 * i for i in range(16)]  # 0.25 .. 1.0 of [min, max]


def validate_bits(value: Any, argument: str) -> int:
    """Returns ``value`` if it is an int bit width in [2, 8].

    Raises:
      TypeError: for a non-integer (``4.0``, ``"4"``, ``True``).
      ValueError: for an integer outside [2, 8].
    """
    value = check_int(value, argument)
    if not 2 <= value <= 8:
        raise ValueError(
            f"`{argument}` must be an integer from 2 to 8 (TFLite stores at most 8-bit "
            f"integers), got {value!r}. Pass e.g. `{argument}=4`."
        )
    return value


def _check_alpha_init(alpha_init: Any) -> Union[str, float]:
    allowed = "'auto' or a positive number"
    if isinstance(alpha_init, str):
        if alpha_init != "auto":
            raise ValueError(f"`alpha_init` must be {allowed}, got {alpha_init!r}.")
        return alpha_init
    return check_number(alpha_init, "alpha_init", allowed, valid=lambda v: v > 0)


def _check_non_negative(value: Any, argument: str, allowed: str) -> float:
    return check_number(value, argument, allowed, valid=lambda v: v >= 0)


def _pact_fake_quant(x, low, high, num_bits: int, narrow_range: bool):
    """Clips ``x`` to ``[low, high]`` and fake-quantizes it, with PACT's gradients.

    The forward op is ``FakeQuantWithMinMaxVars`` (which TFLite reads at conversion). The
    gradient is written out rather than taken from that op, so that it is exactly PACT's:
    the clip boundaries themselves belong to the clipped region (``x >= high`` feeds
    ``high``), as in the paper.
    """

    @tf.custom_gradient
    def fake_quant(x, low, high):
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

    return fake_quant(x, tf.cast(low, x.dtype), tf.cast(high, x.dtype))


@keras.utils.register_keras_serializable(package="tfcompress")
class PACTQuantizer(ConfigValue, tfmot.quantization.keras.quantizers.Quantizer):
    """Fake-quantizes a tensor on a trainable clipping range ``[-beta, alpha]``.

    When tfmot calls each method:
      * ``build(tensor_shape, name, layer)`` once, when the ``QuantizeWrapper`` (or
        ``QuantizeLayer``) that owns the tensor is built. It creates the trainable scalars
        ``{name}_pact_alpha`` and, in asymmetric mode, ``{name}_pact_beta`` on ``layer``.
      * ``__call__(inputs, training, weights)`` on every forward pass, with the dict that
        ``build`` returned. It clips to the learned range and fake-quantizes to
        ``num_bits`` with zero exactly representable (``tf.quantization.
        fake_quant_with_min_max_vars``, whose range TFLite reads at conversion; symmetric
        mode uses the narrow integer range so that zero is the midpoint).
      * ``get_config()`` when the model is saved.

    Gradients are PACT's: straight-through inside the range; ``d/d alpha`` is the sum of the
    upstream gradients where ``x >= alpha`` and ``d/d beta`` is minus the sum of those
    where ``x <= -beta`` (the lower clip is at ``-beta``). In symmetric mode both ends are
    ``alpha``, so its gradient is the difference of the two sums.

    Args:
      num_bits: bit width of the quantized tensor, 2 to 8.
      mode: ``"asymmetric"`` clips to ``[-beta, alpha]`` with both trainable;
        ``"symmetric"`` ties beta to alpha (PaddleSlim's PACT); ``"relu"`` clips to
        ``[0, alpha]`` (the original PACT).
      alpha_init: ``"auto"`` calibrates alpha (and beta) from the first
        ``calibration_steps`` training batches: for each batch, the clip range (a fraction
        of its ``[min, max]``) with the least ``num_bits`` quantization error, averaged over
        the batches; or a positive number used as the initial alpha.
      beta_init: initial beta in asymmetric mode when ``alpha_init`` is a number; defaults
        to ``alpha_init``. Ignored with ``"auto"``.
      decay: L2 regularization factor on alpha and beta (PaddleSlim decays alpha so the
        range keeps shrinking towards the bulk of the distribution). 0 disables it.
      calibration_steps: number of training batches used by ``alpha_init="auto"``.
      trainable_range: False freezes alpha and beta: they are created non-trainable, so
        ``fit`` never changes them (calibration, if any, still sets them). This is the
        "calibrated clip, no PACT gradient" ablation; the default True is PACT.

    Example:
      >>> import tensorflow as tf
      >>> import tf_keras
      >>> q = PACTQuantizer(num_bits=4, mode="relu", alpha_init=2.0)
      >>> layer = tf_keras.layers.Layer()  # any layer can own the variables
      >>> weights = q.build(tf.TensorShape([None, 3]), "act", layer)
      >>> q(tf.constant([[-1.0, 1.0, 5.0]]), training=False, weights=weights).numpy()
      array([[0.       , 0.9333334, 2.       ]], dtype=float32)
    """

    def __init__(
        self,
        num_bits: int = 8,
        mode: str = "asymmetric",
        alpha_init: Union[str, float] = "auto",
        beta_init: Optional[float] = None,
        decay: float = 0.0,
        calibration_steps: int = 32,
        trainable_range: bool = True,
    ):
        self.num_bits = validate_bits(num_bits, "num_bits")
        if not isinstance(mode, str):
            raise TypeError(f"`mode` must be one of {MODES}, got {mode!r} ({type(mode).__name__}).")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.alpha_init = _check_alpha_init(alpha_init)
        self.beta_init = None if beta_init is None else _check_non_negative(
            beta_init, "beta_init", "a number >= 0 or None")
        self.decay = _check_non_negative(decay, "decay", "a number >= 0")
        self.calibration_steps = check_int(calibration_steps, "calibration_steps", minimum=1)
        if not isinstance(trainable_range, bool):
            raise TypeError(f"`trainable_range` must be True or False, got {trainable_range!r}.")
        self.trainable_range = trainable_range

    @classmethod
    def option_names(cls) -> Tuple[str, ...]:
        """The keyword options of the constructor besides ``num_bits`` (the "PACT options")."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters
                     if name not in ("self", "num_bits"))

    @property
    def calibrates(self) -> bool:
        return self.alpha_init == "auto"

    def build(self, tensor_shape, name: str, layer) -> Dict[str, tf.Variable]:
        # Until calibration runs, "auto" starts from 6.0 (the range of ReLU6 and of tfmot's
        # MovingAverageQuantizer init), so an uncalibrated model still computes sensibly.
        alpha0 = 6.0 if self.calibrates else self.alpha_init
        beta0 = alpha0 if self.beta_init is None or self.calibrates else self.beta_init
        train = self.trainable_range
        regularizer = keras.regularizers.L2(self.decay) if self.decay and train else None

        def scalar(suffix, value, trainable=train, reg=None):
            return layer.add_weight(
                f"{name}_{suffix}",
                shape=(),
                initializer=keras.initializers.Constant(value),
                regularizer=reg,
                trainable=trainable,
                aggregation=tf.VariableAggregation.MEAN,
            )

        weights = {"alpha": scalar("pact_alpha", alpha0, reg=regularizer)}
        if self.mode == "asymmetric":
            weights["beta"] = scalar("pact_beta", beta0, reg=regularizer)
        if self.calibrates:
            weights["calibrated_steps"] = scalar("pact_calibrated_steps", 0.0, trainable=False)
        return weights

    def clip_range(self, weights: Dict[str, tf.Variable]):
        """Returns ``(low, high)`` tensors of the current clipping range."""
        alpha = tf.maximum(weights["alpha"], _MIN_RANGE)
        if self.mode == "relu":
            return tf.constant(0.0), alpha
        if self.mode == "symmetric":
            return -alpha, alpha
        return -tf.maximum(weights["beta"], 0.0), alpha

    def _batch_range(self, inputs):
        """The ``(low, high)`` that minimizes this batch's quantization error (MSE).

        Candidates shrink the batch's ``[min, max]`` by a common factor; at low bit widths
        the best clip is well inside the extremes (the reason PACT exists), at 8 bits it is
        close to them.
        """
        x = tf.reshape(tf.cast(inputs, tf.float32), [-1])
        x = x[:: tf.maximum(tf.size(x) // _CALIBRATION_SAMPLES, 1)]
        high, low = tf.reduce_max(x), tf.minimum(tf.reduce_min(x), 0.0)
        if self.mode == "symmetric":
            high = tf.maximum(high, -low)
            low = -high
        elif self.mode == "relu":
            low = tf.zeros_like(low)
        high = tf.maximum(high, _MIN_RANGE)
        factors = tf.constant(_CALIBRATION_FACTORS)[:, None]
        lows, highs = low * factors, high * factors
        levels = 2.0 ** self.num_bits - 1.0 - float(self.mode == "symmetric")
        step = (highs - lows) / levels
        clipped = tf.minimum(tf.maximum(x[None, :], lows), highs)
        q = tf.round((clipped - lows) / step) * step + lows
        best = tf.argmin(tf.reduce_mean(tf.square(q - x[None, :]), axis=1))
        return lows[best, 0], highs[best, 0]

    def _calibrate(self, inputs, weights):
        """Folds this batch's best range into the running means over the first batches.

        Only the range search sits inside ``tf.cond``; the assignments stay outside it (and
        write back unchanged values once calibration is over), because under
        ``tf.distribute`` assigning a MEAN-aggregated variable is a cross-replica sync,
        which TensorFlow does not allow inside control flow. Each replica then contributes
        its own batch's range and the variables take their mean.
        """
        steps = weights["calibrated_steps"]
        alpha, beta = weights["alpha"], weights.get("beta")
        active = steps < float(self.calibration_steps)
        low, high = tf.cond(active, lambda: self._batch_range(inputs),
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

    def __call__(self, inputs, training, weights, **kwargs):
        if training and self.calibrates:
            with tf.control_dependencies([self._calibrate(inputs, weights)]):
                inputs = tf.identity(inputs)
        low, high = self.clip_range(weights)
        # TFLite runs 8-bit kernels only: on export the learned range becomes the int8 range.
        num_bits = 8 if exporting() else self.num_bits
        # Symmetric mode uses the narrow range [-(2^(b-1) - 1), 2^(b-1) - 1] so that zero
        # sits exactly in the middle of [-alpha, alpha].
        return _pact_fake_quant(inputs, low, high, num_bits, self.mode == "symmetric")

    def get_config(self) -> Dict[str, Any]:
        return {
            "num_bits": self.num_bits,
            "mode": self.mode,
            "alpha_init": self.alpha_init,
            "beta_init": self.beta_init,
            "decay": self.decay,
            "calibration_steps": self.calibration_steps,
            "trainable_range": self.trainable_range,
        }
