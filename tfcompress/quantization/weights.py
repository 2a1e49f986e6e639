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
from tfcompress.quantization.pact import validate_bits
from tfcompress.quantization.tflite_mode import exporting

_MIN_RANGE = 1e-8  # an all-zero (e.g. pruned) channel still gets a valid range

LAYOUTS = ("channels_last", "depthwise", "transpose", "per_tensor")
"""How a kernel stores its output channels:

* ``channels_last`` - the last axis (Conv1D/2D/3D, Dense).
* ``depthwise`` - the last two axes together, ``in_channels * depth_multiplier``.
* ``transpose`` - axis -2 (Conv1D/2D/3DTranspose kernels are ``(..., out, in)``).
* ``per_tensor`` - one range for the whole tensor.
"""


@keras.utils.register_keras_serializable(package="tfcompress")
class ChannelWeightQuantizer(ConfigValue, tfmot.quantization.keras.quantizers.Quantizer):
    """Symmetric, narrow-range fake quantization of a kernel, one range per output channel.

    The range of each channel is its current absolute maximum (weights only change at
    optimizer steps, so "last value" is exact); no state is stored, so a model that has just
    been quantized already exports with the right weight scales.

    When tfmot calls each method: ``build`` once when the owning ``QuantizeWrapper`` is built
    (nothing to create here); ``__call__`` on every forward pass with the layer's kernel;
    ``get_config`` when the model is saved.

    Args:
      num_bits: weight bit width, 2 to 8. A ``b``-bit channel takes at most ``2^b - 1``
        distinct values.
      layout: where the output channels are, one of :data:`LAYOUTS`.

    Example:
      >>> import tensorflow as tf
      >>> q = ChannelWeightQuantizer(num_bits=2)
      >>> q(tf.constant([[0.4, -2.0], [1.0, 0.5]]), training=False, weights={}).numpy()
      array([[ 0., -2.],
             [ 1.,  0.]], dtype=float32)
    """

    def __init__(self, num_bits: int = 8, layout: str = "channels_last"):
        self.num_bits = validate_bits(num_bits, "num_bits")
        if not isinstance(layout, str):
            raise TypeError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
        if layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
        self.layout = layout

    def build(self, tensor_shape, name, layer) -> Dict[str, Any]:
        return {}

    def _fake_quant(self, x):
        axes = list(range(x.shape.rank - 1)) if self.layout != "per_tensor" else None
        high = tf.maximum(tf.reduce_max(tf.abs(x), axis=axes), _MIN_RANGE)
        num_bits = self.num_bits
        if exporting() and num_bits < 8:
            # Round to the b-bit grid, then store it on an 8-bit grid whose step divides the
            # b-bit step: the int8 values are multiples of `ratio` (see tflite_mode).
            levels = 2 ** (num_bits - 1) - 1
            ratio = 127 // levels
            step = high / levels
            x = tf.clip_by_value(tf.round(x / step), -levels, levels) * step
            high = step * (127.0 / ratio)
            num_bits = 8
        if axes is None:
            return tf.quantization.fake_quant_with_min_max_vars(
                x, -high, high, num_bits=num_bits, narrow_range=True)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, -high, high, num_bits=num_bits, narrow_range=True)

    def __call__(self, inputs, training, weights, **kwargs):
        if self.layout == "depthwise":
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, tf.concat([shape[:-2], [-1]], axis=0))
            return tf.reshape(self._fake_quant(flat), shape)
        if self.layout == "transpose":
            perm = list(range(inputs.shape.rank))
            perm[-2], perm[-1] = perm[-1], perm[-2]
            return tf.transpose(self._fake_quant(tf.transpose(inputs, perm)), perm)
        return self._fake_quant(inputs)

    def get_config(self) -> Dict[str, Any]:
        return {"num_bits": self.num_bits, "layout": self.layout}
