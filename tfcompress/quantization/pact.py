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
from tfcompress._validate import check_choice, check_int, check_number
from tfcompress.quantization._config import ConfigValue
from tfcompress.quantization.pact_math import (
    CALIBRATIONS,
    MODES,
    RANGE_LEARNINGS,
    clip_range,
    quantize_activation,
    range_scale,
)

__all__ = ["MODES", "PACTQuantizer", "saved_pact_options", "validate_bits"]


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


def saved_pact_options(config: Dict[str, Any]) -> Dict[str, Any]:
    """A saved configuration holding PACT options, with the values that options added since
    meant before they existed: ``range_learning="pact"`` (every ``from_config`` of a class
    that takes PACT options reads its config through this).

    Example:
      >>> saved_pact_options({"mode": "relu"})
      {'range_learning': 'pact', 'mode': 'relu'}
    """
    return {"range_learning": "pact", **config}


def _check_alpha_init(alpha_init: Any) -> Union[str, float]:
    allowed = f"one of {CALIBRATIONS} or a positive number"
    if isinstance(alpha_init, str):
        if alpha_init not in CALIBRATIONS:
            raise ValueError(f"`alpha_init` must be {allowed}, got {alpha_init!r}.")
        return alpha_init
    return check_number(alpha_init, "alpha_init", allowed, valid=lambda v: v > 0)


def _check_non_negative(value: Any, argument: str, allowed: str) -> float:
    return check_number(value, argument, allowed, valid=lambda v: v >= 0)


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
      alpha_init: a string calibrates alpha (and beta) from the first
        ``calibration_steps`` training batches, averaging each batch's range: ``"mse"``,
        the clip range (a fraction of its ``[min, max]``) with the least ``num_bits``
        quantization error; ``"minmax"``, its ``[min, max]``; ``"auto"``, the extremes at
        8 bits and the least error below (:func:`~tfcompress.quantization.pact_math.
        resolve_calibration`). A positive number is used as the initial alpha.
      beta_init: initial beta in asymmetric mode when ``alpha_init`` is a number; defaults
        to ``alpha_init``. Ignored when calibrating.
      decay: L2 regularization factor on alpha and beta (PaddleSlim decays alpha so the
        range keeps shrinking towards the bulk of the distribution). 0 disables it.
      calibration_steps: number of training batches a calibrating ``alpha_init`` uses.
      trainable_range: False freezes alpha and beta: they are created non-trainable, so
        ``fit`` never changes them (calibration, if any, still sets them). This is the
        "calibrated clip, no PACT gradient" ablation; the default True is PACT.
      track_range: True makes the range an observer's instead of PACT's: alpha and beta
        are not trained and follow the running maximum and minimum of the training
        batches, so no value seen in training is clipped (``alpha_init`` and
        ``calibration_steps`` are then unused); ``quantize_model(output_range="track")``
        uses it for the model's outputs.
      range_learning: how a trainable range learns: ``"pact"``, PACT's gradient above;
        ``"lsq"``, LSQ's step gradient (the rounding error inside the range pulls on it
        too) with alpha and beta stored as a tenth of the range, so the optimizer moves the
        range ten times faster; ``"auto"``, LSQ's at 2 bits and PACT's above
        (:func:`~tfcompress.quantization.pact_math.resolve_range_learning`; ``quantize_model``
        decides once for the whole model, by its activation bits).

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
        track_range: bool = False,
        range_learning: str = "auto",
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
        if not isinstance(track_range, bool):
            raise TypeError(f"`track_range` must be True or False, got {track_range!r}.")
        self.track_range = track_range
        self.range_learning = check_choice(range_learning, "range_learning", RANGE_LEARNINGS)

    @classmethod
    def option_names(cls) -> Tuple[str, ...]:
        """The keyword options of the constructor besides ``num_bits`` (the "PACT options")."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters
                     if name not in ("self", "num_bits"))

    @property
    def calibrates(self) -> bool:
        return isinstance(self.alpha_init, str) and not self.track_range

    @property
    def calibration(self) -> str:
        """How calibration ranges each batch (one of ``CALIBRATIONS``; ``"auto"`` when
        ``alpha_init`` is a number, which does not calibrate)."""
        return self.alpha_init if isinstance(self.alpha_init, str) else "auto"

    @property
    def range_scale(self) -> float:
        """The factor from the stored alpha and beta to the range (:func:`range_scale`)."""
        return range_scale(self.range_learning, self.num_bits)

    @property
    def counts_steps(self) -> bool:
        """True if the range is set from training batches (calibration or tracking)."""
        return self.calibrates or self.track_range

    def initial_range(self) -> Tuple[float, float]:
        """The stored ``(alpha, beta)`` before training (placeholders that calibration
        replaces), in units of :attr:`range_scale`."""
        # Until calibration runs, alpha starts from 6.0 (the range of ReLU6 and of tfmot's
        # MovingAverageQuantizer init), so an uncalibrated model still computes sensibly.
        auto = isinstance(self.alpha_init, str)
        alpha0 = 6.0 if auto else self.alpha_init
        beta0 = alpha0 if self.beta_init is None or auto else self.beta_init
        return float(alpha0) / self.range_scale, float(beta0) / self.range_scale

    def build(self, tensor_shape, name: str, layer) -> Dict[str, tf.Variable]:
        alpha0, beta0 = self.initial_range()
        train = self.trainable_range and not self.track_range
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
        if self.counts_steps:
            weights["calibrated_steps"] = scalar("pact_calibrated_steps", 0.0, trainable=False)
        return weights

    def clip_range(self, weights: Dict[str, tf.Variable]):
        """Returns ``(low, high)`` tensors of the current clipping range."""
        return clip_range(self.mode, weights["alpha"], weights.get("beta"), self.range_scale)

    def __call__(self, inputs, training, weights, **kwargs):
        return quantize_activation(inputs, training, weights, num_bits=self.num_bits,
                                   mode=self.mode, calibration_steps=self.calibration_steps,
                                   calibration=self.calibration, track_range=self.track_range,
                                   range_learning=self.range_learning)

    def get_config(self) -> Dict[str, Any]:
        return {
            "num_bits": self.num_bits,
            "mode": self.mode,
            "alpha_init": self.alpha_init,
            "beta_init": self.beta_init,
            "decay": self.decay,
            "calibration_steps": self.calibration_steps,
            "trainable_range": self.trainable_range,
            "track_range": self.track_range,
            "range_learning": self.range_learning,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PACTQuantizer":
        return cls(**saved_pact_options(config))
