"""The PACT quantize scheme for tfmot's ``quantize_apply``: a registry and a layout transform.

``quantize_apply(annotated_model, scheme=PACTQuantizeScheme(...))`` asks the scheme two
things:

* its **layout transform**, run once on the unwrapped model: ours (a) gives every annotated
  layer without an explicit config the PACT config of its family, (b) stops quantizing the
  output of a layer whose only consumer is an activation TFLite fuses into it (Conv -> ReLU,
  Add -> ReLU), so PACT clips the fused result, and (c) quantizes each model input with a
  PACT ``QuantizeLayer``;
* its **registry**, for any layer the transform left without a config.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_layer,
    quantize_layout_transform,
    quantize_registry,
    quantize_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras import utils as tfmot_utils
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
    transforms,
)

from tfcompress._keras import keras
from tfcompress.quantization.configs import PACTQuantizeConfig, rule_for
from tfcompress.quantization.pact import PACTQuantizer

L = keras.layers

# Activations the TFLite converter fuses into the op that produces their input.
_FUSED_ACTIVATIONS = frozenset({"relu", "relu6", "linear"})


def fuses_into_producer(layer) -> bool:
    """True if TFLite fuses ``layer`` (an activation layer) into the op before it."""
    if type(layer) is L.ReLU:
        return not layer.negative_slope and not layer.threshold and layer.max_value in (None, 6.0)
    if type(layer) is L.Activation:
        return getattr(layer.activation, "__name__", None) in _FUSED_ACTIVATIONS
    return False


class PACTQuantizeRegistry(quantize_registry.QuantizeRegistry):
    """Gives every layer family of :data:`~tfcompress.quantization.configs.LAYER_RULES` a
    :class:`PACTQuantizeConfig` with the scheme's bits and PACT options."""

    def __init__(self, weight_bits: int = 8, activation_bits: int = 8, **pact_options):
        self._config = PACTQuantizeConfig(weight_bits, activation_bits, **pact_options)

    def supports(self, layer) -> bool:
        return rule_for(layer) is not None

    def get_quantize_config(self, layer) -> PACTQuantizeConfig:
        if not self.supports(layer):
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no PACT rule.")
        return PACTQuantizeConfig.from_config(self._config.get_config())


class _InputQuantize(transforms.Transform):
    """``InputLayer`` -> ``InputLayer -> QuantizeLayer(PACTQuantizer)``."""

    def __init__(self, quantizer: PACTQuantizer):
        self._quantizer = quantizer

    def pattern(self):
        return transforms.LayerPattern("InputLayer")

    def replacement(self, match_layer):
        layer = quantize_layer.QuantizeLayer(PACTQuantizer.from_config(self._quantizer.get_config()))
        layer_config = tfmot_utils.serialize_layer(layer, use_legacy_format=True)
        layer_config["name"] = layer.name
        return transforms.LayerNode(layer_config, input_layers=[match_layer])

    def custom_objects(self):
        return {"QuantizeLayer": quantize_layer.QuantizeLayer, "PACTQuantizer": PACTQuantizer}


class PACTLayoutTransform(quantize_layout_transform.QuantizeLayoutTransform):
    """Assigns configs, fuses activations and quantizes inputs (see the module docstring)."""

    def __init__(self, registry: PACTQuantizeRegistry, input_quantizer: PACTQuantizer):
        self._registry = registry
        self._input_quantizer = input_quantizer

    def apply(self, model, layer_quantize_map: Dict[str, Dict[str, Any]]):
        for layer in model.layers:  # (a Sequential model does not list its InputLayer)
            entry = layer_quantize_map.get(layer.name)
            if entry is not None and entry.get("quantize_config") is None \
                    and self._registry.supports(layer) and not isinstance(layer, L.InputLayer):
                entry["quantize_config"] = self._registry.get_quantize_config(layer)
        for layer in model.layers:
            config = layer_quantize_map.get(layer.name, {}).get("quantize_config")
            if isinstance(config, PACTQuantizeConfig) and self._feeds_fused_activation(
                    model, layer, layer_quantize_map):
                layer_quantize_map[layer.name]["quantize_config"] = config.with_output(False)
        return model_transformer.ModelTransformer(
            model, [_InputQuantize(self._input_quantizer)], set(layer_quantize_map),
            layer_quantize_map).transform()

    @staticmethod
    def _feeds_fused_activation(model, layer, layer_quantize_map) -> bool:
        if len(layer._inbound_nodes) != 1 or len(layer._outbound_nodes) != 1:
            return False
        if any(layer.output is out for out in model.outputs):
            return False
        consumer = layer._outbound_nodes[0].outbound_layer
        return fuses_into_producer(consumer) and consumer.name in layer_quantize_map


class PACTQuantizeScheme(quantize_scheme.QuantizeScheme):
    """The scheme ``quantize_apply`` uses for PACT quantization-aware training.

    Args:
      weight_bits: bit width of kernels (per-channel symmetric), 2 to 8.
      activation_bits: bit width of activations and model inputs, 2 to 8.
      **pact_options: forwarded to :class:`PACTQuantizer`.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> from tfcompress.quantization import quantize_scope
      >>> model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,)),
      ...                              tf_keras.layers.ReLU()])
      >>> annotated = tfmot.quantization.keras.quantize_annotate_model(model)
      >>> with quantize_scope():
      ...     qat = tfmot.quantization.keras.quantize_apply(
      ...         annotated, scheme=PACTQuantizeScheme(4, 4, mode="relu"))
      >>> sorted(w.name.split("/")[-1] for w in qat.trainable_weights if "pact" in w.name)
      ['output_pact_alpha:0', 'quantize_layer_pact_alpha:0']
    """

    def __init__(self, weight_bits: int = 8, activation_bits: int = 8,
                 input_quantizer: Optional[PACTQuantizer] = None, **pact_options):
        self._registry = PACTQuantizeRegistry(weight_bits, activation_bits, **pact_options)
        self._input_quantizer = input_quantizer or PACTQuantizer(activation_bits, **pact_options)

    def get_layout_transformer(self) -> PACTLayoutTransform:
        return PACTLayoutTransform(self._registry, self._input_quantizer)

    def get_quantize_registry(self) -> PACTQuantizeRegistry:
        return self._registry
