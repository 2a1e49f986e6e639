"""``PACTQuantizeConfig``: how a layer's weights and outputs are quantized with PACT.

One table, :data:`LAYER_RULES`, says for each Keras layer family which weights are
quantized (and where their output channels are) and how the layer's result is quantized:

* ``"activation"`` - through the layer's own ``activation`` attribute (Conv, Dense …):
  tfmot's ``QuantizeAwareActivation`` quantizes after ``relu``/``linear`` and before
  ``softmax``/``sigmoid``/``tanh``, matching how TFLite fuses them.
* ``"output"`` - the layer's output tensor (ReLU, Add, Concatenate, pooling …).
* ``"none"`` - the layer only moves or selects values (Flatten, MaxPooling, Dropout …), so
  its output keeps its input's quantization, as in TFLite.

A new layer family is one new row. Lookups walk the layer's MRO, so subclasses of a known
layer inherit its rule and the most specific row wins (``DepthwiseConv2D`` before
``Conv2D``); the answer is cached per class.

The table covers tf_keras and Keras 3 layers alike (Keras 3 calls the depthwise kernel
``kernel``).

Example:
  >>> import keras
  >>> import tf_keras
  >>> rule_for(tf_keras.layers.DepthwiseConv2D(3)).weights
  (('depthwise_kernel', 'depthwise'),)
  >>> rule_for(keras.layers.DepthwiseConv2D(3)).weights
  (('kernel', 'depthwise'),)
  >>> rule_for(tf_keras.layers.MaxPooling2D).result
  'none'
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Tuple, Type

import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras, keras3, layer_classes
from tfcompress.layers import CHANNEL_BIAS
from tfcompress.quantization._config import ConfigValue
from tfcompress.quantization.kernel_math import check_weight_range
from tfcompress.quantization.pact import PACTQuantizer, saved_pact_options, validate_bits
from tfcompress.quantization.weights import ChannelWeightQuantizer


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How one layer family is quantized.

    Attributes:
      types: the Keras layer classes the rule applies to.
      weights: ``(attribute, layout)`` pairs of kernels to quantize; layouts are those of
        :class:`~tfcompress.quantization.weights.ChannelWeightQuantizer`.
      result: ``"activation"``, ``"output"`` or ``"none"`` (see the module docstring).
    """

    types: Tuple[Type, ...]
    weights: Tuple[Tuple[str, str], ...] = ()
    result: str = "output"


def _both(*names: str) -> Tuple[Type, ...]:
    """``keras.layers.<name>`` of tf_keras and of Keras 3, for every name."""
    return tuple(layer_classes(*names))


def _only(flavour_module, *names: str) -> Tuple[Type, ...]:
    return tuple(getattr(flavour_module.layers, n) for n in names
                 if hasattr(flavour_module.layers, n))


def _dims(*stems: str) -> Tuple[str, ...]:
    return tuple(f"{stem}{d}D" for stem in stems for d in (1, 2, 3))


