"""Recurrent layers in TFLite export: static shapes, fused LSTM kernels, int8 limits.

What the TF 2.21 converter does with recurrent layers (measured; see the tests in
``tests/export/test_recurrent.py``):

* Every recurrent layer traced with a free batch size fails to convert
  (``TensorListReserve ... requires element_shape to be static``); with a static batch it
  converts, so ``to_tflite(batch_size="auto")`` picks a static batch of 1 for them.
* tf_keras ``LSTM`` functions carry the ``api_implements`` attribute the converter fuses into
  ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (``Bidirectional(LSTM)``: two of them, the backward one
  after a ``REVERSE_V2``), in float and, with representative data, in int8 (int16 cell
  state). Keras 3's TensorFlow-backend LSTM does not carry it and converts to a ``WHILE``
  loop, so a Keras 3 model with LSTM layers is exported through its tf_keras copy
  (:func:`tfcompress.convert.to_tf_keras`, same weights), when that copy can be made.
* ``GRU`` and ``SimpleRNN`` (both Kerases) have no fused kernel reachable from Keras
  (``UNIDIRECTIONAL_SEQUENCE_RNN`` is only produced by TF1's removed OpHint path): they
  become a ``WHILE`` loop of builtin ops (so do LSTMs in a configuration without the fused
  function, e.g. ``recurrent_dropout``). int8 calibration of such a loop crashes the
  converter (segmentation fault), so ``to_tflite`` refuses it beforehand; layers built with
  ``unroll=True`` convert to plain ops and calibrate fine.
* The fused LSTM kernel keeps its state in variable tensors that persist across
  ``invoke`` calls: run each sequence from reset variables
  (``interpreter.reset_all_variables()``), as :func:`tfcompress.export.litert.run` does.

Example:
  >>> import tf_keras as keras
  >>> model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru"),
  ...                           keras.layers.Dense(2)])
  >>> [layer.name for layer in recurrent_layers(model)]
  ['gru']
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List

from tfcompress._keras import KERAS3, flavour_of, keras, layer_classes

__all__ = ["recurrent_layers", "static_batch_reason", "fusable_copy", "while_loop_layers",
           "refuse_calibration"]

_LOG = logging.getLogger("tfcompress.export")


def _walk(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "layers", None) is not None:
            yield from _walk(layer)
        else:
            yield layer


def _recurrent_in(layer: Any) -> List[Any]:
    """The recurrent layers ``layer`` is or wraps (Bidirectional: its forward and backward
    layers; TimeDistributed and other wrappers: their ``layer``)."""
    rnn_classes = tuple(layer_classes("RNN"))
    if isinstance(layer, rnn_classes):
        return [layer]
    inner = [getattr(layer, name, None) for name in ("forward_layer", "backward_layer")]
    inner = [x for x in inner if x is not None] or [getattr(layer, "layer", None)]
    return [rnn for x in inner if x is not None for rnn in _recurrent_in(x)]


def recurrent_layers(model: Any) -> List[Any]:
    """The top-level layers of ``model`` (nested models searched) that are or wrap a
    recurrent layer (``RNN`` subclasses: LSTM, GRU, SimpleRNN, ConvLSTM, ...)."""
    return [layer for layer in _walk(model) if _recurrent_in(layer)]


def static_batch_reason(model: Any) -> str:
    """Why ``model`` needs a static batch, or ``""``."""
    layers = recurrent_layers(model)
    if not layers:
        return ""
    names = ", ".join(f"{type(layer).__name__} {layer.name!r}" for layer in layers[:3])
    return f"it has recurrent layers ({names}), which TFLite converts with static shapes only"


def _has_lstm(model: Any) -> bool:
    lstm = tuple(layer_classes("LSTM"))
    return any(isinstance(rnn, lstm) for layer in _walk(model) for rnn in _recurrent_in(layer))


def fusable_copy(model: Any) -> Any:
    """The model to convert: a Keras 3 model with LSTM layers becomes its tf_keras copy,
    whose LSTMs convert to fused kernels; any other model (or a Keras 3 model that has no
    tf_keras copy, e.g. with custom layers) is returned as is."""
    if flavour_of(model) is not KERAS3 or not _has_lstm(model):
        return model
    from tfcompress.convert import to_tf_keras

    try:
        return to_tf_keras(model)
    except ValueError as error:
        _LOG.debug("Exporting %r without fused LSTM kernels: %s", model.name, error)
        return model


def _fused(rnn: Any) -> bool:
    """Whether the converter fuses ``rnn``: a tf_keras LSTM in the configuration its fused
    (cuDNN-compatible) function is traced for."""
    if not isinstance(rnn, keras.layers.LSTM):
        return False
    config = rnn.get_config()
    return (config.get("activation") == "tanh" and config.get("recurrent_activation") == "sigmoid"
            and not config.get("recurrent_dropout") and config.get("use_bias", True)
            and not config.get("unroll"))


def while_loop_layers(model: Any) -> List[Any]:
    """The layers of ``model`` whose recurrence converts to a ``WHILE`` loop: all recurrent
    layers but fused LSTMs and those built with ``unroll=True``."""
    return [layer for layer in _walk(model) for rnn in _recurrent_in(layer)
            if not (_fused(rnn) or rnn.get_config().get("unroll"))]


def refuse_calibration(model: Any) -> None:
    """Raises if int8 calibration of ``model`` (the model to be converted, after
    :func:`fusable_copy`) would run a recurrent ``WHILE`` loop: the converter crashes the
    process there.

    Raises:
      ValueError: naming the recurrent layers and the options that work.
    """
    layers = list(dict.fromkeys(while_loop_layers(model)))
    if not layers:
        return
    names = ", ".join(repr(layer.name) for layer in layers)
    raise ValueError(
        f"int8 calibration of {model.name!r} would crash the TFLite converter: its recurrent "
        f"layers {names} convert to a WHILE loop (GRU and SimpleRNN have no fused TFLite "
        "kernel), which the calibrator cannot run. Build those layers with unroll=True (same "
        "weights), or export with quantize='dynamic', 'float16' or None."
    )
