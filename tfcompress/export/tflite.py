"""TFLite export of tf_keras and Keras 3 models: float32, dynamic-range, float16 and int8
(int4 weight storage on request); builtin ops or TF Select; dynamic or static batch; written
atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import tempfile
import warnings
from typing import Any, Iterator, Optional, Tuple

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
from tfcompress.export import calibration, int4, recurrent, serving
from tfcompress.export.batch import (
    BatchSize,
    StaticBatchWarning,
    check_batch_size,
    dynamic_batch_problem,
)
from tfcompress.export.calibration import RepresentativeData
from tfcompress.export.conversion_errors import ConversionError, captured_stderr, explain
from tfcompress.quantization.tflite_mode import tflite_export_mode

__all__ = ["QUANTIZE_OPTIONS", "ConversionError", "StaticBatchWarning", "is_qat_model",
           "to_tflite"]


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


@dataclasses.dataclass(frozen=True)
class _Options:
    """The resolved options of one :func:`to_tflite` call."""

    quantize: Optional[str]
    io_dtype: str
    select_tf_ops: bool
    qat: bool
    representative_data: Optional[RepresentativeData]

    @property
    def calibrating(self) -> bool:
        """int8 for a float model: ranges come from representative data."""
        return _QUANTIZATIONS[self.quantize].integer and not self.qat


def _configure(converter: "tf.lite.TFLiteConverter", options: _Options, representative) -> None:
    """Sets the options of one ``quantize`` row, and the op sets: builtin ops only (the
    converter's default), or builtins and TF Select ops."""
    row = _QUANTIZATIONS[options.quantize]
    if row.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if row.supported_types:
        converter.target_spec.supported_types = list(row.supported_types)
    if representative is not None:
        converter.representative_dataset = representative
    if options.io_dtype != "float32":
        converter.inference_input_type = _IO_DTYPES[options.io_dtype]
        converter.inference_output_type = _IO_DTYPES[options.io_dtype]
    if options.select_tf_ops:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]


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


@contextlib.contextmanager
def _static_keras_converter(model: Any, batch: int) -> Iterator["tf.lite.TFLiteConverter"]:
    """A converter for a tf_keras model traced with a static batch, from a SavedModel that
    holds only the model's variables and that one function: like ``from_keras_model``'s
    SavedModel it keeps QAT fake-quant ops and LSTM fusion, without tf_keras's tracing of
    every layer for serialization (6x faster for an LSTM)."""
    names = getattr(model, "input_names", None) or [None] * len(model.inputs)
    specs = [tf.TensorSpec((batch,) + tuple(t.shape[1:]), t.dtype, name=name)
             for t, name in zip(model.inputs, names)]

    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    module = tf.Module()
    module.variables_ = list(model.variables)
    module.serve = tf.function(serve, input_signature=specs)
    with tempfile.TemporaryDirectory(prefix="tfcompress-") as staging:
        folder = str(pathlib.Path(staging) / "saved_model")
        tf.saved_model.save(module, folder, signatures=module.serve.get_concrete_function())
        yield tf.lite.TFLiteConverter.from_saved_model(folder)


@contextlib.contextmanager
def _new_converter(model: Any, batch: Optional[int]) -> Iterator["tf.lite.TFLiteConverter"]:
    """The converter of either flavour for a dynamic (``None``) or static batch: tf_keras
    models convert directly, Keras 3 models through a staged SavedModel (see
    :mod:`tfcompress.export.serving`)."""
    if flavour_of(model) is KERAS3:
        with serving.saved_model_converter(model, batch) as converter:
            yield converter
    elif batch is None:
        yield tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        with _static_keras_converter(model, batch) as converter:
            yield converter


def _convert(model: Any, options: _Options, batch: Optional[int]) -> bytes:
    """The flatbuffer of ``model`` for ``batch``; the converter's stderr is captured.

    Raises:
      ConversionError: a short explanation when the converter fails.
    """
    representative = calibration.representative_dataset(
        model, options.representative_data, options.calibrating, batch)
    # Low-bit PACT/weight quantizers trace 8-bit ops that TFLite kernels accept; a Keras 3
    # model is traced while it is staged, a tf_keras one while it converts.
    mode = tflite_export_mode() if options.qat else contextlib.nullcontext()
    with captured_stderr() as captured:
        try:
            with mode, _new_converter(model, batch) as converter:
                _configure(converter, options, representative)
                return converter.convert()
        except (ValueError, TypeError):
            raise
        except Exception as error:  # TF raises ConverterError and assorted runtime errors.
            failure = error
    raise explain(failure, captured.text, model, options.quantize, batch) from failure


def _warn_static(model: Any, reason: str) -> None:
    warnings.warn(
        f"{model.name!r}: wrote a static batch of 1 instead of a dynamic batch: {reason}. "
        "Pass batch_size=N for another static batch.", StaticBatchWarning, stacklevel=4)


def _store_int4(model: Any, tmp: pathlib.Path) -> None:
    """Repacks the int8 file ``tmp`` with int4 weights; warns about tensors left int8."""
    content, report = int4.repack_int4_bytes(tmp.read_bytes(), repr(model.name))
    tmp.write_bytes(content)
    if report.kept:
        kept = "; ".join(f"{t.tensor} ({t.op}): {t.reason}" for t in report.kept)
        warnings.warn(f"{model.name!r}: {len(report.packed)} weight tensors stored as int4, "
                      f"{len(report.kept)} kept int8: {kept}.", int4.Int4Warning, stacklevel=3)


