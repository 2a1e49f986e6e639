"""Dense (on the last axis) and Embedding (its output dimension)."""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from tfcompress._keras import layer_classes
from tfcompress.pruning.handlers.base import (
    IN,
    OUT,
    Call,
    ChannelHandler,
    Tracer,
    WeightSpec,
    producer_output,
    spatial,
)
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = ["DenseHandler", "EmbeddingHandler"]


@register_handler(*layer_classes("Dense"))
class DenseHandler(ChannelHandler):
    """``Dense``: kernel ``(in, out)`` on the last axis; a producer of ``units`` channels.

    After ``Flatten`` its input layout is tiled, so pruning a channel removes the kernel rows
    of that channel at every spatial position.

    Example:
      >>> import keras
      >>> dense = keras.layers.Dense(3)
      >>> dense.build((None, 5))
      >>> DenseHandler().filters(dense).shape  # one row of 5 input weights per unit
      (3, 5)
    """

    weights = {
        "kernel": WeightSpec({0: IN, 1: OUT}, zero=OUT, consumes=True),
        "bias": WeightSpec({0: OUT}, zero=OUT),
    }
    size_key = "units"

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return [producer_output(call, tracer, call.layer.units)]

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        return layer.kernel.numpy().T

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        return spatial(call.output_shapes[0]) * n_in * n_out


@register_handler(*layer_classes("Embedding"))
class EmbeddingHandler(ChannelHandler):
    """``Embedding``: ``embeddings (vocab, out)``; its integer input carries no channels."""

    weights = {"embeddings": WeightSpec({-1: OUT}, zero=OUT)}
    size_key = "output_dim"

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        tracer.block(call, call.inputs[0], "integer indices into an Embedding")
        return [tracer.fresh(call, call.layer.output_dim)]

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        return layer.embeddings.numpy().T