_CONV = _both(*_dims("Conv"))
_TRANSPOSE = _both(*(f"Conv{d}DTranspose" for d in (1, 2, 3)))
_SEPARABLE = _both("SeparableConv1D", "SeparableConv2D")
_MERGE = _both("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
_POOL_AVG = _both(*_dims("AveragePooling", "GlobalAveragePooling"))
_ACTIVATIONS = _both("ReLU", "LeakyReLU", "ELU", "Activation")
_PASS_THROUGH = _both(
    *_dims("MaxPooling", "GlobalMaxPooling", "ZeroPadding", "Cropping", "SpatialDropout"),
    "Flatten", "Reshape", "Permute", "Dropout", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "ActivityRegularization", "InputLayer",
)

LAYER_RULES: Tuple[LayerRule, ...] = (
    LayerRule(_TRANSPOSE, (("kernel", "transpose"),), "activation"),
    # The depthwise kernel is `depthwise_kernel` in tf_keras and `kernel` in Keras 3.
    LayerRule(_only(keras, "DepthwiseConv1D", "DepthwiseConv2D"),
              (("depthwise_kernel", "depthwise"),), "activation"),
    LayerRule(_only(keras3, "DepthwiseConv1D", "DepthwiseConv2D"),
              (("kernel", "depthwise"),), "activation"),
    LayerRule(_SEPARABLE,
              (("depthwise_kernel", "depthwise"), ("pointwise_kernel", "channels_last")),
              "activation"),
    LayerRule(_CONV, (("kernel", "channels_last"),), "activation"),
    # Per-tensor: TFLite stores FULLY_CONNECTED weights transposed and its converter rejects
    # per-channel QAT ranges there ("tfl.transpose op has mismatched quantized axes").
    LayerRule(_both("Dense"), (("kernel", "per_tensor"),), "activation"),
    # ChannelBias (x + c, a residual Add whose branch depth pruning removed): like Add.
    LayerRule(_ACTIVATIONS + _MERGE + _POOL_AVG + tuple(CHANNEL_BIAS.values()) + _both(
        "BatchNormalization", "UpSampling1D", "UpSampling2D", "UpSampling3D")),
    # TFLite gives softmax its own fixed output range; quantizing it would only add error.
    LayerRule(_both("Softmax"), (), "none"),
    LayerRule(_PASS_THROUGH, (), "none"),
)

# Activations whose TFLite kernels have a fixed output range: never re-quantized.
FIXED_RANGE_ACTIVATIONS = frozenset({"softmax", "sigmoid", "tanh", "log_softmax"})


def rule_for(layer_or_type) -> Optional[LayerRule]:
    """Returns the rule of the most specific class in the layer's MRO, or None.

    Args:
      layer_or_type: a layer or a layer class.
    """
    cls = layer_or_type if isinstance(layer_or_type, type) else type(layer_or_type)
    return _rule_for_class(cls)


@functools.lru_cache(maxsize=None)
def _rule_for_class(cls: type) -> Optional[LayerRule]:
    # LAYER_RULES is an immutable tuple, so a class's answer never changes.
    for base in cls.__mro__:
        for rule in LAYER_RULES:
            if base in rule.types:
                return rule
    return None


def supported_types() -> List[str]:
    """Names of the layer classes :class:`PACTQuantizeConfig` can quantize."""
    return sorted({t.__name__ for rule in LAYER_RULES for t in rule.types})


@keras.utils.register_keras_serializable(package="tfcompress")
class PACTQuantizeConfig(ConfigValue, tfmot.quantization.keras.QuantizeConfig):
    """Per-channel symmetric weights and PACT-clipped activations for one layer.

    Works for every family in :data:`LAYER_RULES`: Conv1D/2D/3D, DepthwiseConv1D/2D,
    SeparableConv1D/2D, Conv*Transpose, Dense, and the activation-only layers (ReLU,
    Activation, Add, Concatenate, average pooling, BatchNormalization …).

    When tfmot calls each method: ``get_weights_and_quantizers``,
    ``get_activations_and_quantizers`` and ``get_output_quantizers`` when the
    ``QuantizeWrapper`` is built; ``set_quantize_weights`` and ``set_quantize_activations``
    before every forward pass, with the fake-quantized tensors; ``get_config`` when the
    model is saved.

    Args:
      weight_bits: bit width of kernels, 2 to 8.
      activation_bits: bit width of the layer's activation or output, 2 to 8.
      quantize_output: False leaves the result in float; used when the next layer is an
        activation that TFLite fuses into this one (Conv -> ReLU), so only the fused
        result is quantized.
      weight_range: how each kernel channel's range is chosen, ``"max"`` (default),
        ``"mse"``, ``"learned"``, ``"learned_midrise"`` or ``"auto"`` (see
        :class:`~tfcompress.quantization.ChannelWeightQuantizer`).
      **pact_options: forwarded to :class:`~tfcompress.quantization.PACTQuantizer`
        (``mode``, ``alpha_init``, ``beta_init``, ``decay``, ``calibration_steps``).

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> import tf_keras
      >>> from tfcompress.quantization import quantize_scope
      >>> model = tf_keras.Sequential([
      ...     tfmot.quantization.keras.quantize_annotate_layer(
      ...         tf_keras.layers.Dense(4, activation="relu", input_shape=(3,)),
      ...         PACTQuantizeConfig(weight_bits=4, activation_bits=4, mode="relu")),
      ...     tf_keras.layers.Dense(2)])
      >>> with quantize_scope():
      ...     qat = tfmot.quantization.keras.quantize_apply(model)
      >>> qat.output_shape
      (None, 2)
    """

    def __init__(self, weight_bits: int = 8, activation_bits: int = 8,
                 quantize_output: bool = True, weight_range: str = "max", **pact_options):
        self.weight_bits = validate_bits(weight_bits, "weight_bits")
        self.weight_range = check_weight_range(weight_range)
        self.activation_bits = validate_bits(activation_bits, "activation_bits")
        self.quantize_output = bool(quantize_output)
        # Written out, so a saved config keeps the default it was trained with.
        self.pact_options = {"range_learning": "auto", **pact_options}
        # Validates the options now rather than when the model is built.
        self._activation_quantizer()

    def _activation_quantizer(self) -> PACTQuantizer:
        valid = PACTQuantizer.option_names()
        unknown = sorted(set(self.pact_options) - set(valid))
        if unknown:
            raise TypeError(f"Unknown PACT option(s) {unknown}. Valid options: "
                            f"{', '.join(valid)}.")
        return PACTQuantizer(num_bits=self.activation_bits, **self.pact_options)

    def _rule(self, layer) -> LayerRule:
        rule = rule_for(layer)
        if rule is None:
            raise ValueError(
                f"PACTQuantizeConfig cannot quantize layer {layer.name!r} of type "
                f"{type(layer).__name__}. Supported types: {', '.join(supported_types())}. "
                "Leave this layer unannotated (it stays float) or give it your own QuantizeConfig."
            )
        return rule

    def _result_quantized(self, layer) -> bool:
        if not self.quantize_output:
            return False
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", type(activation).__name__)
        return name not in FIXED_RANGE_ACTIVATIONS or self._rule(layer).result == "activation"

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr),
                 ChannelWeightQuantizer(self.weight_bits, layout, self.weight_range))
                for attr, layout in self._rule(layer).weights]

    def get_activations_and_quantizers(self, layer):
        if self._rule(layer).result == "activation" and self._result_quantized(layer):
            return [(layer.activation, self._activation_quantizer())]
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        attrs = [attr for attr, _ in self._rule(layer).weights]
        if len(attrs) != len(quantize_weights):
            raise ValueError(
                f"Layer {layer.name!r} expects {len(attrs)} quantized weights ({attrs}), "
                f"got {len(quantize_weights)}."
            )
        for attr, weight in zip(attrs, quantize_weights):
            setattr(layer, attr, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        if self._rule(layer).result == "output" and self._result_quantized(layer):
            return [self._activation_quantizer()]
        return []

    def get_config(self) -> Dict[str, Any]:
        return {"weight_bits": self.weight_bits, "activation_bits": self.activation_bits,
                "quantize_output": self.quantize_output, "weight_range": self.weight_range,
                **self.pact_options}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PACTQuantizeConfig":
        return cls(**saved_pact_options(config))

    def with_output(self, quantize_output: bool) -> "PACTQuantizeConfig":
        """A copy of this config with ``quantize_output`` replaced."""
        return type(self)(**{**self.get_config(), "quantize_output": quantize_output})
