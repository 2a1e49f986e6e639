"""Rewriting Keras 3 Functional graphs: BatchNorm folding, separable-conv splitting, and the
generic rebuild both use (and that :mod:`tfcompress.quantization.keras3_api` uses to wrap
layers for quantization-aware training).

A Keras 3 model is rebuilt by replaying its graph (:func:`tfcompress._keras.graph_nodes`,
inputs first) on new ``keras.Input`` tensors: each call is handed to a function that may
call a clone of the layer, a replacement, or nothing at all. Every layer of the result is a
new object (weights copied), so the original model is never changed.

Example:
  >>> import keras
  >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
  ...                           keras.layers.BatchNormalization()])
  >>> [type(layer).__name__ for layer in fold_batch_norms(model).layers]
  ['InputLayer', 'Conv2D']
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Optional

from tfcompress._internals import history_layer, unsafe_deserialization
from tfcompress._keras import Node, graph_nodes, is_sequential, keras3, require_graph_model
from tfcompress.quantization.folding import FOLDABLE, fold_weights, folds_into

__all__ = ["rebuild", "clone_layer", "Cloner", "consumers_of", "fold_batch_norms",
           "split_separable_convs"]

Call = Callable[[Node, tuple, dict], Any]


def clone_layer(layer, **overrides):
    """A new, unbuilt layer from ``layer``'s config, with ``overrides`` applied."""
    config = {**layer.get_config(), **overrides}
    with unsafe_deserialization(keras3):  # the caller's own live layer, not a file
        return type(layer).from_config(config)


class Cloner:
    """Calls a clone of each layer (one clone per layer, so shared layers stay shared) and
    copies the original's weights into it; ``keras.ops`` operations are called as they are."""

    def __init__(self):
        self._clones: Dict[int, Any] = {}

    def __call__(self, node: Node, args: tuple, kwargs: dict, **overrides) -> Any:
        layer = node.layer
        if not isinstance(layer, keras3.layers.Layer):
            return layer(*args, **kwargs)
        clone = self._clones.get(id(layer))
        first = clone is None
        if first:
            clone = self._clones[id(layer)] = clone_layer(layer, **overrides)
        outputs = clone(*args, **kwargs)
        if first and layer.weights:
            clone.set_weights(layer.get_weights())
        return outputs


def _structure(model, attribute: str):
    return getattr(model, attribute + "s") if is_sequential(model) else getattr(model, attribute)


def rebuild(model, call: Optional[Call] = None,
            on_input: Optional[Callable[[Any, Any], Any]] = None):
    """Replays a Keras 3 Functional/Sequential ``model`` on new inputs.

    Args:
      model: a built Keras 3 graph model.
      call: ``call(node, args, kwargs)`` returns the new outputs of one call, given its
        arguments with the new tensors in place; default: a :class:`Cloner`.
      on_input: ``on_input(tensor, input_layer)`` returns what the model input's consumers
        read instead of ``tensor`` (e.g. a quantized copy); default: the input itself.

    Returns:
      A new Keras 3 Functional model with the name of ``model``.
    """
    call = call or Cloner()
    new: Dict[int, Any] = {}
    inputs: Dict[int, Any] = {}
    nodes = graph_nodes(model)
    for depth in sorted(nodes, reverse=True):
        for node in nodes[depth]:
            if node.is_input:
                old = node.outputs[0]
                tensor = keras3.Input(batch_shape=tuple(old.shape), dtype=old.dtype,
                                      name=node.layer.name)
                inputs[id(old)] = tensor
                new[id(old)] = on_input(tensor, node.layer) if on_input else tensor
                continue
            swap = lambda t: new[id(t)] if isinstance(t, keras3.KerasTensor) else t  # noqa
            outputs = call(node, keras3.tree.map_structure(swap, tuple(node.args)),
                           keras3.tree.map_structure(swap, dict(node.kwargs)))
            for old, tensor in zip(node.outputs, keras3.tree.flatten(outputs)):
                new[id(old)] = tensor
    new_inputs = keras3.tree.map_structure(lambda t: inputs[id(t)], _structure(model, "input"))
    new_outputs = keras3.tree.map_structure(lambda t: new[id(t)], _structure(model, "output"))
    return keras3.Model(new_inputs, new_outputs, name=model.name)


