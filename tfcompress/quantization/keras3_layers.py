"""PACT quantization-aware training layers for Keras 3 (TensorFlow backend).

tfmot wraps only tf_keras layers; these two Keras 3 layers do the same job for Keras 3
models, with the same math (:mod:`~tfcompress.quantization.pact_math`,
:mod:`~tfcompress.quantization.kernel_math`) and options as the tfmot path:

* :class:`PACTActivation` fake-quantizes its input on a learned PACT range (model inputs);
* :class:`PACTQuantizeWrapper` runs a layer with its kernels fake-quantized per channel and
  fake-quantizes its result, as tfmot's ``QuantizeWrapper`` + ``PACTQuantizeConfig`` do.

Both carry the class attribute ``tfcompress_qat = True``: the contract by which other code
(``tfcompress.export.to_tflite``) recognises a Keras 3 quantization-aware model. Both are
registered as ``tfcompress>ClassName``, so ``.keras`` files load without a scope.

Example:
  >>> import keras
  >>> act = PACTActivation(num_bits=4, mode="relu", alpha_init=2.0, name="act")
  >>> act(keras.ops.convert_to_tensor([[-1.0, 1.0, 5.0]])).numpy()
  array([[0.       , 0.9333334, 2.       ]], dtype=float32)
  >>> [v.name for v in act.weights]
  ['act_pact_alpha']
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from tfcompress._keras import keras3, require_tensorflow_backend
from tfcompress.quantization.configs import (
    FIXED_RANGE_ACTIVATIONS,
    LayerRule,
    rule_for,
    supported_types,
)
from tfcompress.quantization.kernel_math import (
    check_weight_range,
    quantize_weight,
    step_variables,
)
from tfcompress.quantization.pact import PACTQuantizer, saved_pact_options, validate_bits
from tfcompress.quantization.pact_math import clip_range, quantize_activation

__all__ = ["PACTActivation", "PACTQuantizeWrapper", "pact_range", "FIXED_RANGE_ACTIVATIONS"]

_register = keras3.saving.register_keras_serializable(package="tfcompress")


def _pop_pact_options(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {name: kwargs.pop(name) for name in PACTQuantizer.option_names() if name in kwargs}


class _PACTVariables:
    """Holds a layer's PACT variables out of Keras' attribute tracking (they are already
    tracked by ``add_weight``)."""

    def __init__(self, variables: Dict[str, Any]):
        self.variables = variables


def _add_pact_variables(layer, prefix: str, quantizer: PACTQuantizer) -> _PACTVariables:
    """Creates ``{prefix}_pact_alpha`` (and ``_pact_beta``, ``_pact_calibrated_steps``) on a
    Keras 3 layer, as :meth:`PACTQuantizer.build` does on a tf_keras one."""
    alpha0, beta0 = quantizer.initial_range()
    train = quantizer.trainable_range and not quantizer.track_range
    decay = keras3.regularizers.L2(quantizer.decay) if quantizer.decay and train else None

    def scalar(suffix, value, trainable=train, regularizer=None):
        return layer.add_weight(name=f"{prefix}_{suffix}", shape=(),
                                initializer=keras3.initializers.Constant(value),
                                regularizer=regularizer, trainable=trainable,
                                aggregation="mean")

    variables = {"alpha": scalar("pact_alpha", alpha0, regularizer=decay)}
    if quantizer.mode == "asymmetric":
        variables["beta"] = scalar("pact_beta", beta0, regularizer=decay)
    if quantizer.counts_steps:
        variables["calibrated_steps"] = scalar("pact_calibrated_steps", 0.0, trainable=False)
    return _PACTVariables(variables)


def _add_step_variables(layer, prefix: str, variables) -> Dict[str, Any]:
    """``{prefix}_log_step`` … on a Keras 3 layer: the :func:`step_variables` that
    :meth:`ChannelWeightQuantizer.build` creates on a tf_keras one."""
    return {key: layer.add_weight(name=f"{prefix}_{key}", shape=shape, initializer="zeros",
                                  trainable=trainable, aggregation="mean")
            for key, (shape, trainable) in variables.items()}


def _quantize(x, training, quantizer: PACTQuantizer, holder: _PACTVariables):
    return quantize_activation(x, training, holder.variables, num_bits=quantizer.num_bits,
                               mode=quantizer.mode,
                               calibration_steps=quantizer.calibration_steps,
                               calibration=quantizer.calibration,
                               track_range=quantizer.track_range,
                               range_learning=quantizer.range_learning)


@_register
class PACTActivation(keras3.layers.Layer):
    """Fake-quantizes its input on a trainable PACT clipping range (Keras 3).

    The variables are ``{name}_pact_alpha`` and, in asymmetric mode, ``{name}_pact_beta``
    (plus ``{name}_pact_calibrated_steps`` with a calibrating ``alpha_init``).

    Args:
      num_bits: bit width, 2 to 8.
      mode, alpha_init, beta_init, decay, calibration_steps, trainable_range, track_range,
        range_learning: as for
        :class:`~tfcompress.quantization.PACTQuantizer`.
      **kwargs: Keras layer arguments (``name`` …).

    Example:
      >>> import keras
      >>> act = PACTActivation(num_bits=2, mode="symmetric", alpha_init=1.5)
      >>> act(keras.ops.convert_to_tensor([[-3.0, 0.5, 1.0]])).numpy()
      array([[-1.5,  0. ,  1.5]], dtype=float32)
    """

    tfcompress_qat = True

    def __init__(self, num_bits: int = 8, **kwargs):
        require_tensorflow_backend("PACT quantization-aware training")
        options = _pop_pact_options(kwargs)
        super().__init__(**kwargs)
        self.quantizer = PACTQuantizer(num_bits, **options)
        self._pact: Optional[_PACTVariables] = None

    def build(self, input_shape=None):
        self._pact = _add_pact_variables(self, self.name, self.quantizer)
        self.built = True

    def call(self, inputs, training=None):
        return _quantize(inputs, training, self.quantizer, self._pact)

    def compute_output_shape(self, input_shape):
        return input_shape

    def clip_range(self) -> Tuple[float, float]:
        """The current ``(low, high)`` as floats."""
        return _floats(self.quantizer, self._pact)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), **self.quantizer.get_config()}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PACTActivation":
        return super().from_config(saved_pact_options(config))


def _floats(quantizer: PACTQuantizer, holder: _PACTVariables) -> Tuple[float, float]:
    low, high = clip_range(quantizer.mode, holder.variables["alpha"],
                           holder.variables.get("beta"), quantizer.range_scale)
    return float(low), float(high)


def _rule(layer) -> LayerRule:
    rule = rule_for(layer)
    if rule is None:
        raise ValueError(
            f"PACTQuantizeWrapper cannot quantize layer {layer.name!r} of type "
            f"{type(layer).__name__}. Supported types: {', '.join(supported_types())}. "
            "Leave this layer unwrapped (it stays float)."
        )
    return rule


@_register
class PACTQuantizeWrapper(keras3.layers.Wrapper):
    """Runs a Keras 3 layer with per-channel fake-quantized kernels and a PACT-quantized result.

    Which kernels are quantized (and where their output channels are) and how the result is
    quantized come from :data:`~tfcompress.quantization.LAYER_RULES`, as for
    :class:`~tfcompress.quantization.PACTQuantizeConfig`: Conv/Dense results after their
    activation (variables ``post_activation_pact_*``), ReLU/Add/Concatenate/pooling outputs
    (``output_pact_*``). Kernels are substituted with ``keras.StatelessScope``, so the
    wrapped layer's own ``call`` computes with the quantized kernel and gradients reach the
    float kernel straight through.

    Args:
      layer: the Keras 3 layer to quantize (a family of ``LAYER_RULES``).
      weight_bits: kernel bit width, 2 to 8.
      activation_bits: result bit width, 2 to 8.
      quantize_output: False leaves the result float (TFLite fuses the next activation
        into this layer, and that activation is quantized instead).
      post_activation: an activation with a fixed TFLite output range (``"softmax"``,
        ``"sigmoid"`` …) applied after the quantizer; the wrapped layer's own activation
        must then be linear (tfmot quantizes before such activations too).
      weight_range: ``"max"``, ``"mse"``, ``"learned"``, ``"learned_midrise"`` or ``"auto"``
        (a learned step adds the variables ``{kernel}_log_step`` and
        ``{kernel}_step_ready``), as in :class:`~tfcompress.quantization.ChannelWeightQuantizer`.
      **kwargs: PACT options (``mode``, ``alpha_init`` …) and Keras layer arguments.

    Example:
      >>> import keras
      >>> qat = PACTQuantizeWrapper(keras.layers.Dense(3), weight_bits=4, activation_bits=4,
      ...                           mode="relu", alpha_init=2.0, name="quant_dense")
      >>> qat(keras.ops.ones((2, 5))).shape
      TensorShape([2, 3])
      >>> sorted(v.name for v in qat.weights)
      ['bias', 'kernel', 'post_activation_pact_alpha']
    """

    tfcompress_qat = True

    def __init__(self, layer, weight_bits: int = 8, activation_bits: int = 8,
                 quantize_output: bool = True, post_activation: Optional[str] = None,
                 weight_range: str = "max", **kwargs):
        require_tensorflow_backend("PACT quantization-aware training")
        if not isinstance(layer, keras3.layers.Layer):
            raise TypeError(f"`layer` must be a Keras 3 layer, got {type(layer).__name__}.")
        options = _pop_pact_options(kwargs)
        super().__init__(layer, **kwargs)
        self.rule = _rule(layer)
        self.weight_bits = validate_bits(weight_bits, "weight_bits")
        self.weight_range = check_weight_range(weight_range)
        self.quantizer = PACTQuantizer(activation_bits, **options)
        self.quantize_output = bool(quantize_output) and self.rule.result != "none"
        self.post_activation = None if post_activation is None else \
            keras3.activations.get(post_activation)
        self._pact: Optional[_PACTVariables] = None
        self._steps: Optional[_PACTVariables] = None

    @property
    def quantizer_name(self) -> str:
        """``output`` or ``post_activation``/``pre_activation``: the variables' prefix."""
        if self.rule.result == "output":
            return "output"
        return "pre_activation" if self.post_activation is not None else "post_activation"

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.quantize_output:
            self._pact = _add_pact_variables(self, self.quantizer_name, self.quantizer)
        steps = {attr: step_variables(self.weight_range, self.weight_bits,
                                      getattr(self.layer, attr).shape, layout)
                 for attr, layout in self.rule.weights}
        self._steps = _PACTVariables({attr: _add_step_variables(self, attr, variables)
                                      for attr, variables in steps.items() if variables})
        self.built = True

    def call(self, inputs, training=None, **kwargs):
        steps = self._steps.variables if self._steps is not None else {}
        mapping = [(getattr(self.layer, attr),
                    quantize_weight(getattr(self.layer, attr), self.weight_bits, layout,
                                    self.weight_range, steps.get(attr), training))
                   for attr, layout in self.rule.weights]
        if mapping:
            with keras3.StatelessScope(state_mapping=mapping):
                outputs = self.layer(inputs, **kwargs)
        else:
            outputs = self.layer(inputs, **kwargs)
        if self._pact is not None:
            outputs = _quantize(outputs, training, self.quantizer, self._pact)
        if self.post_activation is not None:
            outputs = self.post_activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None, **kwargs):
        return self.layer.compute_output_spec(inputs, **kwargs)

    def clip_range(self) -> Optional[Tuple[float, float]]:
        """The current ``(low, high)`` as floats, or None if the result is not quantized."""
        return None if self._pact is None else _floats(self.quantizer, self._pact)

    def get_config(self) -> Dict[str, Any]:
        options = {k: v for k, v in self.quantizer.get_config().items() if k != "num_bits"}
        post = None if self.post_activation is None else \
            keras3.activations.serialize(self.post_activation)
        return {**super().get_config(), "weight_bits": self.weight_bits,
                "activation_bits": self.quantizer.num_bits,
                "quantize_output": self.quantize_output, "post_activation": post,
                "weight_range": self.weight_range, **options}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PACTQuantizeWrapper":
        return super().from_config(saved_pact_options(config))


def pact_range(layer) -> Optional[Tuple[str, Tuple[float, float]]]:
    """``(key, (low, high))`` of a Keras 3 PACT layer, keyed as ``clip_ranges`` keys it (the
    wrapped layer's name, or the :class:`PACTActivation`'s own); None for other layers.

    Example:
      >>> import keras
      >>> act = PACTActivation(alpha_init=3.0, mode="symmetric", name="quantize_layer")
      >>> _ = act(keras.ops.ones((1, 2)))
      >>> pact_range(act)
      ('quantize_layer', (-3.0, 3.0))
    """
    if isinstance(layer, PACTActivation) and layer.built:
        return layer.name, layer.clip_range()
    if isinstance(layer, PACTQuantizeWrapper) and layer.clip_range() is not None:
        return layer.layer.name, layer.clip_range()
    return None
