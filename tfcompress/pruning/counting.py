"""Counting multiply-accumulates (MACs) and parameters, before or after pruning.

MACs count the multiply-accumulates of convolutions (all kinds) and Dense layers for one
example; element-wise layers are not counted. Unknown (None) spatial dimensions count as 1,
so for models with a variable input size the numbers are per unit of those dimensions.
Counts after pruning are computed from the masks alone, without rebuilding, and match the
rebuilt model exactly: the layers of a removed residual branch count 0, the ``ChannelBias``
replacing its ``Add`` one parameter per channel (see :mod:`tfcompress.pruning.depth`).

Layers no handler understands (custom layers, Lambda, unknown TF ops) may compute anything:
they are not counted, and :func:`uncounted_layers` names them (``count_macs`` logs them).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Collection, List, Mapping, Optional, Set, Tuple

from tfcompress._keras import is_input_layer, require_graph_model
from tfcompress.pruning.depth import cut_branches
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.handlers import BarrierHandler
from tfcompress.pruning.layout import KeptFn
from tfcompress.pruning.masks import Masks

__all__ = ["count_macs", "count_params", "graph_macs", "graph_params", "uncounted_layers"]

_LOG = logging.getLogger("tfcompress.pruning")


def _macs(graph: ChannelGraph, kept: KeptFn, removed: Collection[str] = ()
          ) -> Tuple[int, List[Tuple[str, str]]]:
    """Total MACs (but of the ``removed`` layers) and ``(layer, reason)`` for the layers
    that could not be counted."""
    total, failed = 0, []
    for key, record in graph.records.items():
        if key in removed:
            continue
        if isinstance(record.handler, BarrierHandler):
            if not is_input_layer(record.layer):
                failed.append((key, record.barrier or record.probe or "no channel handler"))
            continue
        for call in record.calls:
            if not call.inputs or not call.outputs:
                continue
            try:
                total += int(record.handler.call_macs(call, kept))
            except (AttributeError, TypeError, ValueError) as error:  # e.g. unknown rank
                failed.append((key, f"{type(error).__name__}: {error}"))
                break
    return total, failed


def uncounted_layers(graph: ChannelGraph) -> List[Tuple[str, str]]:
    """``(layer, reason)`` for the layers whose MACs :func:`graph_macs` cannot count: those
    without a channel handler (custom layers, Lambda, TF ops that are not element-wise; a
    probe may find them channel-wise, but not what they cost) and those whose handler could
    not size them.

    Example:
      >>> from tfcompress._keras import keras
      >>> x = keras.Input((4,))
      >>> y = keras.layers.Lambda(lambda t: 2 * t, name="double")(x)
      >>> [name for name, _ in uncounted_layers(ChannelGraph(keras.Model(x, y)))]
      ['double']
    """
    return _macs(graph, lambda space: None)[1]


def graph_macs(graph: ChannelGraph, masks: Optional[Masks] = None) -> int:
    """MACs of ``graph.model`` (after removing the pruned channels of ``masks``); layers in
    :func:`uncounted_layers` count 0.

    Raises:
      TypeError, ValueError: if ``masks`` does not match the graph.
    """
    branches = cut_branches(graph, masks)
    return _macs(graph, graph.kept_fn(masks), _removed(branches))[0]


def _removed(branches: Mapping[str, Any]) -> Set[str]:
    return {key for branch in branches.values() for key in branch.layers}


def graph_params(graph: ChannelGraph, masks: Optional[Masks] = None) -> int:
    """Parameters of ``graph.model`` (of the rebuilt model, given ``masks``)."""
    kept = graph.kept_fn(masks)
    branches = cut_branches(graph, masks)
    removed = _removed(branches)
    total = 0
    for merge in branches:  # a ChannelBias: one bias per channel
        total += len(graph.records[merge].calls[0].outputs[0].positions(kept))
    for key, record in graph.records.items():
        if key in removed or key in branches:
            continue
        layer, handler = record.layer, record.handler
        shapes = [tuple(w.shape) for w in getattr(layer, "weights", ())]  # keras.ops: none
        if record.barrier is None and handler.weights and masks is not None:
            counts = {role: (None if pos is None else len(pos)) for role, pos in
                      handler.role_positions(layer, record.calls[0], kept).items()}
            for attr, i in handler.weight_index(layer).items():
                shapes[i] = handler.sliced_shape(layer, attr, shapes[i], counts)
        total += sum(math.prod(shape) for shape in shapes)
    return int(total)


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass of one example through ``model``.

    Layers that cannot be counted are left out and logged (see :func:`uncounted_layers`).

    Example:
      >>> from tfcompress._keras import keras
      >>> model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 3)])
      >>> count_macs(model)  # 2x2 outputs x 3x3 kernel x 2 in x 3 out
      216
    """
    total, missing = _macs(ChannelGraph(model), lambda space: None)
    if missing:
        _LOG.warning("count_macs(%r) leaves out %d layer(s) it cannot count: %s", model.name,
                     len(missing), ", ".join(name for name, _ in missing))
    return total


def count_params(model: Any) -> int:
    """Number of weights of ``model`` (trainable and not), like ``model.count_params()``.

    Example:
      >>> from tfcompress._keras import keras
      >>> count_params(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
      8
    """
    require_graph_model(model)
    return int(sum(math.prod(w.shape) for w in model.weights))