def consumers_of(model) -> Dict[int, List[Node]]:
    """``{id(tensor): [nodes that read it]}``; model outputs count as a ``None`` reader."""
    readers: Dict[int, List[Node]] = collections.defaultdict(list)
    for nodes in graph_nodes(model).values():
        for node in nodes:
            for tensor in node.inputs:
                readers[id(tensor)].append(node)
    for tensor in model.outputs:
        readers[id(tensor)].append(None)
    return readers


def _calls(model) -> collections.Counter:
    return collections.Counter(id(node.layer) for nodes in graph_nodes(model).values()
                               for node in nodes)


def _fold_pairs(model, producers) -> Dict[int, Any]:
    """``{id(producer): bn}`` for every BatchNorm that folds into the layer before it (the
    same conditions as the tf_keras pass)."""
    calls, readers, pairs = _calls(model), consumers_of(model), {}
    for nodes in graph_nodes(model).values():
        for node in nodes:
            bn = node.layer
            if calls[id(bn)] != 1 or len(node.inputs) != 1:
                continue
            tensor = node.inputs[0]
            producer = history_layer(tensor)
            if (folds_into(producer, bn, len(tensor.shape), producers)
                    and calls[id(producer)] == 1 and len(readers[id(tensor)]) == 1):
                pairs[id(producer)] = bn
    return pairs


def fold_batch_norms(model, producers=FOLDABLE):
    """Keras 3 :func:`tfcompress.quantization.fold_batch_norms`: folds every BatchNorm that is
    the only reader of a linear layer of ``producers`` (Conv/DepthwiseConv/Dense) into it.

    Returns:
      A new Functional model (exact in inference mode), or ``model`` if nothing folds.
    """
    require_graph_model(model)
    pairs = _fold_pairs(model, producers)
    if not pairs:
        return model
    folded_bns = {id(bn) for bn in pairs.values()}
    clone = Cloner()

    def call(node, args, kwargs):
        if id(node.layer) in folded_bns:
            return args[0]
        bn = pairs.get(id(node.layer))
        if bn is None:
            return clone(node, args, kwargs)
        layer = clone_layer(node.layer, use_bias=True, bias_initializer="zeros")
        outputs = layer(*args, **kwargs)
        layer.set_weights(fold_weights(node.layer, bn))
        return outputs

    return rebuild(model, call)


def _split(node: Node, args: tuple, kwargs: dict):
    layer = node.layer
    c = layer.get_config()
    depthwise = keras3.layers.DepthwiseConv2D(
        c["kernel_size"], strides=c["strides"], padding=c["padding"],
        depth_multiplier=c["depth_multiplier"], data_format=c["data_format"],
        dilation_rate=c["dilation_rate"], use_bias=False, trainable=c["trainable"],
        dtype=c.get("dtype"), name=f"{layer.name}_depthwise")
    pointwise = keras3.layers.Conv2D(
        c["filters"], 1, data_format=c["data_format"], use_bias=c["use_bias"],
        activation=c["activation"], trainable=c["trainable"], dtype=c.get("dtype"),
        name=layer.name)
    outputs = pointwise(depthwise(*args, **kwargs))
    weights = layer.get_weights()
    depthwise.set_weights(weights[:1])
    pointwise.set_weights(weights[1:])
    return outputs


def split_separable_convs(model):
    """Keras 3 :func:`tfcompress.quantization.split_separable_convs`: each ``SeparableConv2D``
    becomes ``DepthwiseConv2D`` (``{name}_depthwise``) + 1x1 ``Conv2D`` (``{name}``).

    Returns:
      A new Functional model computing the same function, or ``model`` if it has none.
    """
    require_graph_model(model)
    calls = _calls(model)
    separable = keras3.layers.SeparableConv2D
    if not any(isinstance(layer, separable) and calls[id(layer)] == 1 for layer in model.layers):
        return model
    clone = Cloner()

    def call(node, args, kwargs):
        if isinstance(node.layer, separable) and calls[id(node.layer)] == 1:
            return _split(node, args, kwargs)
        return clone(node, args, kwargs)

    return rebuild(model, call)
