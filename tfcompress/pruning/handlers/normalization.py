"""Normalization and per-channel affine layers.

BatchNormalization is made exact by zeroing gamma and beta of pruned channels: its output
for them is then 0 whatever its moving statistics (with ``scale=False`` it is
``beta - mean / sqrt(var + eps)``, not 0, so consumers zero their input slice instead).
LayerNormalization over the channel axis mixes channels (a removed channel changes the mean
and variance of the others), so it is a barrier; over other axes it is channel-wise. The same
holds for GroupNormalization: with one channel per group (``groups=-1``, instance
normalization) it is channel-wise, with several it mixes the channels of a group.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from tfcompress._keras import existing_classes, layer_classes
from tfcompress.layers import CHANNEL_BIAS
from tfcompress.pruning.handlers.base import (
    OUT,
    Call,
    CoupledHandler,
    Tracer,
    WeightSpec,
)
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = [
    "BatchNormHandler", "LayerNormHandler", "GroupNormHandler", "NormalizationHandler",
    "RescalingHandler", "ChannelScaleHandler", "ChannelBiasHandler",
]


def _axes(axis: Any, rank: int) -> List[int]:
    axis = [axis] if isinstance(axis, int) else list(axis or [])
    return sorted(a % rank for a in axis)


class _PerChannelAxisMixin:
    """Layers whose ``axis`` must be exactly the last (channel) axis."""

    def _axis_reason(self, call: Call) -> Optional[str]:
        rank = len(call.input_shapes[0])
        if _axes(call.layer.axis, rank) != [rank - 1]:
            return f"axis={call.layer.axis!r} is not the channel (last) axis"
        return None


@register_handler(*layer_classes("BatchNormalization"))
class BatchNormHandler(_PerChannelAxisMixin, CoupledHandler):
    """``BatchNormalization`` on the last axis: gamma/beta zeroed, statistics sliced."""

    weights = {
        "gamma": WeightSpec({0: OUT}, zero=OUT),
        "beta": WeightSpec({0: OUT}, zero=OUT),
        "moving_mean": WeightSpec({0: OUT}),
        "moving_variance": WeightSpec({0: OUT}),
    }

    def output_clean(self, call: Call) -> bool:
        return bool(call.layer.scale)

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        reason = self._axis_reason(call)
        return tracer.opaque(call, reason) if reason else super().propagate(call, tracer)


@register_handler(*layer_classes("LayerNormalization"))
class LayerNormHandler(CoupledHandler):
    """``LayerNormalization``: a barrier over the channel axis, channel-wise otherwise.

    Example:
      >>> from tfcompress.pruning import ChannelGraph
      >>> import keras
      >>> x = keras.Input((6,))
      >>> h = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(4, name="d")(x))
      >>> ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h))).group("d").barriers
      (('ln', 'normalizes across the channel axis'),)
    """

    zero_preserving = False

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        rank = len(call.input_shapes[0])
        if rank - 1 in _axes(call.layer.axis, rank):
            return tracer.opaque(call, "normalizes across the channel axis")
        return super().propagate(call, tracer)


@register_handler(*layer_classes("GroupNormalization"))
class GroupNormHandler(_PerChannelAxisMixin, CoupledHandler):
    """``GroupNormalization`` with one channel per group (``groups=-1``: instance
    normalization): channel-wise, exact by zeroing gamma and beta like BatchNormalization
    (an all-zero channel normalizes to 0). Several channels per group are a barrier.

    Example:
      >>> from tfcompress.pruning import ChannelGraph
      >>> import keras
      >>> x = keras.Input((8, 8, 3))
      >>> h = keras.layers.Conv2D(4, 3, name="conv")(x)
      >>> h = keras.layers.GroupNormalization(groups=-1)(h)
      >>> ChannelGraph(keras.Model(x, keras.layers.Conv2D(2, 1)(h))).group("conv").prunable
      True
    """

    weights = {
        "gamma": WeightSpec({0: OUT}, zero=OUT),
        "beta": WeightSpec({0: OUT}, zero=OUT),
    }
    size_key = "groups"

    def output_clean(self, call: Call) -> bool:
        return bool(call.layer.scale) or call.inputs[0].clean

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        reason = self._axis_reason(call)
        channels = call.input_shapes[0][-1]
        if reason is None and call.layer.groups != channels:
            reason = (f"normalizes across the {channels // call.layer.groups} channels of "
                      "each group (groups > 1 channel)")
        return tracer.opaque(call, reason) if reason else super().propagate(call, tracer)


@register_handler(*layer_classes("Normalization"))
class NormalizationHandler(_PerChannelAxisMixin, CoupledHandler):
    """``Normalization`` (preprocessing) with per-channel or global statistics."""

    zero_preserving = False
    weights = {
        "adapt_mean": WeightSpec({0: OUT}),
        "adapt_variance": WeightSpec({0: OUT}),
    }

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        if call.layer.axis and self._axis_reason(call):
            return tracer.opaque(call, self._axis_reason(call))
        return super().propagate(call, tracer)

    def edit_config(self, config: Dict[str, Any], layer: Any,
                    positions: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        config = dict(config)
        for key in ("mean", "variance"):
            value = config.get(key)
            if value is not None and np.size(value) > 1 and positions.get(OUT) is not None:
                config[key] = np.asarray(value).reshape(-1)[positions[OUT]].tolist()
        return config

    def after_set_weights(self, layer: Any) -> None:
        if getattr(layer, "adapt_mean", None) is not None:
            layer.finalize_state()


@register_handler(*layer_classes("Rescaling"))
class RescalingHandler(CoupledHandler):
    """``Rescaling``: ``x * scale + offset`` with scalar scale and offset (per-channel values
    are a barrier: tf_keras cannot rebuild them from a config anyway)."""

    def output_clean(self, call: Call) -> bool:
        return call.inputs[0].clean and not np.any(np.asarray(call.layer.offset) != 0)

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        for value in (call.layer.scale, call.layer.offset):
            if np.size(value) != 1:
                return tracer.opaque(call, f"per-channel scale/offset of shape {np.shape(value)}")
        return super().propagate(call, tracer)


@register_handler(*existing_classes("src.applications.convnext.LayerScale"))
class ChannelScaleHandler(CoupledHandler):
    """Per-channel learned scale ``x * gamma`` (ConvNeXt's ``LayerScale``)."""

    weights = {"gamma": WeightSpec({0: OUT}, zero=OUT)}
    makes_clean = True
    size_key = "projection_dim"


@register_handler(*CHANNEL_BIAS.values())
class ChannelBiasHandler(CoupledHandler):
    """tfcompress's ``ChannelBias`` (``x + bias``, what a residual ``Add`` becomes when depth
    pruning removes its branch): a pruned channel's bias is zeroed, so it stays 0."""

    weights = {"bias": WeightSpec({0: OUT}, zero=OUT)}
