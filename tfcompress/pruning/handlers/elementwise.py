"""Channel-wise layers without channel weights: activations, pooling, resizing, dropout."""

from __future__ import annotations

from typing import Any, List, Optional

from tfcompress.pruning.handlers.base import (
    OUT, Call, CoupledHandler, Tracer, WeightSpec, maps_zero_to_zero, mixes_channels,
)
from tfcompress.pruning.layout import Layout

__all__ = ["IdentityHandler", "ActivationHandler", "SoftmaxHandler", "PReLUHandler"]

class IdentityHandler(CoupledHandler):
    """Layers that move values without mixing channels and keep zeros zero: pooling, global
    pooling, padding, cropping, upsampling, dropout and noise layers, RepeatVector."""


class ActivationHandler(CoupledHandler):
    """Element-wise activation layers (``ReLU``, ``Activation``, ``LeakyReLU``, ``ELU``, ...).

    Whether a pruned (zero) channel stays zero is decided by running the activation on 0, so
    ``sigmoid`` (0.5) makes consumers zero their input slice, ``relu`` does not.
    """

    def barrier_reason(self, layer: Any) -> Optional[str]:
        if mixes_channels(getattr(layer, "activation", None)):
            return f"activation {layer.activation.__name__!r} normalizes across channels"
        return super().barrier_reason(layer)

    def output_clean(self, call: Call) -> bool:
        return call.inputs[0].clean and maps_zero_to_zero(call.layer.call)


class SoftmaxHandler(ActivationHandler):
    """``Softmax``: a barrier over the channel axis, element-wise over the others."""

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        rank = len(call.input_shapes[0])
        axes = call.layer.axis if isinstance(call.layer.axis, (list, tuple)) else [call.layer.axis]
        if any(a % rank == rank - 1 for a in axes):
            return tracer.opaque(call, "softmax over the channel axis mixes channels")
        return [call.inputs[0].with_clean(False)]


class PReLUHandler(CoupledHandler):
    """``PReLU``: ``alpha`` has one value per channel unless shared over the channel axis."""

    weights = {"alpha": WeightSpec({-1: OUT})}

    def _shared(self, layer: Any) -> bool:
        return layer.alpha.shape[-1] == 1

    def sliced_shape(self, layer, attr, shape, counts):
        return shape if self._shared(layer) else super().sliced_shape(layer, attr, shape, counts)

    def slice_weight(self, layer, attr, value, positions):
        return value if self._shared(layer) else super().slice_weight(layer, attr, value, positions)
