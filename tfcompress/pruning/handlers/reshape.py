"""Layers that rearrange axes: Flatten, Reshape, Permute.

Row-major reshapes that keep the last axis intact keep the channel layout. Reshapes that
merge trailing axes into the last one (``Flatten``, ``Reshape((-1,))``) tile it: feature
``p * C + c`` is channel ``c`` at position ``p``, so a consumer Dense drops the rows of a
pruned channel at every position. Anything else is a barrier.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfcompress._keras import layer_classes
from tfcompress.pruning.handlers.base import (
    OUT,
    Call,
    ChannelHandler,
    Tracer,
    channels_last_reason,
)
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = ["ReshapeHandler", "PermuteHandler", "trailing_tile"]


def trailing_tile(in_shape: Sequence[Optional[int]],
                  out_shape: Sequence[Optional[int]]) -> Optional[int]:
    """How many times the input's last axis is tiled into the output's last axis, or None.

    The output's last axis must be exactly the product of some trailing input axes.

    Example:
      >>> trailing_tile((None, 4, 4, 8), (None, 128)), trailing_tile((None, 4, 8), (None, 6))
      (16, None)
    """
    dims = list(in_shape[1:])
    out_last = out_shape[-1] if len(out_shape) > 1 else None
    if not dims or out_last is None:
        return None
    for start in range(len(dims) - 1, -1, -1):
        trailing = dims[start:]
        if any(d is None for d in trailing):
            return None
        product = math.prod(trailing)
        if product == out_last:
            return product // dims[-1]
        if product > out_last:
            return None
    return None


@register_handler(*layer_classes("Flatten", "Reshape"))
class ReshapeHandler(ChannelHandler):
    """``Flatten`` and ``Reshape``."""

    def barrier_reason(self, layer: Any) -> Optional[str]:
        return channels_last_reason(layer)

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        tile = trailing_tile(call.input_shapes[0], call.output_shapes[0])
        if tile is None:
            return tracer.opaque(call, f"reshape {call.input_shapes[0]} -> "
                                       f"{call.output_shapes[0]} splits the channel axis")
        return [call.inputs[0].tiled(tile) if tile > 1 else call.inputs[0]]

    def edit_config(self, config: Dict[str, Any], layer: Any,
                    positions: Mapping[str, Optional[np.ndarray]]) -> Dict[str, Any]:
        target = config.get("target_shape")
        if target is not None and positions.get(OUT) is not None and target[-1] != -1:
            config = dict(config, target_shape=tuple(target[:-1]) + (len(positions[OUT]),))
        return config


@register_handler(*layer_classes("Permute"))
class PermuteHandler(ChannelHandler):
    """``Permute`` that leaves the channel axis last."""

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        dims = tuple(call.layer.dims)
        if dims[-1] != len(dims):
            return tracer.opaque(call, f"Permute{dims} moves the channel axis")
        return [call.inputs[0]]
