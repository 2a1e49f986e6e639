"""The one table that maps layer classes to channel handlers.

Lookup walks the layer class's MRO, so subclasses (``Conv2DTranspose`` is a ``Conv2D``,
``SyncBatchNormalization`` a ``BatchNormalization``) get the most specific row. A class
with no row in its MRO is a barrier (:class:`BarrierHandler`): tfcompress never guesses.

To support a custom layer, add a row (do it before tracing)::

    from tfcompress.pruning.handlers import HANDLERS, CoupledHandler
    HANDLERS.append((MyChannelwiseLayer, CoupledHandler()))
"""

from __future__ import annotations

from typing import Any, List, Tuple

from tfcompress._keras import keras
from tfcompress.pruning.handlers.base import BarrierHandler, ChannelHandler
from tfcompress.pruning.handlers.conv import (
    ConvHandler, ConvTransposeHandler, DepthwiseConvHandler, SeparableConvHandler,
)
from tfcompress.pruning.handlers.dense import DenseHandler, EmbeddingHandler
from tfcompress.pruning.handlers.elementwise import (
    ActivationHandler, IdentityHandler, PReLUHandler, SoftmaxHandler,
)
from tfcompress.pruning.handlers.merge import ConcatenateHandler, MergeHandler
from tfcompress.pruning.handlers.normalization import (
    BatchNormHandler, ChannelScaleHandler, LayerNormHandler, NormalizationHandler,
    RescalingHandler,
)
from tfcompress.pruning.handlers.reshape import PermuteHandler, ReshapeHandler
from tfcompress.pruning.handlers.tfop import TFOpHandler

__all__ = ["HANDLERS", "handler_for", "DEFAULT_BARRIER"]

L = keras.layers


def _optional(path: str) -> List[type]:
    """Classes that exist only in some tf_keras versions (or live in ``applications``)."""
    obj: Any = keras
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return []
    return [obj]


_IDENTITY = IdentityHandler()
_ACTIVATION = ActivationHandler()

#: ``(layer class, handler)`` rows. Order does not matter: lookup follows the MRO.
HANDLERS: List[Tuple[type, ChannelHandler]] = [
    # producers
    (L.Conv1D, ConvHandler()), (L.Conv2D, ConvHandler()), (L.Conv3D, ConvHandler()),
    (L.Conv1DTranspose, ConvTransposeHandler()), (L.Conv2DTranspose, ConvTransposeHandler()),
    (L.Conv3DTranspose, ConvTransposeHandler()),
    (L.SeparableConv1D, SeparableConvHandler()), (L.SeparableConv2D, SeparableConvHandler()),
    (L.Dense, DenseHandler()), (L.Embedding, EmbeddingHandler()),
    # channel-wise with weights
    (L.DepthwiseConv2D, DepthwiseConvHandler()),
    *[(cls, DepthwiseConvHandler()) for cls in _optional("layers.DepthwiseConv1D")],
    (L.BatchNormalization, BatchNormHandler()), (L.LayerNormalization, LayerNormHandler()),
    (L.Normalization, NormalizationHandler()), (L.Rescaling, RescalingHandler()),
    (L.PReLU, PReLUHandler()),
    *[(cls, ChannelScaleHandler()) for cls in _optional("src.applications.convnext.LayerScale")],
    # activations
    (L.Activation, _ACTIVATION), (L.ReLU, _ACTIVATION), (L.LeakyReLU, _ACTIVATION),
    (L.ELU, _ACTIVATION), (L.ThresholdedReLU, _ACTIVATION), (L.Softmax, SoftmaxHandler()),
    # channel-wise without weights
    *[(cls, _IDENTITY) for cls in (
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
        L.AveragePooling2D, L.AveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
        L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
        L.UpSampling3D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
        L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
        L.ActivityRegularization, L.RepeatVector)],
    # merges and rearrangements
    (L.Add, MergeHandler(all)), (L.Subtract, MergeHandler(all)), (L.Average, MergeHandler(all)),
    (L.Maximum, MergeHandler(all)), (L.Minimum, MergeHandler(all)),
    (L.Multiply, MergeHandler(any)), (L.Concatenate, ConcatenateHandler()),
    *[(cls, MergeHandler(all)) for cls in
      _optional("src.applications.inception_resnet_v2.CustomScaleLayer")],
    (L.Flatten, ReshapeHandler()), (L.Reshape, ReshapeHandler()), (L.Permute, PermuteHandler()),
    *[(cls, TFOpHandler()) for cls in _optional("src.layers.core.TFOpLambda")],
]

DEFAULT_BARRIER = BarrierHandler()


def handler_for(layer: Any) -> ChannelHandler:
    """The handler of the most specific class in ``type(layer).__mro__`` with a row in
    :data:`HANDLERS`, or :data:`DEFAULT_BARRIER`."""
    table = {cls: handler for cls, handler in HANDLERS}
    for cls in type(layer).__mro__:
        handler = table.get(cls)
        if handler is not None:
            return handler
    return DEFAULT_BARRIER
