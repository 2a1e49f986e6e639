"""Per-output-channel symmetric weight fake-quantization at any bit width.

TFLite quantizes convolution weights per output channel, symmetrically, on the narrow range
``[-(2^(b-1) - 1), 2^(b-1) - 1]``. :class:`ChannelWeightQuantizer` emulates exactly that for
``b`` in 2..8. Each kernel layout names where its output channels live, so one quantizer
serves Conv1D/2D/3D, Dense, DepthwiseConv2D (``in * multiplier`` output channels) and
Conv2DTranspose (output channels on axis -2).
"""

from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras
from tfcompress.quantization._config import ConfigValue
from tfcompress.quantization.kernel_math import (
    LAYOUTS,
    LEARNED_RANGES,
    check_weight_range,
    quantize_weight,
    resolve_weight_range,
    step_variables,
)
from tfcompress.quantization.pact import validate_bits

__all__ = ["ChannelWeightQuantizer", "LAYOUTS"]


@keras.utils.register_keras_serializable(package="tfcompress")
class ChannelWeightQuantizer(ConfigValue, tfmot.quantization.keras.quantizers.Quantizer):
    """Symmetric fake quantization of a kernel, one range per output channel.

    The range of each channel is computed from its current weights (weights only change at
    optimizer steps, so "last value" is exact): its absolute maximum, or with
    ``weight_range="mse"`` below 8 bits the fraction of it with the least squared rounding
    error; no state is stored. With ``weight_range="learned"`` below 8 bits, each channel's
    grid step is a trainable variable (LSQ, :func:`~tfcompress.quantization.kernel_math.
    learned_step`), started at the least-squares step; a model that has just been quantized
    exports with that step. ``"learned_midrise"`` learns it on the grid of all ``2^b``
    levels ``(k + 1/2) * step`` (:mod:`~tfcompress.quantization.kernel_math`).

    When tfmot calls each method: ``build`` once when the owning ``QuantizeWrapper`` is built
    (creates the learned step, if any); ``__call__`` on every forward pass with the layer's
    kernel; ``get_config`` when the model is saved.

    Args:
      num_bits: weight bit width, 2 to 8. A ``b``-bit channel takes at most ``2^b - 1``
        distinct values (``2^b`` with ``"learned_midrise"``).
      layout: where the output channels are, one of :data:`LAYOUTS`.
      weight_range: ``"max"``, ``"mse"``, ``"learned"``, ``"learned_midrise"`` or ``"auto"`` (see
        :func:`~tfcompress.quantization.kernel_math.weight_range`). The maximum rounds every
        weight under half the largest one to zero on a 2-bit grid; ``"mse"`` keeps more of
        them, but clips the largest, which then stop learning; ``"learned"`` lets training
        trade the two; ``"auto"`` learns at 2-3 bits (a midrise grid at 2) and takes the
        maximum above (see
        :func:`~tfcompress.quantization.kernel_math.resolve_weight_range` and the QAT
        benchmark's ablation rows).

    Example:
      >>> import tensorflow as tf
      >>> q = ChannelWeightQuantizer(num_bits=2)
      >>> q(tf.constant([[0.4, -2.0], [1.0, 0.5]]), training=False, weights={}).numpy()
      array([[ 0., -2.],
             [ 1.,  0.]], dtype=float32)
    """

    def __init__(self, num_bits: int = 8, layout: str = "channels_last",
                 weight_range: str = "max"):
        self.num_bits = validate_bits(num_bits, "num_bits")
        self.weight_range = check_weight_range(weight_range)
        if not isinstance(layout, str):
            raise TypeError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
        if layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
        self.layout = layout

    @property
    def learns_step(self) -> bool:
        """Whether this quantizer owns a trainable step (a learned range below 8 bits, or
        ``"auto"`` at :data:`~tfcompress.quantization.kernel_math.AUTO_LEARNED_BITS` or fewer)."""
        return resolve_weight_range(self.weight_range, self.num_bits) in LEARNED_RANGES

    def build(self, tensor_shape, name, layer) -> Dict[str, Any]:
        return {key: layer.add_weight(f"{name}_{key}", shape=shape, initializer="zeros",
                                      trainable=trainable,
                                      aggregation=tf.VariableAggregation.MEAN)
                for key, (shape, trainable) in step_variables(
                    self.weight_range, self.num_bits, tensor_shape, self.layout).items()}

    def __call__(self, inputs, training, weights, **kwargs):
        return quantize_weight(inputs, self.num_bits, self.layout, self.weight_range,
                               weights, training)

    def get_config(self) -> Dict[str, Any]:
        return {"num_bits": self.num_bits, "layout": self.layout,
                "weight_range": self.weight_range}
