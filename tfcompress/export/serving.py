"""Keras 3 models as TensorFlow SavedModels: the inference graph both exports start from.

tf_keras saves a SavedModel with ``model.save(folder, save_format="tf")`` and TFLite converts
it with ``TFLiteConverter.from_keras_model``. Keras 3 has neither a SavedModel ``save`` nor a
``from_keras_model`` we can use quietly (TF 2.21's converts a Keras 3 model through the same
``ExportArchive`` and prints every signature on stdout), so for Keras 3 models tfcompress
writes the SavedModel itself: one ``serve`` endpoint (also ``serving_default``) that calls
the model with ``training=False``, from the model's symbolic inputs.

The SavedModel route, not ``tf.function`` concrete functions, is the one that keeps QAT
fake-quant ops convertible: frozen through a concrete function, fake-quant ops whose ranges
are variables stay TF ops that builtin TFLite cannot run.

Example:
  >>> import tempfile
  >>> import numpy as np
  >>> from tfcompress._keras import keras3
  >>> model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
  >>> folder = tempfile.mkdtemp() + "/served"
  >>> write_saved_model(model, folder)
  >>> x = np.ones((3, 4), np.float32)
  >>> bool(np.allclose(run_saved_model(folder, x), model.predict(x, verbose=0), atol=1e-6))
  True
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import tempfile
from typing import Any, Iterator, List, Optional

import numpy as np
import tensorflow as tf

from tfcompress._io import PathLike
from tfcompress._keras import keras3, require_tensorflow_backend

__all__ = ["input_signature", "write_saved_model", "saved_model_converter", "run_saved_model"]


def input_signature(model: Any, what: str = "Export", batch_size: Optional[int] = None
                    ) -> List[Any]:
    """``tf.TensorSpec`` of each of a Keras 3 model's symbolic inputs: batch size free, or
    ``batch_size`` (a static batch).

    Raises:
      ValueError: for a subclassed model, whose input shape Keras 3 does not record.
    """
    try:
        inputs = list(model.inputs)
    except AttributeError:
        inputs = []
    if not inputs:
        raise ValueError(
            f"{what} of {model.name!r} ({type(model).__name__}) needs its input shape, but it is "
            "a subclassed Keras 3 model without symbolic inputs. Wrap it in a Functional model: "
            "`inputs = keras.Input(shape); wrapped = keras.Model(inputs, model(inputs))`."
        )
    specs = [tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype, name=t.name)
             for t in inputs]
    return [specs] if len(specs) > 1 else specs


def write_saved_model(model: Any, folder: PathLike, batch_size: Optional[int] = None) -> None:
    """Writes a Keras 3 model's inference graph (``serve`` and ``serving_default``, called
    with ``training=False``) as a SavedModel in ``folder`` (not atomically: callers stage it),
    for any batch size or only for ``batch_size``.

    Raises:
      RuntimeError: on a Keras 3 backend other than TensorFlow.
      ValueError: for a subclassed model (see :func:`input_signature`).
    """
    require_tensorflow_backend("SavedModel and TFLite export")
    signature = input_signature(model, batch_size=batch_size)
    archive = keras3.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False), signature)
    archive.write_out(str(folder), verbose=False)


@contextlib.contextmanager
def saved_model_converter(model: Any, batch_size: Optional[int] = None
                          ) -> Iterator["tf.lite.TFLiteConverter"]:
    """A ``TFLiteConverter`` for a Keras 3 model (dynamic batch, or static ``batch_size``),
    valid inside the ``with`` block.

    The model is staged as a SavedModel in a temporary folder, removed on exit (the converter
    reads the folder when it converts).
    """
    with tempfile.TemporaryDirectory(prefix="tfcompress-") as staging:
        folder = pathlib.Path(staging) / "saved_model"
        write_saved_model(model, folder, batch_size)
        yield tf.lite.TFLiteConverter.from_saved_model(str(folder))


def run_saved_model(folder: PathLike, data: np.ndarray) -> np.ndarray:
    """Runs the ``serving_default`` signature of a single-output SavedModel on ``data``,
    as TensorFlow Serving would (no Keras involved).

    Raises:
      ValueError: if the folder has no ``serving_default`` signature, or several inputs or
        outputs.
    """
    loaded = tf.saved_model.load(str(folder))
    if "serving_default" not in loaded.signatures:
        raise ValueError(f"{str(folder)!r} has no 'serving_default' signature to run.")
    serve = loaded.signatures["serving_default"]
    names = list(serve.structured_input_signature[1])
    if len(names) != 1 or len(serve.structured_outputs) != 1:
        raise ValueError(
            f"{str(folder)!r} has {len(names)} inputs and {len(serve.structured_outputs)} "
            "outputs; only single-input, single-output models can be run here."
        )
    outputs = serve(**{names[0]: tf.constant(np.asarray(data, np.float32))})
    return next(iter(outputs.values())).numpy()
