"""Channel-wise layers without channel weights: activations, pooling, resizing, dropout."""

from __future__ import annotations

from typing import Any, List, Optional

from tfcompress._keras import layer_classes
from tfcompress.pruning.handlers.base import (
    OUT,
    Call,
    CoupledHandler,
    Tracer,
    WeightSpec,
    maps_zero_to_zero,
    mixes_channels,
)
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = ["IdentityHandler", "ActivationHandler", "SoftmaxHandler", "PReLUHandler"]


@register_handler(*layer_classes(
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
    "UpSampling2D", "UpSampling3D", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "RepeatVector",
))
class IdentityHandler(CoupledHandler):
    """Layers that move values without mixing channels and keep zeros zero: pooling, global
    pooling, padding, cropping, upsampling, dropout and noise layers, RepeatVector."""


#: Layers whose ``call`` is exactly ``self.activation(inputs)``.
_PLAIN_ACTIVATION_LAYERS = tuple(layer_classes("Activation"))


@register_handler(*layer_classes("Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU"))
class ActivationHandler(CoupledHandler):
    """Element-wise activation layers (``ReLU``, ``Activation``, ``LeakyReLU``, ``ELU``, ...).

    Whether a pruned (zero) channel stays zero is decided by running the activation on 0, so
    ``sigmoid`` (0.5) makes consumers zero their input slice, ``relu`` does not.

    Example:
      >>> from tfcompress.pruning import ChannelGraph
      >>> import keras
      >>> x = keras.Input((6,))
      >>> h = keras.layers.Activation("sigmoid", name="gate")(keras.layers.Dense(4, name="d")(x))
      >>> graph = ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h)))
      >>> graph.records["gate"].calls[0].outputs[0].clean  # sigmoid(0) = 0.5: not clean
      False
    """

    def barrier_reason(self, layer: Any) -> Optional[str]:
        if mixes_channels(getattr(layer, "activation", None)):
            return f"activation {layer.activation.__name__!r} normalizes across channels"
        return super().barrier_reason(layer)

    def output_clean(self, call: Call) -> bool:
        if not call.inputs[0].clean:
            return False
        activation = getattr(call.layer, "activation", None)  # Activation("swish"): cached
        if type(call.layer) in _PLAIN_ACTIVATION_LAYERS and callable(activation):
            return maps_zero_to_zero(activation)
        return maps_zero_to_zero(call.layer.call)


@register_handler(*layer_classes("Softmax"))
class SoftmaxHandler(ActivationHandler):
    """``Softmax``: a barrier over the channel axis, element-wise over the others."""

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        rank = len(call.input_shapes[0])
        axes = call.layer.axis if isinstance(call.layer.axis, (list, tuple)) else [call.layer.axis]
        if any(a % rank == rank - 1 for a in axes):
            return tracer.opaque(call, "softmax over the channel axis mixes channels")
        return [call.inputs[0].with_clean(False)]


@register_handler(*layer_classes("PReLU"))
class PReLUHandler(CoupledHandler):
    """``PReLU``: ``alpha`` has one value per channel unless shared over the channel axis."""

    weights = {"alpha": WeightSpec({-1: OUT})}

    def _shared(self, layer: Any) -> bool:
        return layer.alpha.shape[-1] == 1

    def sliced_shape(self, layer, attr, shape, counts):
        return shape if self._shared(layer) else super().sliced_shape(layer, attr, shape, counts)

    def slice_weight(self, layer, attr, value, positions):
        return value if self._shared(layer) else super().slice_weight(layer, attr, value, positions)
