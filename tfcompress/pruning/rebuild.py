"""Rebuilding a slim model: config surgery, ``from_config``, sliced weights.

The model's config (nested models included) is edited layer by layer by the handlers
(``filters``/``units``/... set to the kept counts), a new model is created from it, and every
layer receives its original weights sliced to the kept channels. Layer, input and output
names are unchanged; only channel counts shrink, and residual branches whose groups are cut
to zero channels are removed (:mod:`tfcompress.pruning.depth`).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from tfcompress._keras import (
    flavour_of,
    is_model,
    model_from_config,
    registered_name,
    require_graph_model,
)
from tfcompress.pruning import depth
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.handlers import IN
from tfcompress.pruning.layout import KeptFn
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.zeroing import variable_masks

__all__ = ["rebuild"]

_MODEL_CLASSES = ("Functional", "Sequential", "Model")


def _layer_configs(config: Dict[str, Any], prefix: str = "") -> Iterator[tuple]:
    """Yields ``(qualified name, layer config dict)`` for every layer, nested ones too."""
    for entry in config.get("layers", []):
        name = entry["config"]["name"]
        if entry.get("class_name") in _MODEL_CLASSES and "layers" in entry["config"]:
            yield from _layer_configs(entry["config"], f"{prefix}{name}/")
        else:
            yield prefix + name, entry


def _leaf_layers(model: Any, prefix: str = "") -> Iterator[tuple]:
    for layer in model.layers:
        if is_model(layer):
            yield from _leaf_layers(layer, f"{prefix}{layer.name}/")
        else:
            yield prefix + layer.name, layer


def _custom_objects(model: Any) -> Dict[str, type]:
    """The model's layer classes that are not public Keras layers, by their plain and
    registered names (for ``from_config``). Public layers need no entry, and must not get
    one: in Keras 3 the layer ``Add`` would shadow the ``keras.ops`` node ``Add``."""
    objects: Dict[str, type] = {}
    for _, layer in _leaf_layers(model):
        cls = type(layer)
        if getattr(flavour_of(layer).module.layers, cls.__name__, None) is cls:
            continue
        objects.setdefault(cls.__name__, cls)
        objects.setdefault(registered_name(cls), cls)
    return objects


def _set_channels(config: Dict[str, Any], channels: int) -> None:
    """Sets the channel (last) dimension of a layer config's declared input shape
    (``batch_input_shape`` in tf_keras, ``batch_shape`` of an InputLayer in Keras 3)."""
    for key in ("batch_input_shape", "batch_shape"):
        shape = config.get(key)
        if shape is not None and len(shape) > 1:
            config[key] = tuple(shape[:-1]) + (channels,)


def rebuild(model: Any, masks: Masks) -> Any:
    """A new, smaller model with the pruned channels of ``masks`` physically removed.

    Exactness is the contract: on any input, ``rebuild(model, masks)`` computes what
    ``model`` computes after ``apply_masks(model, masks)`` (within float rounding), with
    fewer channels, MACs and parameters. ``model`` itself is not modified.

    Args:
      model: the Functional or Sequential model (tf_keras or Keras 3) the masks were
        computed on.
      masks: :class:`~tfcompress.pruning.Masks`.

    Groups the masks cut to zero channels remove their residual branch: its layers are
    gone and its ``Add`` becomes a :class:`~tfcompress.layers.ChannelBias` of the same name
    (see :mod:`tfcompress.pruning.depth`).

    Returns:
      A model of the same flavour and class, with the same layer, input and output names
      (but those of removed branches) and the same input and output shapes.

    Raises:
      TypeError: if ``model`` is not a Keras model or ``masks`` not a ``Masks``.
      ValueError: if the masks do not match the model, naming the mismatch, or a removed
        branch does not output one constant per channel.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> from tfcompress.pruning import fpgm_masks
      >>> model = residual_cnn(width=8)
      >>> slim = rebuild(model, fpgm_masks(model, 0.5))
      >>> slim.get_layer("stem_conv").filters, slim.output_shape
      (4, (None, 10))
    """
    require_graph_model(model)
    graph = ChannelGraph(model)
    kept = graph.kept_fn(masks)
    branches, zeroed = depth.cut_branches(graph, masks), None
    if branches:  # first a model with each cut group at one zeroed channel
        kept = graph.kept_fn(depth.one_channel(graph, masks))
        zeroed = variable_masks(graph, depth.cut_only(masks))
    config = copy.deepcopy(model.get_config())
    positions = _edit_configs(graph, kept, config)
    custom_objects = _custom_objects(model)
    slim = model_from_config(model, config, custom_objects)
    _copy_weights(graph, model, slim, positions, zeroed)
    if branches:
        slim = depth.remove_branches(slim, branches, custom_objects)
    return slim


def _edit_configs(graph: ChannelGraph, kept: KeptFn, config: Dict[str, Any]
                  ) -> Dict[str, Dict[str, Any]]:
    """Edits ``config`` (the model's, in place) for the kept channels; returns the kept
    positions of every layer that loses channels, by qualified name."""
    entries = dict(_layer_configs(config))
    for entry in entries.values():  # shapes change: layers build when called, not from config
        entry.pop("build_config", None)
    for key, layout in graph.nested_inputs.items():  # inputs of nested models shrink too
        if key in entries:
            _set_channels(entries[key]["config"], len(layout.positions(kept)))
    positions: Dict[str, Dict[str, Any]] = {}
    for key, record in graph.records.items():
        if record.barrier is not None or key not in entries:
            continue
        pos = record.handler.role_positions(record.layer, record.calls[0], kept)
        if all(p is None for p in pos.values()):
            continue
        positions[key] = pos
        entry = entries[key]
        entry["config"] = record.handler.edit_config(dict(entry["config"]), record.layer, pos)
        if pos.get(IN) is not None:  # first layer of a Sequential given an input_shape
            _set_channels(entry["config"], len(pos[IN]))
    return positions


def _copy_weights(graph: ChannelGraph, model: Any, slim: Any,
                  positions: Mapping[str, Dict[str, Any]],
                  zeroed: Optional[Mapping[int, Tuple[Any, np.ndarray]]] = None) -> None:
    """Gives every layer of ``slim`` its original weights, sliced where channels were
    removed (unchanged weights are assigned variable to variable), multiplied first by the
    0/1 masks of ``zeroed`` (``{id(variable): (variable, mask)}``)."""
    new_layers = dict(_leaf_layers(slim))
    pairs: List[Tuple[Any, Any]] = []
    zeroed = zeroed or {}
    for key, layer in _leaf_layers(model):
        target = new_layers[key]
        weights: List[Any] = [w.numpy() * zeroed[id(w)][1] if id(w) in zeroed else w
                              for w in layer.weights]  # unchanged: variable to variable
        record = graph.records.get(key)
        if key in positions:
            handler = record.handler
            for attr, i in handler.weight_index(layer).items():
                value = weights[i] if isinstance(weights[i], np.ndarray) else weights[i].numpy()
                weights[i] = handler.slice_weight(layer, attr, value, positions[key])
        if len(weights) != len(target.weights):
            target.set_weights([np.asarray(w) for w in weights])  # Keras' message names it
        pairs.extend(zip(target.weights, weights))
    for variable, value in pairs:  # a variable's value is copied without a numpy round trip
        variable.assign(value)
    for key, layer in new_layers.items():
        record = graph.records.get(key)
        if record is not None:
            record.handler.after_set_weights(layer)
