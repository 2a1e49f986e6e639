"""The recipe both Kerases share: which tensors keep 8 bits when fewer are asked for, and
which ranges track their tensors instead of clipping them.

At 2-4 bits the usual practice (PACT, LSQ, PaddleSlim's and Brevitas' recipes) keeps the
model's edges at 8 bits: the input image, the weights of the first weighted layers (few
input channels, so little redundancy), and the inputs, weights and output of the last ones
(the features the classifier reads, and the logits). They hold a tiny share of the weights
and of the compute, and quantizing them below 8 bits costs a large share of the accuracy
that low-bit models lose (the benchmark's ablation row: ``benchmarks/qat.py``).
Inside the model, low activation bits go only to the tensors that weighted layers read
(:func:`layer_inputs`): what a low-bit kernel would consume, and the tensors PaddleSlim's
PACT quantizes (the inputs of conv and matmul ops). Residual-add operands, concatenation
results that no layer reads and the logits keep 8 bits: TFLite runs every tensor in int8
whatever its training width, so clipping them to 2-4 bits only loses accuracy (the
``low_bit_activations`` ablation rows of ``benchmarks/qat.py``).

:func:`layer_bits` returns these per-layer bit widths for
:func:`~tfcompress.quantization.quantize_model`'s ``first_last_bits`` and
``low_bit_activations`` options; both front-ends (tfmot configs for tf_keras,
:class:`PACTQuantizeWrapper` for Keras 3) read it.

Example:
  >>> import keras
  >>> inputs = keras.Input((8, 8, 1))
  >>> x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
  >>> x = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, name="body")(x))
  >>> outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
  >>> bits, input_bits = layer_bits(keras.Model(inputs, outputs), 4, 4, first_last_bits=8)
  >>> bits["stem"], bits["relu"], bits["head"], input_bits  # "relu" feeds the head: 8 bits
  ((8, 4), (4, 8), (8, 8), 8)
  >>> sorted(layer_inputs(keras.Model(inputs, outputs)))  # what weighted layers read
  ['relu', 'stem']
  >>> tracked_outputs(keras.Model(inputs, outputs), "track")  # logits then never clipped
  {'head'}
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from tfcompress._keras import graph_nodes
from tfcompress._validate import check_choice
from tfcompress.quantization.configs import rule_for
from tfcompress.quantization.pact import validate_bits
from tfcompress.quantization.pact_math import resolve_range_learning

__all__ = ["LOW_BIT_ACTIVATIONS", "OUTPUT_RANGES", "edge_layers", "layer_bits", "layer_inputs",
           "model_pact_options", "tracked_outputs"]

LOW_BIT_ACTIVATIONS = ("layer_inputs", "all")
"""Which activations take a ``quantize_model`` ``activation_bits`` below 8: the tensors
weighted layers read (what a low-bit kernel consumes, and the tensors PaddleSlim's PACT
quantizes), the rest keeping 8 bits, or every quantized tensor."""

OUTPUT_RANGES = ("track", "pact")
"""How the model's outputs are ranged: ``"track"`` (running min/max, never clipped in
training) or ``"pact"`` (a learned clip like every other tensor)."""


def _weighted(layer: Any) -> bool:
    rule = rule_for(layer)
    return rule is not None and bool(rule.weights)


def _walk(order, start: Set[int], stop: Callable[[Any], bool], forward: bool) -> Set[str]:
    """Names of the layers where a walk from the tensors ``start`` stops, following the
    graph forward (``order`` from inputs to outputs) or backward, through the layers for
    which ``stop`` is False."""
    reached, found = set(start), set()
    for node in (order if forward else reversed(order)):
        here, there = (node.inputs, node.outputs) if forward else (node.outputs, node.inputs)
        if node.is_input or not any(id(t) in reached for t in here):
            continue
        if stop(node.layer):
            found.add(node.layer.name)
        else:
            reached.update(id(t) for t in there)
    return found


def _graph(model: Any) -> Tuple[List[Any], Set[int]]:
    """The model's nodes from inputs to outputs, and the ids of its output tensors."""
    nodes = graph_nodes(model)
    order = [node for depth in sorted(nodes, reverse=True) for node in nodes[depth]]
    outputs = {id(t) for node in nodes.get(0, []) for t in node.outputs}
    return order, outputs | {id(t) for t in model.outputs}


def _quantizes_result(layer: Any) -> bool:
    rule = rule_for(layer)
    return rule is not None and rule.result != "none"


