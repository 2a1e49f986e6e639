"""Counting multiply-accumulates (MACs) and parameters, before or after pruning.

MACs count the multiply-accumulates of convolutions (all kinds) and Dense layers for one
example; element-wise layers are not counted. Unknown (None) spatial dimensions count as 1,
so for models with a variable input size the numbers are per unit of those dimensions.
Counts after pruning are computed from the masks alone, without rebuilding, and match the
rebuilt model exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Optional

from tfcompress._keras import require_graph_model
from tfcompress.pruning.apply import weight_index
from tfcompress.pruning.handlers.base import IN, MID, OUT

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.graph import ChannelGraph, LayerRecord
    from tfcompress.pruning.masks import Masks

__all__ = ["count_macs", "count_params", "graph_macs", "graph_params", "role_positions"]


def role_positions(record: "LayerRecord", kept, call=None) -> Dict[str, Any]:
    """``{role: kept positions or None (all kept)}`` for the weight axes of ``record``."""
    call = call or record.calls[0]
    positions = {}
    for role in (IN, OUT, MID):
        try:
            layout = record.handler.role_layout(record.layer, role, call)
        except (IndexError, AttributeError):
            continue
        pos = layout.positions(kept)
        positions[role] = None if len(pos) == layout.length else pos
    return positions


def graph_macs(graph: "ChannelGraph", masks: Optional["Masks"] = None) -> int:
    """MACs of ``graph.model`` (after removing the pruned channels of ``masks``)."""
    kept = graph.kept_fn(masks)
    total = 0
    for record in graph.records.values():
        for call in record.calls:
            if not call.inputs or not call.outputs:
                continue
            n_in = len(call.inputs[0].positions(kept))
            n_out = len(call.outputs[0].positions(kept))
            try:
                total += int(record.handler.macs(call, n_in, n_out))
            except (AttributeError, TypeError, ValueError):  # a barrier we cannot size
                continue
    return total


def graph_params(graph: "ChannelGraph", masks: Optional["Masks"] = None) -> int:
    """Parameters of ``graph.model`` (of the rebuilt model, given ``masks``)."""
    kept = graph.kept_fn(masks)
    total = 0
    for record in graph.records.values():
        layer, handler = record.layer, record.handler
        shapes = [tuple(w.shape) for w in layer.weights]
        if record.barrier is None and handler.weights and masks is not None:
            counts = {role: (None if pos is None else len(pos))
                      for role, pos in role_positions(record, kept).items()}
            for attr, i in weight_index(layer, handler.weights).items():
                shapes[i] = handler.sliced_shape(layer, attr, shapes[i], counts)
        total += sum(math.prod(shape) for shape in shapes)
    return int(total)


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass of one example through ``model``.

    Example:
      >>> from tfcompress._keras import keras
      >>> model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 3)])
      >>> count_macs(model)  # 2x2 outputs x 3x3 kernel x 2 in x 3 out
      216
    """
    from tfcompress.pruning.graph import ChannelGraph

    return ChannelGraph(model).macs()


def count_params(model: Any) -> int:
    """Number of weights of ``model`` (trainable and not), like ``model.count_params()``.

    Example:
      >>> from tfcompress._keras import keras
      >>> count_params(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
      8
    """
    require_graph_model(model)
    return int(sum(math.prod(w.shape) for w in model.weights))
