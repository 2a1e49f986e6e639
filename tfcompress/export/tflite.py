"""TFLite export of tf_keras and Keras 3 models: float32, dynamic-range, float16 and int8,
written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from typing import Callable, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfcompress._internals import tfmot_private
from tfcompress._io import PathLike, atomic_file, output_path
from tfcompress._keras import (
    KERAS3,
    check_model,
    flavour_of,
    is_model,
    keras,
    require_tensorflow_backend,
)
from tfcompress._validate import float16_layers
from tfcompress.export import serving
from tfcompress.quantization.tflite_mode import tflite_export_mode

__all__ = ["QUANTIZE_OPTIONS", "ConversionError", "is_qat_model", "to_tflite"]

RepresentativeData = Union[np.ndarray, Iterable, Callable[[], Iterable]]


class ConversionError(ValueError):
    """The TFLite converter rejected the model; the message keeps TF's first lines."""


@dataclasses.dataclass(frozen=True)
class _Quantization:
    """How one ``quantize`` option configures ``tf.lite.TFLiteConverter``."""

    optimize: bool
    supported_types: tuple = ()
    integer: bool = False
    description: str = ""


#: The ``quantize`` options of :func:`to_tflite`, one row each ("auto" resolves to a row).
_QUANTIZATIONS = {
    None: _Quantization(optimize=False, description="float32 weights and activations"),
    "dynamic": _Quantization(optimize=True, description="int8 weights, float activations"),
    "float16": _Quantization(
        optimize=True, supported_types=(tf.float16,), description="float16 weights"
    ),
    "int8": _Quantization(
        optimize=True, integer=True, description="int8 weights and activations"
    ),
}
QUANTIZE_OPTIONS = ("auto",) + tuple(_QUANTIZATIONS)
_IO_DTYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


def _qat_layer_types() -> tuple:
    return (tfmot_private("quantize_wrapper").QuantizeWrapper,
            tfmot_private("quantize_layer").QuantizeLayer)


def _walk_layers(model: "keras.Model") -> Iterator["keras.layers.Layer"]:
    """Every layer of ``model``, recursing into nested models and (Keras 3) into the
    ``layer`` of wrapper layers."""
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from _walk_layers(layer)
        elif flavour_of(layer) is KERAS3 and flavour_of(getattr(layer, "layer", None)):
            yield layer.layer


def _is_keras3_qat_layer(layer: object) -> bool:
    """The Keras 3 QAT contract: a QAT layer's class has ``tfcompress_qat = True``."""
    return getattr(type(layer), "tfcompress_qat", False) is True


def is_qat_model(model: "keras.Model") -> bool:
    """True if ``model`` is quantization-aware: for tf_keras, it went through tfmot
    ``quantize_apply`` (PACT or tfmot's own scheme); for Keras 3, one of its layers (nested
    ones too) is a tfcompress QAT layer (its class has ``tfcompress_qat = True``).

    Such a model carries its quantization ranges, so its int8 export needs no
    representative data.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> is_qat_model(model), is_qat_model(tfmot.quantization.keras.quantize_model(model))
      (False, True)
    """
    check_model(model)
    if flavour_of(model) is KERAS3:
        return _is_keras3_qat_layer(model) or any(
            _is_keras3_qat_layer(layer) for layer in _walk_layers(model))
    qat_types = _qat_layer_types()
    return any(isinstance(layer, qat_types) for layer in _walk_layers(model))


def _resolve(quantize: Optional[str], qat: bool) -> Optional[str]:
    if quantize == "auto":
        return "int8" if qat else None
    if quantize not in _QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantize={quantize!r}. Choose one of {list(QUANTIZE_OPTIONS)}: "
            + "; ".join(f"{k!r} = {v.description}" for k, v in _QUANTIZATIONS.items())
            + "; 'auto' = int8 for a quantization-aware (QAT) model, else None."
        )
    if qat and quantize in ("dynamic", "float16"):
        raise ValueError(
            f"quantize={quantize!r} does not apply to a quantization-aware (QAT) model: its "
            "fake-quant ranges make the converter emit int8 anyway. Use quantize='int8' "
            "(or 'auto') for the int8 model it was trained for, or export the float model "
            "it was made from."
        )
    return quantize


