"""``ClipRangeLogger``: the learned PACT ranges in ``logs`` during ``fit``."""

from __future__ import annotations

from tfcompress._keras import callback_bases, serializable
from tfcompress.quantization.api import clip_ranges


@serializable("tfcompress")
class ClipRangeLogger(*callback_bases()):
    """Writes each PACT clip range into ``logs`` at the end of every epoch.

    Keys are ``pact/<layer>/alpha`` and ``pact/<layer>/low`` (``-beta``), so ``History``,
    ``CSVLogger`` and ``TensorBoard`` (as scalars) record how the ranges move. Reading a few
    scalars once per epoch costs nothing measurable. Put it before those callbacks in the
    list so that they see the values. The same callback works in tf_keras' and Keras 3's
    ``fit``.

    Example:
      >>> import numpy as np
      >>> import tf_keras
      >>> from tfcompress.quantization import quantize_model
      >>> qat = quantize_model(tf_keras.Sequential([
      ...     tf_keras.layers.Dense(3, input_shape=(4,)), tf_keras.layers.ReLU(name="act")]),
      ...     mode="relu", alpha_init=2.0)
      >>> qat.compile("sgd", "mse")
      >>> x, y = np.ones((8, 4), np.float32), np.ones((8, 3), np.float32)
      >>> history = qat.fit(x, y, epochs=3, verbose=0, callbacks=[ClipRangeLogger()])
      >>> len(history.history["pact/act/alpha"]), history.history["pact/act/low"]
      (3, [0.0, 0.0, 0.0])

      In Keras 3:

      >>> import keras
      >>> qat = quantize_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
      ...                                        keras.layers.ReLU(name="act")]),
      ...                      mode="relu", alpha_init=2.0)
      >>> qat.compile("sgd", "mse")
      >>> history = qat.fit(x, y, epochs=2, verbose=0, callbacks=[ClipRangeLogger()])
      >>> history.history["pact/act/low"]
      [0.0, 0.0]
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for layer, (low, high) in clip_ranges(self.model).items():
            logs[f"pact/{layer}/alpha"] = high
            logs[f"pact/{layer}/low"] = low

    def get_config(self):
        return {}
