"""Convolutions: Conv1D/2D/3D (grouped too), transposed, depthwise and separable.

A grouped convolution with one input channel per group (``Conv2D(C * m, k, groups=C)`` on
``C`` channels, ConvMixer's depthwise layer) is a depthwise convolution written as a Conv:
it is traced like ``DepthwiseConv2D`` (output ``c*m + k`` comes from input ``c``) and pruning
removes whole groups. Other grouped convolutions keep the same number of channels in each
group.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np

from tfcompress._keras import layer_classes
from tfcompress.pruning.handlers.base import (
    IN,
    MID,
    OUT,
    Call,
    ChannelHandler,
    CoupledHandler,
    Tracer,
    WeightSpec,
    maps_zero_to_zero,
    mixes_channels,
    producer_output,
    spatial,
)
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = [
    "ConvHandler", "ConvTransposeHandler", "DepthwiseConvHandler", "SeparableConvHandler",
    "whole_groups", "depthwise_output",
]


def _activation_clean(layer: Any) -> bool:
    activation = getattr(layer, "activation", None)
    return activation is None or maps_zero_to_zero(activation)


def _kernel_volume(layer: Any) -> int:
    return int(math.prod(layer.kernel_size))


_TRANSPOSED = tuple(layer_classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"))


def _groups(layer: Any) -> int:
    """``groups`` as the convolution computes it: 1 for transposed convolutions (Keras 3's
    have no ``groups``; tf_keras' accept it but ignore it: their kernel is not grouped)."""
    return 1 if isinstance(layer, _TRANSPOSED) else getattr(layer, "groups", 1)


def whole_groups(layer: Any) -> bool:
    """True for a grouped convolution with one input channel per group (``groups`` equals
    the number of input channels): a depthwise convolution, pruned by whole groups.

    Example:
      >>> import keras
      >>> conv = keras.layers.Conv2D(8, 3, groups=4)
      >>> conv.build((None, 6, 6, 4))
      >>> whole_groups(conv), tuple(conv.kernel.shape)  # 4 groups of 1 input, 2 outputs each
      (True, (3, 3, 1, 8))
    """
    return _groups(layer) > 1 and int(layer.kernel.shape[-2]) == 1


def _kept_groups(layer: Any, n_in: int) -> int:
    """``groups`` of the rebuilt layer once ``n_in`` input channels are kept."""
    return n_in if whole_groups(layer) else _groups(layer)


def depthwise_output(call: Call, tracer: Tracer, multiplier: int) -> Layout:
    """The output of a depthwise convolution: output ``c*m + k`` comes from input ``c`` (the
    input layout repeated ``m`` times). Pruned channels are 0 before the activation (their
    kernel and bias slices are zeroed), so the output is clean if the activation keeps 0."""
    out = call.inputs[0].repeated(multiplier).with_clean(_activation_clean(call.layer))
    activation = getattr(call.layer, "activation", None)
    if mixes_channels(activation):
        tracer.block(call, out, f"activation {activation.__name__!r} mixes channels")
    return out


@register_handler(*layer_classes("Conv1D", "Conv2D", "Conv3D"))
class ConvHandler(ChannelHandler):
    """``Conv1D/2D/3D``: kernel ``(*k, in // groups, out)``; a producer of ``filters`` channels.

    Grouped convolutions (``groups > 1``) are exact: input and output channels are split into
    ``groups`` contiguous blocks and pruning keeps the same number of channels in every block,
    so the rebuilt layer is again a valid grouped convolution. With one input channel per
    group (:func:`whole_groups`) the layer is depthwise instead: input ``c`` and outputs
    ``c*m .. c*m+m-1`` are one channel, and the rebuild lowers ``groups`` with ``filters``.

    Example:
      >>> import keras
      >>> conv = keras.layers.Conv2D(4, 3, groups=2)
      >>> conv.build((None, 8, 8, 6))
      >>> ConvHandler().filters(conv).shape  # 4 filters of 3 x 3 x (6 / 2) weights
      (4, 27)
    """

    weights = {
        "kernel": WeightSpec({-1: OUT, -2: IN}, zero=OUT, consumes=True),
        "bias": WeightSpec({0: OUT}, zero=OUT),
    }
    size_key = "filters"

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        layer = call.layer
        groups = _groups(layer)
        if whole_groups(layer):
            return [depthwise_output(call, tracer, layer.filters // groups)]
        if groups > 1:
            tracer.constrain(call, call.inputs[0], groups)
        out = producer_output(call, tracer, layer.filters)
        if groups > 1:
            tracer.constrain(call, out, groups)
        return [out]

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        kernel = layer.kernel.numpy()
        return kernel.reshape(-1, kernel.shape[-1]).T

    def sliced_shape(self, layer, attr, shape, counts):
        shape = super().sliced_shape(layer, attr, shape, counts)
        if attr == "kernel" and _groups(layer) > 1 and counts.get(IN) is not None:
            shape = shape[:-2] + (counts[IN] // _kept_groups(layer, counts[IN]), shape[-1])
        return shape

    @staticmethod
    def _grouped_in_index(per_group_in: int, per_group_out: int, in_pos: np.ndarray,
                          out_pos: np.ndarray) -> np.ndarray:
        """``(kept inputs per group, len(out_pos))``: the kernel in-axis rows each kept output
        keeps (the kept inputs of its group, relative to the group's first input)."""
        group_of_in = in_pos // per_group_in
        kept_groups = np.unique(group_of_in)
        rel = (in_pos - group_of_in * per_group_in).reshape(len(kept_groups), -1)
        return rel[np.searchsorted(kept_groups, out_pos // per_group_out)].T

    def slice_weight(self, layer, attr, value, positions):
        if attr != "kernel" or _groups(layer) == 1:
            return super().slice_weight(layer, attr, value, positions)
        per_group_in = value.shape[-2]
        in_pos = positions.get(IN)
        out_pos = positions.get(OUT)
        in_pos = np.arange(per_group_in * _groups(layer)) if in_pos is None else in_pos
        out_pos = np.arange(layer.filters) if out_pos is None else out_pos
        value = value[..., out_pos]
        index = self._grouped_in_index(per_group_in, layer.filters // _groups(layer), in_pos,
                                       out_pos)
        index = index.reshape((1,) * (value.ndim - 2) + index.shape)
        return np.take_along_axis(value, index, axis=-2)

    def edit_config(self, config, layer, positions):
        config = super().edit_config(config, layer, positions)
        if whole_groups(layer) and positions.get(IN) is not None:
            config = dict(config, groups=int(len(positions[IN])))
        return config

    def zero_weight(self, layer, attr, value, role, positions):
        if attr != "kernel" or _groups(layer) == 1 or role != IN:
            return super().zero_weight(layer, attr, value, role, positions)
        value = value.copy()
        per_group_in = value.shape[-2]
        per_group_out = layer.filters // _groups(layer)
        for pos in positions:  # a pruned input channel feeds the outputs of its block only
            block = pos // per_group_in
            outputs = slice(block * per_group_out, (block + 1) * per_group_out)
            value[..., pos - block * per_group_in, outputs] = 0
        return value

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        layer = call.layer
        volume = spatial(call.output_shapes[0]) * _kernel_volume(layer)
        return volume * (n_in // _kept_groups(layer, n_in)) * n_out


@register_handler(*layer_classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"))
class ConvTransposeHandler(ConvHandler):
    """``Conv1D/2D/3DTranspose``: kernel ``(*k, out, in)``, never grouped (tf_keras accepts
    ``groups`` and ignores it, but wants ``filters`` divisible by it: pruning keeps the same
    number of channels in each of ``groups`` blocks)."""

    weights = {
        "kernel": WeightSpec({-2: OUT, -1: IN}, zero=OUT, consumes=True),
        "bias": WeightSpec({0: OUT}, zero=OUT),
    }

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        out = producer_output(call, tracer, call.layer.filters)
        groups = getattr(call.layer, "groups", 1)  # tf_keras: ignored by the math, but
        if groups > 1:  # ``filters % groups == 0`` is checked when the layer is rebuilt
            tracer.constrain(call, out, groups)
        return [out]

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        kernel = np.moveaxis(layer.kernel.numpy(), -2, 0)
        return kernel.reshape(kernel.shape[0], -1)

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        return spatial(call.input_shapes[0]) * _kernel_volume(call.layer) * n_in * n_out


@register_handler(*layer_classes("DepthwiseConv2D", "DepthwiseConv1D"))
class DepthwiseConvHandler(CoupledHandler):
    """``DepthwiseConv1D/2D``: output ``c*m + k`` comes from input ``c`` (``m`` = multiplier).

    The kernel ``(*k, in, m)`` and bias of pruned channels are zeroed, so its output for them
    is 0 whatever comes in (unless its activation maps 0 elsewhere).
    """

    weights = {
        "depthwise_kernel": WeightSpec({-2: IN}, zero=IN),  # tf_keras
        "kernel": WeightSpec({-2: IN}, zero=IN),  # Keras 3 names the depthwise kernel `kernel`
        "bias": WeightSpec({0: OUT}, zero=OUT),
    }

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return [depthwise_output(call, tracer, call.layer.depth_multiplier)]

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        return spatial(call.output_shapes[0]) * _kernel_volume(call.layer) * n_out


@register_handler(*layer_classes("SeparableConv1D", "SeparableConv2D"))
class SeparableConvHandler(ConvHandler):
    """``SeparableConv1D/2D``: a depthwise kernel ``(*k, in, m)`` then a pointwise kernel
    ``(1, 1, in*m, out)``; produces ``filters`` channels like a Conv."""

    weights = {
        "depthwise_kernel": WeightSpec({-2: IN}, consumes=True),
        "pointwise_kernel": WeightSpec({-2: MID, -1: OUT}, zero=OUT),
        "bias": WeightSpec({0: OUT}, zero=OUT),
    }

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return [producer_output(call, tracer, call.layer.filters)]

    def role_layout(self, layer: Any, role: str, call: Call) -> Layout:
        if role == MID:
            return call.inputs[0].repeated(layer.depth_multiplier)
        return super().role_layout(layer, role, call)

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        kernel = layer.pointwise_kernel.numpy()
        return kernel.reshape(-1, kernel.shape[-1]).T

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        mid = n_in * call.layer.depth_multiplier
        volume = spatial(call.output_shapes[0])
        return volume * (_kernel_volume(call.layer) * mid + mid * n_out)
