"""BatchNorm folding arithmetic, the same for tf_keras and Keras 3 layers.

Used by :mod:`tfcompress.quantization.prepare` (tf_keras configs) and
:mod:`tfcompress.quantization.keras3_graph` (Keras 3 graphs): which layers fold, and the
folded kernel and bias.

Example:
  >>> import numpy as np
  >>> import keras
  >>> conv, bn = keras.layers.Conv2D(2, 1, use_bias=False), keras.layers.BatchNormalization()
  >>> _ = bn(conv(np.ones((1, 3, 3, 1), "float32")))
  >>> kernel, bias = fold_weights(conv, bn)  # gamma 1, beta 0, mean 0, variance 1
  >>> np.allclose(kernel, conv.get_weights()[0] / np.sqrt(1.0 + bn.epsilon)), bias.tolist()
  (True, [0.0, 0.0])
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from tfcompress._keras import layer_classes

__all__ = ["BATCH_NORM_MODES", "BATCH_NORMS", "FOLDABLE", "NOT_FOLDABLE", "DEPTHWISE",
           "CONVERTER_FOLDS", "bn_scale_shift", "fold_weights", "folds_into", "folds_on_last_axis"]

# SyncBatchNormalization is not a BatchNormalization subclass in every tf_keras version.
BATCH_NORMS = tuple(layer_classes("BatchNormalization", "SyncBatchNormalization"))
DEPTHWISE = tuple(layer_classes("DepthwiseConv1D", "DepthwiseConv2D"))
FOLDABLE = tuple(layer_classes("Conv1D", "Conv2D", "Conv3D", "Dense")) + DEPTHWISE
NOT_FOLDABLE = tuple(layer_classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                                   "SeparableConv1D", "SeparableConv2D"))
# Producers whose following BatchNorm the TFLite converter folds into a per-channel quantized
# kernel while keeping its grid (each output channel's grid scales with the channel).
# Dense is not one: its weights are quantized per tensor, which a per-channel scale breaks.
CONVERTER_FOLDS = tuple(layer_classes("Conv2D", "DepthwiseConv2D"))

BATCH_NORM_MODES = ("keep", "fold")
"""How QAT treats a BatchNorm that follows a Conv2D/DepthwiseConv2D: ``"keep"`` trains it
(batch statistics, as in float training) and lets the TFLite converter fold it at export;
``"fold"`` folds it into the kernel before QAT, freezing its statistics."""


def folds_on_last_axis(bn, rank: int) -> bool:
    """True if the BatchNorm ``bn`` normalizes only the last axis of a rank-``rank`` input."""
    axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return [a % rank for a in axis] == [rank - 1]


def folds_into(producer, bn, rank: int, producers=FOLDABLE) -> bool:
    """True if the BatchNorm ``bn``, reading the rank-``rank`` output of ``producer``, can be
    folded into it: ``producer`` is one of ``producers`` (and not a transposed or separable
    conv), has a linear activation, and ``bn`` normalizes the last axis. Whether either
    layer is shared or has other readers is the caller's graph to check."""
    return (isinstance(bn, BATCH_NORMS) and isinstance(producer, producers)
            and not isinstance(producer, NOT_FOLDABLE)
            and getattr(getattr(producer, "activation", None), "__name__", None) == "linear"
            and folds_on_last_axis(bn, rank))


def bn_scale_shift(bn) -> Tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` in inference mode."""
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights], bn.get_weights()))
    mean, var = weights["moving_mean"], weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(mean))
    beta = weights.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def fold_weights(layer, bn) -> List[np.ndarray]:
    """``[kernel, bias]`` of ``layer`` (Conv/DepthwiseConv/Dense) with ``bn`` folded in."""
    scale, shift = bn_scale_shift(bn)
    kernel = layer.get_weights()[0]
    bias = layer.get_weights()[1] if layer.use_bias else np.zeros_like(scale)
    if isinstance(layer, DEPTHWISE):
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]
