"""Export tf_keras and Keras 3 models to SavedModel and TFLite, and check the result.

* :func:`to_tflite` - float32, dynamic-range, float16 or int8 ``.tflite`` files; builtin
  ops or TF Select (``select_tf_ops``); dynamic or static batch (``batch_size``, with a
  :class:`StaticBatchWarning` when ``"auto"`` falls back to a static batch of 1).
  :class:`ConversionError` explains a failed conversion in a few lines.
* :func:`to_saved_model`, :func:`save_model`, :func:`load_model` - Keras model files
  (:func:`file_flavour`: which Keras wrote one).

Keras 3 models need Keras 3's TensorFlow backend for TFLite and SavedModel export.
* :func:`repack_int4` - weights trained at <= 4 bits stored two per byte (``INT4``); also
  ``to_tflite(..., weight_storage="int4")``.
* :func:`verify` - Keras vs TFLite parity (max difference, top-1 agreement, float fallbacks).
* :func:`tflite_ops`, :func:`activation_ranges`, :func:`input_shapes`, :func:`flex_ops` -
  what is inside a ``.tflite`` file.
* :mod:`tfcompress.export.litert` - run and time ``.tflite`` files with LiteRT.

All writes are atomic: a failed export leaves no file and never clobbers an existing one.

Example:
  >>> import tempfile
  >>> import numpy as np
  >>> import tf_keras as keras
  >>> from tfcompress import export
  >>> keras.utils.set_random_seed(0)
  >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
  ...                           keras.layers.Dense(3)])
  >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
  >>> path = export.to_tflite(model, tempfile.mkdtemp() + "/model.tflite", quantize="int8",
  ...                         representative_data=x)
  >>> export.quantization_kind(path)
  'int8'
  >>> report = export.verify(model, path, x, min_agreement=0.9)
  >>> report.passed, report.kind, report.samples
  (True, 'int8', 64)
"""

from tfcompress.export import litert
from tfcompress.export.batch import StaticBatchWarning
from tfcompress.export.conversion_errors import ConversionError
from tfcompress.export.flatbuffer import (
    QuantRange,
    TFLiteOp,
    activation_ranges,
    flex_ops,
    float_fallback_ops,
    input_shapes,
    quantization_kind,
    tflite_ops,
)
from tfcompress.export.int4 import WEIGHT_STORAGES, Int4Report, Int4Warning, repack_int4
from tfcompress.export.saved_model import (
    file_flavour,
    load_model,
    model_format,
    save_model,
    to_saved_model,
)
from tfcompress.export.tflite import QUANTIZE_OPTIONS, is_qat_model, to_tflite
from tfcompress.export.verify import ParityError, ParityReport, verify

__all__ = [
    "QUANTIZE_OPTIONS",
    "ConversionError",
    "Int4Report",
    "Int4Warning",
    "ParityError",
    "ParityReport",
    "QuantRange",
    "StaticBatchWarning",
    "WEIGHT_STORAGES",
    "TFLiteOp",
    "activation_ranges",
    "file_flavour",
    "flex_ops",
    "float_fallback_ops",
    "input_shapes",
    "is_qat_model",
    "litert",
    "load_model",
    "model_format",
    "quantization_kind",
    "repack_int4",
    "save_model",
    "tflite_ops",
    "to_saved_model",
    "to_tflite",
    "verify",
]