def _write(model: Any, source: Any, options: _Options, batch: BatchSize,
           tmp: pathlib.Path) -> None:
    """Converts ``source`` (``model`` or its fusable copy) into ``tmp`` for ``batch``."""
    reason = recurrent.static_batch_reason(model) if batch == "auto" else ""
    if batch != "auto" or reason:
        tmp.write_bytes(_convert(source, options, 1 if batch == "auto" else batch))
        if reason:
            _warn_static(model, reason)
        return
    try:
        tmp.write_bytes(_convert(source, options, None))
    except ConversionError as error:
        if error.ops:  # ops without a builtin kernel: a static batch does not help
            raise
        try:
            tmp.write_bytes(_convert(source, options, 1))
        except ConversionError:
            raise error  # the dynamic attempt's explanation, as the user asked for "auto"
        first_line = str(error).splitlines()[0]
        _warn_static(model, "the dynamic batch failed to convert ("
                     + first_line.split(" failed: ", 1)[-1] + ")")
        return
    problem = dynamic_batch_problem(model, tmp, compare_keras=not options.qat)
    if problem:
        tmp.write_bytes(_convert(source, options, 1))
        _warn_static(model, f"the dynamic-batch file failed a check: {problem}")


def to_tflite(
    model: "keras.Model",
    path: PathLike,
    quantize: Optional[str] = "auto",
    representative_data: Optional[RepresentativeData] = None,
    *,
    io_dtype: str = "float32",
    select_tf_ops: bool = False,
    batch_size: BatchSize = "auto",
    weight_storage: str = "int8",
) -> pathlib.Path:
    """Converts a tf_keras or Keras 3 model to a ``.tflite`` file.

    A Keras 3 model (TensorFlow backend) is converted through a SavedModel of its inference
    graph (:mod:`tfcompress.export.serving`); the options and the result are the same. A
    Keras 3 model with LSTM layers is converted through its tf_keras copy, whose LSTMs
    become fused TFLite kernels (see :mod:`tfcompress.export.recurrent`).

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

    ``batch_size``: an int writes a static batch of that size, ``None`` a dynamic batch.
    ``"auto"`` writes a dynamic batch, unless the model has recurrent layers (TFLite needs
    static shapes for them), the dynamic batch fails to convert, or LiteRT cannot run the
    dynamic file on a batch of two / its outputs differ from Keras's
    (:func:`tfcompress.export.batch.dynamic_batch_problem`): then it writes a static batch
    of 1 and warns (:class:`StaticBatchWarning`) with the reason.

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
      select_tf_ops: also allow TF Select (flex) ops for TF ops without a TFLite builtin
        kernel (e.g. ``MaxPool3D``); the file then runs only where LiteRT links the flex
        delegate.
      batch_size: ``"auto"``, ``None`` (dynamic) or a positive int (static).
      weight_storage: ``"int8"``, or ``"int4"``: weights trained at <= 4 bits (a QAT model
        with ``weight_bits<=4``, ``quantize="int8"``) stored two per byte, where LiteRT has
        int4 kernels (:mod:`tfcompress.export.int4`); tensors that do not fit stay int8,
        named by an :class:`~tfcompress.export.int4.Int4Warning`.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      TypeError: for a non-model.
      ValueError: for an unknown option, int8 without representative data for a float
        model (or calibration the converter would crash on: recurrent WHILE loops), a
        mixed-precision (float16 compute) model, a subclassed Keras 3 model, an output
        folder that does not exist or is not writable, ``weight_storage="int4"`` for a
        model whose weights were not trained at <= 4 bits.
      RuntimeError: for a Keras 3 model on a backend other than TensorFlow.
      ConversionError: (a ``ValueError``) if the TFLite converter fails: a few lines
        naming the ops without a builtin kernel, their layers and the fix; the converter's
        full output is on its ``details``.

    Example:
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> import tempfile
      >>> to_tflite(model, tempfile.mkdtemp() + "/dense.tflite", quantize=None).name
      'dense.tflite'
      >>> import keras  # Keras 3
      >>> from tfcompress.export import input_shapes, quantization_kind
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> path = to_tflite(model, tempfile.mkdtemp() + "/k3.tflite", "float16", batch_size=3)
      >>> quantization_kind(path), input_shapes(path)
      ('float16', [(3, 4)])
    """
    check_model(model)
    qat, resolved = _check_options(model, quantize, io_dtype)
    int4.check_weight_storage(weight_storage, resolved, qat)
    batch = check_batch_size(batch_size)
    path = output_path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder. Pass a file path such as 'model.tflite'.")
    options = _Options(resolved, io_dtype, bool(select_tf_ops), qat, representative_data)
    # Bad representative data fails here, before any conversion.
    calibration.representative_dataset(model, representative_data, options.calibrating,
                                       batch if isinstance(batch, int) else None)
    source = recurrent.fusable_copy(model)
    if options.calibrating:
        recurrent.refuse_calibration(source)
    with atomic_file(path) as tmp:
        _write(model, source, options, batch, tmp)
        if weight_storage == "int4":
            _store_int4(model, tmp)
    return path
