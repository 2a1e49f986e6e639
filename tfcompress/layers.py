"""Layers tfcompress puts into the models it produces, one class per Keras flavour.

:class:`ChannelBias` is what a residual ``Add`` becomes when depth pruning removes its
branch (:mod:`tfcompress.pruning.depth`): the branch's output no longer depends on the input,
so ``x + branch(x)`` is ``x + c`` with a per-channel constant ``c``. Both Kerases get their own
class (subclassing their own ``Layer``), named ``ChannelBias`` and registered as
``tfcompress>ChannelBias`` in their own registry, so ``.keras`` files load without a scope.
The rest of tfcompress treats it like any layer: it has a channel handler (a slim model can
be pruned again), a quantization rule, and TFLite runs it as one ``ADD`` with a constant.

Example:
  >>> import numpy as np
  >>> layer = channel_bias_class("keras3")(name="shift")
  >>> tuple(layer(np.zeros((1, 2, 3), np.float32)).shape)
  (1, 2, 3)
  >>> _ = layer.bias.assign([1.0, 2.0, 3.0])
  >>> np.asarray(layer(np.ones((1, 1, 3), np.float32))).tolist()
  [[[2.0, 3.0, 4.0]]]
"""

from __future__ import annotations

import types
from typing import Any, Dict, Mapping, Union

from tfcompress._keras import FLAVOURS, Flavour, keras, keras3, serializable

__all__ = ["ChannelBias", "CHANNEL_BIAS", "channel_bias_class"]


class _ChannelBias:
    """``outputs = inputs + bias``, one trainable bias per channel (last axis).

    Args:
      **kwargs: the base ``Layer`` arguments (``name``, ``dtype``, ``trainable``).

    Weights:
      bias: ``(channels,)``, zeros until assigned.
    """

    def build(self, input_shape: Any) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"ChannelBias {self.name!r} needs a known channel (last) "
                             f"dimension, got input shape {tuple(input_shape)}.")
        self.bias = self.add_weight(name="bias", shape=(int(channels),),
                                    initializer="zeros", trainable=True)
        self.built = True

    def call(self, inputs: Any) -> Any:
        return inputs + self.bias

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        return super().get_config()


def _flavour_class(flavour: Flavour) -> type:
    """``ChannelBias`` for one Keras, registered in that Keras only."""
    cls = types.new_class("ChannelBias", (_ChannelBias, flavour.module.layers.Layer))
    cls.__module__, cls.__doc__ = __name__, _ChannelBias.__doc__
    return serializable()(cls)


#: ``{flavour name: ChannelBias class}``: ``"tf_keras"`` and ``"keras3"``.
CHANNEL_BIAS: Mapping[str, type] = types.MappingProxyType(
    {flavour.name: _flavour_class(flavour) for flavour in FLAVOURS})

#: The tf_keras class (``CHANNEL_BIAS["keras3"]`` is the Keras 3 one).
ChannelBias = CHANNEL_BIAS["tf_keras"]


def channel_bias_class(flavour: Union[Flavour, str, types.ModuleType]) -> type:
    """The ``ChannelBias`` class of one Keras: a :class:`~tfcompress._keras.Flavour`, its
    name (``"tf_keras"``, ``"keras3"``) or its module.

    Raises:
      ValueError: for anything else.

    Example:
      >>> channel_bias_class("tf_keras").__mro__[2].__module__.split(".")[0]
      'tf_keras'
    """
    for known in FLAVOURS:
        if flavour in (known, known.name, known.module):
            return CHANNEL_BIAS[known.name]
    raise ValueError(f"Unknown Keras flavour {flavour!r}; use 'tf_keras', 'keras3', "
                     f"{keras.__name__} or {keras3.__name__}.")