def _sample_batches(data: RepresentativeData, sample_shape: tuple) -> Iterator[np.ndarray]:
    """Yields single-sample float32 batches from an array, an iterable or a callable."""
    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    elements = [data] if isinstance(data, np.ndarray) else data
    try:
        iterator = iter(elements)
    except TypeError:
        raise TypeError(
            "`representative_data` must be an array of samples, an iterable of batches "
            f"or a function returning one, got {type(data).__name__}."
        ) from None
    count = 0
    for element in iterator:
        if isinstance(element, tuple) and element:
            element = element[0]  # (x, y) pairs, e.g. from a tf.data.Dataset or a generator
        batch = np.asarray(element, dtype=np.float32)
        if batch.ndim == len(sample_shape):
            batch = batch[None]
        if batch.ndim != len(sample_shape) + 1 or any(
            want is not None and want != got for want, got in zip(sample_shape, batch.shape[1:])
        ):
            raise ValueError(
                f"Representative data of shape {batch.shape} does not fit the model input "
                f"(None, {', '.join(map(str, sample_shape))}). Pass samples with the model's "
                "input shape."
            )
        for sample in batch:
            count += 1
            yield [sample[None]]
    if count == 0:
        raise ValueError(
            "`representative_data` yielded no samples, so int8 ranges cannot be calibrated. "
            "Pass ~100 training samples."
        )


def _representative_dataset(model: "keras.Model", data: RepresentativeData) -> Callable:
    if len(model.inputs) != 1:
        raise ValueError(
            f"int8 calibration supports single-input models; {model.name!r} has "
            f"{len(model.inputs)} inputs. Quantize it with tfcompress.quantization (QAT), "
            "whose int8 export needs no representative data."
        )
    sample_shape = tuple(model.inputs[0].shape[1:])
    if isinstance(data, np.ndarray):
        next(_sample_batches(data, sample_shape))  # validate the array before converting
    return lambda: _sample_batches(data, sample_shape)


@contextlib.contextmanager
def _new_converter(model: "keras.Model") -> Iterator["tf.lite.TFLiteConverter"]:
    """The converter of either flavour: tf_keras models convert directly, Keras 3 models
    through a staged SavedModel (see :mod:`tfcompress.export.serving`)."""
    if flavour_of(model) is KERAS3:
        with serving.saved_model_converter(model) as converter:
            yield converter
    else:
        yield tf.lite.TFLiteConverter.from_keras_model(model)


def _calibration(
    model: "keras.Model",
    quantize: Optional[str],
    qat: bool,
    representative_data: Optional[RepresentativeData],
) -> Optional[Callable]:
    """The converter's ``representative_dataset`` (validated), or None if none is needed."""
    if not (_QUANTIZATIONS[quantize].integer and not qat):
        return None
    if representative_data is None:
        raise ValueError(
            "quantize='int8' for a float model needs `representative_data` to calibrate "
            "activation ranges: pass ~100 training samples (an array, an iterable of "
            "batches or a function returning one), or train the model with "
            "tfcompress.quantization.quantize_model, whose ranges come from training."
        )
    return _representative_dataset(model, representative_data)


def _configure(
    converter: "tf.lite.TFLiteConverter",
    quantize: Optional[str],
    representative: Optional[Callable],
    io_dtype: str,
) -> None:
    """Sets the options of one ``quantize`` row. Only builtin ops are allowed (the
    converter's default): no TF Select fallback."""
    row = _QUANTIZATIONS[quantize]
    if row.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if row.supported_types:
        converter.target_spec.supported_types = list(row.supported_types)
    if representative is not None:
        converter.representative_dataset = representative
    if io_dtype != "float32":
        converter.inference_input_type = _IO_DTYPES[io_dtype]
        converter.inference_output_type = _IO_DTYPES[io_dtype]


def _check_options(model: "keras.Model", quantize: Optional[str], io_dtype: str
                   ) -> Tuple[bool, Optional[str]]:
    """``(qat, resolved quantize)``, after refusing what cannot be exported."""
    if float16_layers(model):
        raise ValueError(
            f"{model.name!r} computes in float16 (mixed precision), which TFLite's builtin "
            "kernels do not run. Export a float32 copy: set "
            "`keras.mixed_precision.set_global_policy('float32')`, build the same model and "
            "`set_weights(model.get_weights())`; quantize='float16' then stores float16 weights."
        )
    qat = is_qat_model(model)
    resolved = _resolve(quantize, qat)
    if io_dtype not in _IO_DTYPES:
        raise ValueError(f"Unknown io_dtype={io_dtype!r}. Choose one of {list(_IO_DTYPES)}.")
    if io_dtype != "float32" and resolved != "int8":
        raise ValueError(
            f"io_dtype={io_dtype!r} needs an int8 model, but quantize={quantize!r} gives "
            f"{resolved or 'float32'}. Use quantize='int8' or io_dtype='float32'."
        )
    if flavour_of(model) is KERAS3:
        require_tensorflow_backend("TFLite export")
        serving.input_signature(model, "TFLite export")  # a subclassed model fails here
    return qat, resolved