def edge_layers(model: Any) -> Tuple[Set[str], Set[str], Set[str]]:
    """``(first, last, feeding)``: names of the weighted layers (Conv, Dense, …) that a model
    input reaches, or that reach a model output, through weightless layers only; and of
    the layers whose quantized results are the inputs of the last ones (through
    pass-through layers such as ``Flatten``)."""
    order, outputs = _graph(model)
    inputs = {id(t) for node in order if node.is_input for t in node.outputs}
    first = _walk(order, inputs, _weighted, forward=True)
    last = _walk(order, outputs, _weighted, forward=False)
    into_last = {id(t) for node in order if node.layer.name in last for t in node.inputs}
    feeding = _walk(order, into_last, _quantizes_result, forward=False)
    return first, last, feeding


def tracked_outputs(model: Any, output_range: str = "pact") -> Set[str]:
    """Names of the layers whose quantized results are the model's outputs (through
    pass-through layers), whose ranges track their values instead of clipping them
    (``output_range="track"``): a clipped logit gets no gradient, and logits clipped at
    the same ``alpha`` tie, which costs accuracy even at 8 bits. ``"pact"``: none.

    Raises:
      ValueError: for an unknown ``output_range``.
    """
    if check_choice(output_range, "output_range", OUTPUT_RANGES) == "pact":
        return set()
    order, outputs = _graph(model)
    return _walk(order, outputs, _quantizes_result, forward=False)


def layer_inputs(model: Any) -> Set[str]:
    """Names of the layers whose quantized results weighted layers (Conv, Dense …) read,
    directly or through pass-through layers such as ``Flatten`` or ``MaxPooling2D``."""
    return _layer_inputs(_graph(model)[0])


def _layer_inputs(order) -> Set[str]:
    read = {id(t) for node in order if not node.is_input and _weighted(node.layer)
            for t in node.inputs}
    return _walk(order, read, _quantizes_result, forward=False)


def _unread_results(model: Any) -> Set[str]:
    """Layers with a quantized result that no weighted layer reads (:func:`layer_inputs`)."""
    order, _ = _graph(model)
    results = {node.layer.name for node in order
               if not node.is_input and _quantizes_result(node.layer)}
    return results - _layer_inputs(order)


def layer_bits(model: Any, weight_bits: int, activation_bits: int,
               first_last_bits: Optional[int] = 8, low_bit_activations: str = "layer_inputs"
               ) -> Tuple[Dict[str, Tuple[int, int]], int]:
    """Per-layer ``(weight bits, activation bits)`` that differ from the model-wide ones,
    and the bit width of the model inputs.

    With ``first_last_bits=b`` the first and last weighted layers (:func:`edge_layers`)
    compute on ``max(b, requested)`` bits: the model inputs, the weights of the first and
    last layers, the inputs of the last ones (the results of the layers feeding them) and
    their outputs. ``None`` changes nothing.

    With ``low_bit_activations="layer_inputs"`` only the tensors that weighted layers read
    (:func:`layer_inputs`) take ``activation_bits``; the others (residual-add operands,
    logits …) keep 8 bits. ``"all"``: every quantized tensor takes ``activation_bits``.

    Raises:
      ValueError: for ``first_last_bits`` outside 2-8 or an unknown ``low_bit_activations``.
    """
    check_choice(low_bit_activations, "low_bit_activations", LOW_BIT_ACTIVATIONS)
    edge = 0 if first_last_bits is None else validate_bits(first_last_bits, "first_last_bits")
    first, last, feeding = edge_layers(model) if edge else (set(), set(), set())
    wide_weights, wide_results = first | last, last | feeding
    eight = _unread_results(model) if (
        activation_bits < 8 and low_bit_activations == "layer_inputs") else set()
    bits = {}
    for name in sorted(wide_weights | wide_results | eight):
        wanted = (max(edge, weight_bits) if name in wide_weights else weight_bits,
                  8 if name in eight else
                  max(edge, activation_bits) if name in wide_results else activation_bits)
        if wanted != (weight_bits, activation_bits):
            bits[name] = wanted
    return bits, max(edge, activation_bits)


def model_pact_options(pact_options: Dict[str, Any], activation_bits: int) -> Dict[str, Any]:
    """``pact_options`` with ``range_learning="auto"`` (or unset) resolved once for the
    whole model by its ``activation_bits``: in a 2-bit model every range learns LSQ's way,
    those of the tensors that keep 8 bits too, since the 2-bit layers around them change
    their distributions the most (``benchmarks/qat.py``'s 2/2 ``range_learning`` row).

    Example:
      >>> model_pact_options({"mode": "relu"}, 2), model_pact_options({}, 4)
      ({'mode': 'relu', 'range_learning': 'lsq'}, {'range_learning': 'pact'})
    """
    learning = pact_options.get("range_learning", "auto")
    return {**pact_options, "range_learning": resolve_range_learning(learning, activation_bits)}
