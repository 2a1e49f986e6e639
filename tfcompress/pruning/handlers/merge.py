"""Multi-input layers: element-wise merges (coupled channels) and Concatenate (offsets)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, List

from tfcompress._keras import existing_classes, layer_classes
from tfcompress.pruning.handlers.base import Call, ChannelHandler, Tracer
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout, combine_clean, concat

__all__ = ["MergeHandler", "ConcatenateHandler", "merge_layouts"]


def merge_layouts(call: Call, tracer: Tracer, layouts: List[Layout], shapes: List[Any],
                  combine: Callable[[Iterable[bool]], bool]) -> List[Layout]:
    """Couples the channel-carrying inputs of an element-wise op; blocks broadcast ones.

    An input whose last dimension is 1 while the output's is not (a per-position gate) is
    broadcast over all channels: its own space is blocked and, for sums, the output of a
    pruned channel is no longer guaranteed to be zero.
    """
    channels = call.output_shapes[0][-1] if call.output_shapes[0] else None
    carrying, broadcast = [], False
    for layout, shape in zip(layouts, shapes):
        if len(shape) and shape[-1] == 1 and channels != 1:
            tracer.block(call, layout, "broadcast over the channel axis")
            broadcast = True
        else:
            carrying.append(layout)
    if not carrying:
        return tracer.opaque(call, "no input carries the output's channels")
    if not tracer.unify(call, carrying):
        return tracer.opaque(call, "inputs with different channel layouts")
    out = combine_clean(carrying, combine)
    return [out.with_clean(not broadcast or combine is any)]


class MergeHandler(ChannelHandler):
    """``Add``, ``Subtract``, ``Average``, ``Maximum``, ``Minimum`` (``all``: a pruned channel
    stays 0 only if it is 0 in every input) and ``Multiply`` (``any``: one zero suffices).
    Every input shares one channel index space, so all of them are pruned together.

    Example:
      >>> from tfcompress.pruning import ChannelGraph
      >>> import keras
      >>> x = keras.Input((8, 8, 3))
      >>> a, b = keras.layers.Conv2D(4, 3, name="a")(x), keras.layers.Conv2D(4, 3, name="b")(x)
      >>> y = keras.layers.Conv2D(2, 1)(keras.layers.Add(name="add")([a, b]))
      >>> ChannelGraph(keras.Model(x, y)).group("a").producers  # pruned together
      ('a', 'b')"""

    def __init__(self, combine: Callable[[Iterable[bool]], bool] = all) -> None:
        self.combine = combine

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return merge_layouts(call, tracer, call.inputs, call.input_shapes, self.combine)


@register_handler(*layer_classes("Concatenate"))
class ConcatenateHandler(ChannelHandler):
    """``Concatenate`` on the channel axis: the output layout lists the inputs' segments at
    their offsets; on another axis it is an element-wise merge (channels coupled)."""

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        rank = len(call.output_shapes[0])
        if call.layer.axis % rank != rank - 1:
            return merge_layouts(call, tracer, call.inputs, call.input_shapes, all)
        if any(layout.tile != 1 for layout in call.inputs):
            return tracer.opaque(call, "concatenating flattened (tiled) tensors")
        return [concat(call.inputs)]


register_handler(*layer_classes("Add", "Subtract", "Average", "Maximum", "Minimum"),
                 *existing_classes("src.applications.inception_resnet_v2.CustomScaleLayer"),
                 handler=MergeHandler(all))
register_handler(*layer_classes("Multiply"), handler=MergeHandler(any))
