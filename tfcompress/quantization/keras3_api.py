"""``quantize_model`` and ``clip_ranges`` for Keras 3 models (TensorFlow backend).

:func:`tfcompress.quantization.quantize_model` sends Keras 3 models here. The result mirrors
what tfmot's ``quantize_apply`` with :class:`~tfcompress.quantization.PACTQuantizeScheme`
makes of a tf_keras model, layer for layer:

* each model input is followed by a :class:`PACTActivation` named ``quantize_layer``
  (``quantize_layer_1`` … for more inputs), as tfmot's ``QuantizeLayer``;
* each layer with a quantization rule (:data:`~tfcompress.quantization.LAYER_RULES`) that
  changes values is wrapped in a :class:`PACTQuantizeWrapper` named ``quant_{name}``:
  per-channel kernels, PACT on the result;
* a layer whose only reader TFLite fuses into it (Conv -> ReLU, Add -> ReLU,
  Conv2D -> BatchNorm) leaves its result float, so PACT clips the fused result once;
* pass-through layers (pooling by max, Flatten, Reshape, Dropout …), excluded layers and
  (with ``skip_unsupported``) unsupported ones are copied unchanged.

Example:
  >>> import keras
  >>> model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, name="fc"),
  ...                           keras.layers.ReLU(name="act")])
  >>> qat = quantize_keras3_model(model, 4, 4, exclude=[], options={"alpha_init": 2.0})
  >>> [layer.name for layer in qat.layers]
  ['x', 'quantize_layer', 'quant_fc', 'quant_act']
  >>> sorted(clip_ranges_keras3(qat))
  ['act', 'quantize_layer']
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Iterable, Optional, Set, Tuple

from tfcompress._keras import Node, graph_nodes, keras3, require_tensorflow_backend
from tfcompress.quantization.configs import FIXED_RANGE_ACTIVATIONS, rule_for
from tfcompress.quantization.keras3_graph import Cloner, clone_layer, consumers_of, rebuild
from tfcompress.quantization.keras3_layers import PACTActivation, PACTQuantizeWrapper, pact_range
from tfcompress.quantization.prepare import prepare_for_qat
from tfcompress.quantization.recipe import layer_bits, tracked_outputs
from tfcompress.quantization.scheme import fuses

__all__ = ["quantize_keras3_model", "clip_ranges_keras3", "CUSTOM_OBJECTS"]

CUSTOM_OBJECTS = {"PACTActivation": PACTActivation, "PACTQuantizeWrapper": PACTQuantizeWrapper}
"""The Keras 3 classes :func:`~tfcompress.quantization.quantize_scope` adds (they are also
registered as ``tfcompress>...``, so ``.keras`` files load without it)."""


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", type(activation).__name__)


def _fused_producers(model, keep_float: Set[str]) -> Set[str]:
    """Names of layers whose only reader TFLite fuses into them (an activation, or a
    BatchNorm after a Conv2D) and is itself quantized: their own result stays float, as in
    the tfmot path."""
    readers = consumers_of(model)
    calls = collections.Counter(id(node.layer) for node in _all_nodes(model))
    fused = set()
    for node in _all_nodes(model):
        if node.is_input or calls[id(node.layer)] != 1 or len(node.outputs) != 1:
            continue
        out = readers[id(node.outputs[0])]
        if len(out) != 1 or out[0] is None or out[0].layer.name in keep_float:
            continue
        if fuses(node.layer, out[0].layer, len(node.outputs[0].shape)):
            fused.add(node.layer.name)
    return fused


def _all_nodes(model) -> Iterable[Node]:
    for nodes in graph_nodes(model).values():
        yield from nodes


class _Quantizer:
    """The ``call`` of :func:`rebuild` that wraps each quantized layer."""

    def __init__(self, weight_bits: int, activation_bits: int, keep_float: Set[str],
                 fused: Set[str], options: Dict[str, Any],
                 bits: Tuple[Dict[str, Tuple[int, int]], int], weight_range: str,
                 tracked: Set[str]):
        self.weight_bits, self.activation_bits = weight_bits, activation_bits
        self.weight_range, self.tracked = weight_range, tracked
        self.keep_float, self.fused, self.options = keep_float, fused, options
        self.bits, self.input_bits = bits
        self.clone = Cloner()
        self.inputs = 0
        self._wrappers: Dict[int, PACTQuantizeWrapper] = {}

    def on_input(self, tensor, layer):
        name = "quantize_layer" + (f"_{self.inputs}" if self.inputs else "")
        self.inputs += 1
        return PACTActivation(self.input_bits, name=name, **self.options)(tensor)

    def _quantized(self, layer) -> bool:
        rule = rule_for(layer)
        return (isinstance(layer, keras3.layers.Layer) and rule is not None
                and layer.name not in self.keep_float and (rule.weights or rule.result != "none"))

    def _wrap(self, layer) -> PACTQuantizeWrapper:
        rule = rule_for(layer)
        fixed = _activation_name(layer) in FIXED_RANGE_ACTIVATIONS
        post = None
        inner = clone_layer(layer)
        if fixed and rule.result == "activation":  # quantize before softmax/sigmoid/tanh
            post = keras3.activations.serialize(layer.activation)
            inner = clone_layer(layer, activation="linear")
        quantize_output = layer.name not in self.fused and not (fixed and rule.result == "output")
        weight_bits, activation_bits = self.bits.get(
            layer.name, (self.weight_bits, self.activation_bits))
        options = dict(self.options, track_range=True) if layer.name in self.tracked \
            else self.options
        return PACTQuantizeWrapper(inner, weight_bits, activation_bits,
                                   quantize_output=quantize_output, post_activation=post,
                                   weight_range=self.weight_range,
                                   name=f"quant_{layer.name}", **options)

    def __call__(self, node: Node, args: tuple, kwargs: dict):
        layer = node.layer
        if not self._quantized(layer):
            return self.clone(node, args, kwargs)
        wrapper = self._wrappers.get(id(layer))
        first = wrapper is None
        if first:
            wrapper = self._wrappers[id(layer)] = self._wrap(layer)
        outputs = wrapper(*args, **kwargs)
        if first and layer.weights:
            wrapper.layer.set_weights(layer.get_weights())
        return outputs


def _check_operations(model, skip_unsupported: bool) -> None:
    """Refuses ``keras.ops`` calls in the graph (``x + y`` on KerasTensors), which have no
    layer to quantize, unless ``skip_unsupported`` (tf_keras' ``TFOpLambda`` layers are
    refused the same way)."""
    operations = sorted({node.layer.name for node in _all_nodes(model)
                         if not isinstance(node.layer, keras3.layers.Layer)})
    if operations and not skip_unsupported:
        raise ValueError(
            f"PACT cannot quantize these keras.ops calls: {', '.join(operations)}. Use the "
            "layer equivalents (keras.layers.Add() instead of `x + y` …), or pass "
            "`skip_unsupported=True` to run them in float."
        )


def quantize_keras3_model(model, activation_bits: int, weight_bits: int, exclude: Iterable[str],
                          options: Dict[str, Any], skip_unsupported: bool = False, *,
                          first_last_bits: Optional[int] = 8,
                          low_bit_activations: str = "layer_inputs", weight_range: str = "auto",
                          output_range: str = "pact", batch_norm: str = "keep"):
    """The Keras 3 half of :func:`tfcompress.quantization.quantize_model` (arguments already
    validated there).

    Returns:
      A new Keras 3 Functional model of :class:`PACTActivation`/:class:`PACTQuantizeWrapper`
      layers and copies of the float ones.
    """
    require_tensorflow_backend("PACT quantization-aware training")
    _check_operations(model, skip_unsupported)
    prepared = prepare_for_qat(model, batch_norm)
    keep_float = set(exclude) | {layer.name for layer in prepared.layers
                                 if rule_for(layer) is None}
    quantizer = _Quantizer(weight_bits, activation_bits, keep_float,
                           _fused_producers(prepared, keep_float), dict(options),
                           layer_bits(prepared, weight_bits, activation_bits, first_last_bits,
                                      low_bit_activations),
                           weight_range, tracked_outputs(prepared, output_range))
    return rebuild(prepared, quantizer, quantizer.on_input)


def clip_ranges_keras3(model) -> Dict[str, Tuple[float, float]]:
    """``{layer name: (low, high)}`` of a Keras 3 QAT model (nested models included)."""
    ranges: Dict[str, Tuple[float, float]] = {}
    for layer in model.layers:
        if isinstance(layer, keras3.Model):
            ranges.update(clip_ranges_keras3(layer))
            continue
        found = pact_range(layer)
        if found is not None:
            ranges[found[0]] = found[1]
    return ranges
