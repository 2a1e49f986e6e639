"""``ClipRangeLogger``: the learned PACT ranges in ``logs`` during ``fit``."""

from __future__ import annotations

from tfcompress._keras import keras
from tfcompress.quantization.api import clip_ranges


@keras.utils.register_keras_serializable(package="tfcompress")
class ClipRangeLogger(keras.callbacks.Callback):
    """Writes each PACT clip range into ``logs`` at the end of every epoch.

    Keys are ``pact/<layer>/alpha`` and ``pact/<layer>/low`` (``-beta``), so ``History``,
    ``CSVLogger`` and ``TensorBoard`` (as scalars) record how the ranges move. Reading a few
    scalars once per epoch costs nothing measurable. Put it before those callbacks in the
    list so that they see the values.

    Example:
      >>> history = qat.fit(x, y, epochs=3, callbacks=[ClipRangeLogger()])  # doctest: +SKIP
      >>> history.history["pact/stem_relu/alpha"]  # doctest: +SKIP
      [4.71, 4.65, 4.62]
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for layer, (low, high) in clip_ranges(self.model).items():
            logs[f"pact/{layer}/alpha"] = high
            logs[f"pact/{layer}/low"] = low

    def get_config(self):
        return {}
