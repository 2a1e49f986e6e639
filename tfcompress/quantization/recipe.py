"""The low-bit recipe both Kerases share: which tensors keep 8 bits when fewer are asked for.

At 2-4 bits the usual practice (PACT, LSQ, PaddleSlim's and Brevitas' recipes) keeps the
model's edges at 8 bits: the input image, the weights of the first weighted layers (few
input channels, so little redundancy), and the weights and output of the last ones (the
logits). They hold a tiny share of the weights and of the compute, and quantizing them
below 8 bits costs most of the accuracy that low-bit models lose. :func:`layer_bits`
returns these per-layer bit widths for
:func:`~tfcompress.quantization.quantize_model`'s ``first_last_bits`` option; both
front-ends (tfmot configs for tf_keras, :class:`PACTQuantizeWrapper` for Keras 3) read it.

Example:
  >>> import keras
  >>> inputs = keras.Input((8, 8, 1))
  >>> x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
  >>> x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="body")(x))
  >>> outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
  >>> bits, input_bits = layer_bits(keras.Model(inputs, outputs), 4, 4, first_last_bits=8)
  >>> bits, input_bits
  ({'head': (8, 8), 'stem': (8, 4)}, 8)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set, Tuple

from tfcompress._keras import graph_nodes
from tfcompress.quantization.configs import rule_for
from tfcompress.quantization.pact import validate_bits

__all__ = ["edge_layers", "layer_bits"]


def _weighted(layer: Any) -> bool:
    rule = rule_for(layer)
    return rule is not None and bool(rule.weights)


def edge_layers(model: Any) -> Tuple[Set[str], Set[str]]:
    """``(first, last)``: names of the weighted layers (Conv, Dense, …) that a model input
    reaches, or that reach a model output, through weightless layers only."""
    nodes = graph_nodes(model)
    order = [node for depth in sorted(nodes, reverse=True) for node in nodes[depth]]
    fresh = {id(t) for node in order if node.is_input for t in node.outputs}
    first: Set[str] = set()
    for node in order:  # inputs to outputs
        if node.is_input or not any(id(t) in fresh for t in node.inputs):
            continue
        if _weighted(node.layer):
            first.add(node.layer.name)
        else:
            fresh.update(id(t) for t in node.outputs)
    ends = {id(t) for node in nodes.get(0, []) for t in node.outputs}
    ends |= {id(t) for t in model.outputs}
    last: Set[str] = set()
    for node in reversed(order):  # outputs to inputs
        if node.is_input or not any(id(t) in ends for t in node.outputs):
            continue
        if _weighted(node.layer):
            last.add(node.layer.name)
        else:
            ends.update(id(t) for t in node.inputs)
    return first, last


def layer_bits(model: Any, weight_bits: int, activation_bits: int,
               first_last_bits: Optional[int] = 8) -> Tuple[Dict[str, Tuple[int, int]], int]:
    """Per-layer ``(weight bits, activation bits)`` that differ from the model-wide ones,
    and the bit width of the model inputs.

    With ``first_last_bits=b``: the model inputs and the weights of the first and last
    weighted layers (:func:`edge_layers`) get ``max(b, requested)`` bits, and so do the
    outputs of the last ones. ``None`` changes nothing.

    Raises:
      ValueError: for ``first_last_bits`` outside 2-8.
    """
    if first_last_bits is None:
        return {}, activation_bits
    edge = validate_bits(first_last_bits, "first_last_bits")
    first, last = edge_layers(model)
    bits = {}
    for name in sorted(first | last):
        wanted = (max(edge, weight_bits),
                  max(edge, activation_bits) if name in last else activation_bits)
        if wanted != (weight_bits, activation_bits):
            bits[name] = wanted
    return bits, max(edge, activation_bits)