def _first_lines(error: Exception, count: int = 3) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:count]) or type(error).__name__


def to_tflite(
    model: "keras.Model",
    path: PathLike,
    quantize: Optional[str] = "auto",
    representative_data: Optional[RepresentativeData] = None,
    *,
    io_dtype: str = "float32",
) -> pathlib.Path:
    """Converts a tf_keras or Keras 3 model to a ``.tflite`` file.

    A Keras 3 model (TensorFlow backend) is converted through a SavedModel of its inference
    graph (:mod:`tfcompress.export.serving`); the options and the result are the same.

    ``quantize`` options:

    * ``"auto"`` (default): ``"int8"`` for a quantization-aware model (see
      :func:`is_qat_model`), else ``None``.
    * ``None``: float32 (a QAT model keeps its fake-quant as QUANTIZE/DEQUANTIZE pairs).
    * ``"dynamic"``: int8 weights, activations quantized on the fly (float interface).
    * ``"float16"``: float16 weights, float32 compute.
    * ``"int8"``: int8 weights and activations. A QAT model brings its own ranges; a
      float model is calibrated on ``representative_data``. Ops without an int8 kernel
      stay float; :func:`tfcompress.export.verify` lists them.

    The model's input and output stay float32 (QUANTIZE/DEQUANTIZE at the interface)
    unless ``io_dtype`` asks for an integer interface.

    Args:
      model: a built tf_keras or Keras 3 model (Keras 3: Functional or Sequential).
      path: the ``.tflite`` file to write. It is written atomically: a failed export
        leaves no file and an existing file is replaced only on success.
      quantize: one of ``QUANTIZE_OPTIONS``.
      representative_data: calibration samples for ``"int8"`` on a float model: an array
        ``(n, *input_shape)``, an iterable of batches (``(x, y)`` pairs use ``x``) or a
        function returning such an iterable. ~100 samples are enough.
      io_dtype: ``"float32"``, or ``"int8"``/``"uint8"`` for an integer interface
        (``quantize="int8"`` only).

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a non-model.
      ValueError: for an unknown option, int8 without representative data for a float
        model, a mixed-precision (float16 compute) model, a subclassed Keras 3 model, an
        output folder that does not exist or is not writable.
      RuntimeError: for a Keras 3 model on a backend other than TensorFlow.
      ConversionError: (a ``ValueError``) if the TFLite converter fails.

    Example:
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> import tempfile
      >>> to_tflite(model, tempfile.mkdtemp() + "/dense.tflite", quantize=None).name
      'dense.tflite'
      >>> import keras  # Keras 3
      >>> from tfcompress.export import quantization_kind
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> quantization_kind(to_tflite(model, tempfile.mkdtemp() + "/k3.tflite", "float16"))
      'float16'
    """
    check_model(model)
    qat, resolved = _check_options(model, quantize, io_dtype)
    path = output_path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder. Pass a file path such as 'model.tflite'.")
    representative = _calibration(model, resolved, qat, representative_data)
    # Low-bit PACT/weight quantizers trace 8-bit ops that TFLite kernels accept; a Keras 3
    # model is traced while it is staged, a tf_keras one while it converts.
    mode = tflite_export_mode() if qat else contextlib.nullcontext()
    try:
        with mode, _new_converter(model) as converter:
            _configure(converter, resolved, representative, io_dtype)
            flatbuffer = converter.convert()
    except (ValueError, TypeError):
        raise
    except Exception as error:  # TF raises ConverterError and assorted runtime errors.
        raise ConversionError(
            f"TFLite conversion of {model.name!r} with quantize={resolved!r} failed: "
            f"{_first_lines(error)}. Check that every layer maps to a TFLite builtin op; "
            "try quantize=None to see whether quantization is the cause."
        ) from error
    with atomic_file(path) as tmp:
        tmp.write_bytes(flatbuffer)
    return path
