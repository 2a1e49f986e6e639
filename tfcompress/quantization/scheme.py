"""The PACT quantize scheme for tfmot's ``quantize_apply``: a registry and a layout transform.

``quantize_apply(annotated_model, scheme=PACTQuantizeScheme(...))`` asks the scheme two
things:

* its **layout transform**, run once on the unwrapped model: ours (a) gives every annotated
  layer without an explicit config the PACT config of its family, (b) stops quantizing the
  output of a layer whose only consumer TFLite fuses into it (Conv -> ReLU, Add -> ReLU,
  Conv2D -> BatchNorm), so PACT clips the fused result, and (c) quantizes each model input
  with a PACT ``QuantizeLayer``;
* its **registry**, for any layer the transform left without a config.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import tensorflow_model_optimization as tfmot

from tfcompress._internals import inbound_nodes, outbound_layers, tfmot_private
from tfcompress._keras import keras, layer_classes
from tfcompress.quantization.configs import PACTQuantizeConfig, rule_for
from tfcompress.quantization.folding import CONVERTER_FOLDS, folds_into
from tfcompress.quantization.pact import PACTQuantizer

L = keras.layers
_Q = tfmot.quantization.keras
_transforms = _Q.graph_transformations.transforms

_RELUS = tuple(layer_classes("ReLU"))
_ACTIVATION_LAYERS = tuple(layer_classes("Activation"))
# Activations the TFLite converter fuses into the op that produces their input.
_FUSED_ACTIVATIONS = frozenset({"relu", "relu6", "linear"})


def fuses_into_producer(layer) -> bool:
    """True if TFLite fuses ``layer`` (an activation layer) into the op before it.

    Subclasses of ``ReLU``/``Activation`` count too (``isinstance``), judged by the same
    attributes; tf_keras and Keras 3 layers alike.

    Example:
      >>> import tf_keras
      >>> fuses_into_producer(tf_keras.layers.ReLU(max_value=6.0))
      True
      >>> fuses_into_producer(tf_keras.layers.Activation("sigmoid"))
      False
    """
    if isinstance(layer, _RELUS):
        return not layer.negative_slope and not layer.threshold and layer.max_value in (None, 6.0)
    if isinstance(layer, _ACTIVATION_LAYERS):
        return getattr(layer.activation, "__name__", None) in _FUSED_ACTIVATIONS
    return False


def fuses(producer, reader, rank: int) -> bool:
    """True if TFLite fuses ``reader`` (the only reader of ``producer``'s rank-``rank``
    output) into ``producer``: an activation (:func:`fuses_into_producer`), or a BatchNorm
    the converter folds into a Conv2D/DepthwiseConv2D (``batch_norm="keep"``). The
    producer's own result is then never quantized; the fused result is."""
    return fuses_into_producer(reader) or folds_into(producer, reader, rank, CONVERTER_FOLDS)


class PACTQuantizeRegistry(_Q.QuantizeRegistry):
    """Gives every layer family of :data:`~tfcompress.quantization.configs.LAYER_RULES` a
    :class:`PACTQuantizeConfig` with the scheme's bits and PACT options.

    Which family a layer belongs to is :func:`~tfcompress.quantization.configs.rule_for`'s
    MRO lookup, cached per class; each call returns a fresh config (tfmot stores one per
    wrapper).
    """

    def __init__(self, weight_bits: int = 8, activation_bits: int = 8, **pact_options):
        self._config = PACTQuantizeConfig(weight_bits, activation_bits, **pact_options)

    def supports(self, layer) -> bool:
        return rule_for(layer) is not None

    def get_quantize_config(self, layer) -> PACTQuantizeConfig:
        if not self.supports(layer):
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no PACT rule.")
        return PACTQuantizeConfig.from_config(self._config.get_config())


class _InputQuantize(_transforms.Transform):
    """``InputLayer`` -> ``InputLayer -> QuantizeLayer(PACTQuantizer)``."""

    def __init__(self, quantizer: PACTQuantizer):
        self._quantizer = quantizer

    def pattern(self):
        return _transforms.LayerPattern("InputLayer")

    def replacement(self, match_layer):
        quantize_layer_class = tfmot_private("quantize_layer").QuantizeLayer
        layer = quantize_layer_class(PACTQuantizer.from_config(self._quantizer.get_config()))
        layer_config = tfmot_private("utils").serialize_layer(layer, use_legacy_format=True)
        layer_config["name"] = layer.name
        return _transforms.LayerNode(layer_config, input_layers=[match_layer])

    def custom_objects(self):
        return {"QuantizeLayer": tfmot_private("quantize_layer").QuantizeLayer,
                "PACTQuantizer": PACTQuantizer}


class PACTLayoutTransform(_Q.QuantizeLayoutTransform):
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
        return _Q.graph_transformations.model_transformer.ModelTransformer(
            model, [_InputQuantize(self._input_quantizer)], set(layer_quantize_map),
            layer_quantize_map).transform()

    @staticmethod
    def _feeds_fused_activation(model, layer, layer_quantize_map) -> bool:
        consumers = outbound_layers(layer)
        if len(inbound_nodes(layer)) != 1 or len(consumers) != 1:
            return False
        if any(layer.output is out for out in model.outputs):
            return False
        consumer = consumers[0]
        return consumer.name in layer_quantize_map and fuses(layer, consumer,
                                                             len(layer.output_shape))


class PACTQuantizeScheme(_Q.QuantizeScheme):
    """The scheme ``quantize_apply`` uses for PACT quantization-aware training.

    Args:
      weight_bits: bit width of kernels (per-channel symmetric), 2 to 8.
      activation_bits: bit width of activations and model inputs, 2 to 8.
      **pact_options: forwarded to :class:`PACTQuantizer`.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> import tf_keras
      >>> from tfcompress.quantization import quantize_scope
      >>> model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,)),
      ...                              tf_keras.layers.ReLU()])
      >>> annotated = tfmot.quantization.keras.quantize_annotate_model(model)
      >>> with quantize_scope():
      ...     qat = tfmot.quantization.keras.quantize_apply(
      ...         annotated, scheme=PACTQuantizeScheme(4, 4, mode="relu"))
      >>> # Dense -> ReLU is fused: one range for the ReLU's output, one for the model input.
      >>> sum("pact_alpha" in w.name for w in qat.trainable_weights)
      2
    """

    def __init__(self, weight_bits: int = 8, activation_bits: int = 8,
                 input_quantizer: Optional[PACTQuantizer] = None, **pact_options):
        self._registry = PACTQuantizeRegistry(weight_bits, activation_bits, **pact_options)
        self._input_quantizer = input_quantizer or PACTQuantizer(activation_bits, **pact_options)

    def get_layout_transformer(self) -> PACTLayoutTransform:
        return PACTLayoutTransform(self._registry, self._input_quantizer)

    def get_quantize_registry(self) -> PACTQuantizeRegistry:
        return self._registry
