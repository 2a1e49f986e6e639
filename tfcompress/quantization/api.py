"""One-call PACT quantization-aware training: ``quantize_model``, ``quantize_scope``,
``clip_ranges``."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, Sequence, Tuple

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_layer,
    quantize_wrapper,
)

from tfcompress._keras import keras, require_graph_model
from tfcompress._validate import require_float32
from tfcompress.quantization.configs import PACTQuantizeConfig, rule_for, supported_types
from tfcompress.quantization.pact import PACTQuantizer
from tfcompress.quantization.prepare import prepare_for_qat
from tfcompress.quantization.scheme import PACTQuantizeScheme
from tfcompress.quantization import serialization
from tfcompress.quantization.weights import ChannelWeightQuantizer



_CUSTOM_OBJECTS = {
    cls.__name__: cls
    for cls in (PACTQuantizer, PACTQuantizeConfig, ChannelWeightQuantizer)
}
_CUSTOM_OBJECTS.update(serialization.CUSTOM_OBJECTS)


@contextlib.contextmanager
def quantize_scope(*custom_objects: Dict[str, type]) -> Iterator[None]:
    """Scope in which tfmot and tfcompress quantized models can be loaded or cloned.

    tfcompress' own classes are registered with Keras and load anywhere; tfmot's wrapper
    classes (``QuantizeWrapperV2``, ``QuantizeLayer`` …) need this scope.

    Args:
      *custom_objects: extra ``{name: class}`` dicts, e.g. for your own layers.

    Example:
      >>> import tempfile, os
      >>> qat = quantize_model(tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]))
      >>> path = os.path.join(tempfile.mkdtemp(), "qat.keras")
      >>> qat.save(path)
      >>> with quantize_scope():
      ...     restored = tf_keras.models.load_model(path)
    """
    extra = dict(_CUSTOM_OBJECTS)
    for objects in custom_objects:
        extra.update(objects)
    # Nested so that our names win over tfmot's (its scope lists its own objects last).
    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(extra):
        yield


def _unsupported(model: keras.Model, exclude: Iterable[str]) -> Sequence[str]:
    return [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
            if layer.name not in exclude and rule_for(layer) is None]


def quantize_model(
    model: keras.Model,
    activation_bits: int = 8,
    weight_bits: int = 8,
    *,
    exclude: Sequence[str] = (),
    skip_unsupported: bool = False,
    **pact_options,
) -> keras.Model:
    """Makes a float model ready for PACT quantization-aware training.

    The model is first rewritten as TFLite will run it (SeparableConv split, BatchNorm
    folded into the preceding Conv/Dense, see :mod:`tfcompress.quantization.prepare`);
    then every layer is annotated and ``quantize_apply`` runs with
    :class:`PACTQuantizeScheme`: per-channel symmetric weights at ``weight_bits``, PACT on
    every activation at ``activation_bits``, activations that TFLite fuses (Conv -> ReLU)
    quantized once, after the fused op.

    Args:
      model: a built Functional or Sequential tf_keras model, typically trained in float.
      activation_bits: activation bit width, 2 to 8.
      weight_bits: weight bit width, 2 to 8.
      exclude: names of layers to keep in float.
      skip_unsupported: if True, layers with no quantization rule stay float (TFLite then
        runs them in float between dequantize/quantize ops); if False they raise.
      **pact_options: :class:`PACTQuantizer` options (``mode``, ``alpha_init``, ``beta_init``,
        ``decay``, ``calibration_steps``).

    Returns:
      A new model of tfmot quantize wrappers to compile and train (fine-tune) as
      usual. Save and load it inside :func:`quantize_scope`; export it with
      ``tfcompress.export.to_tflite`` to get an int8 file.

    Raises:
      TypeError: for a Keras 3 model or a non-model, or unknown PACT options.
      ValueError: for a subclassed or unbuilt model, a mixed-precision model or policy,
        bad bit widths or options, unknown ``exclude`` names, or layers with no
        quantization rule (listed in the message).

    Example:
      >>> model = tf_keras.Sequential([
      ...     tf_keras.layers.Conv2D(8, 3, input_shape=(16, 16, 1)),
      ...     tf_keras.layers.BatchNormalization(), tf_keras.layers.ReLU(),
      ...     tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(10)])
      >>> qat = quantize_model(model, activation_bits=4, weight_bits=4)
      >>> qat.output_shape
      (None, 10)
    """
    require_graph_model(model)
    require_float32(model, "PACT quantization-aware training")
    config = PACTQuantizeConfig(weight_bits, activation_bits, **pact_options)
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError(f"`exclude` names layers that are not in the model: {unknown}.")
    unsupported = _unsupported(model, exclude)
    if unsupported and not skip_unsupported:
        raise ValueError(
            f"PACT cannot quantize these layers: {', '.join(unsupported)}. Pass "
            "`skip_unsupported=True` to keep them in float, or `exclude=[...]` to name them. "
            f"Supported layer types: {', '.join(supported_types())}."
        )
    prepared = prepare_for_qat(model)
    keep_float = set(exclude) | {layer.name for layer in prepared.layers if rule_for(layer) is None}

    def annotate(layer):
        if layer.name in keep_float or isinstance(layer, keras.layers.InputLayer):
            return layer
        return tfmot.quantization.keras.quantize_annotate_layer(
            layer, PACTQuantizeConfig.from_config(config.get_config()))

    annotated = keras.models.clone_model(prepared, clone_function=annotate)
    annotated.set_weights(prepared.get_weights())
    return quantize_apply(annotated, PACTQuantizeScheme(weight_bits, activation_bits, **pact_options))


def quantize_apply(model: keras.Model, scheme=None) -> keras.Model:
    """tfmot's ``quantize_apply``, returning a model that also saves as ``.keras``.

    Use it like tfmot's (``scheme`` defaults to tfmot's 8-bit scheme; pass
    :class:`PACTQuantizeScheme` to get PACT on every annotated layer without an explicit
    config). The only difference: the wrappers of the result are switched to
    :mod:`tfcompress.quantization.serialization`'s classes, which tfmot lacks for the
    ``.keras`` format.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> annotated = tfmot.quantization.keras.quantize_annotate_model(
      ...     tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]))
      >>> quantize_apply(annotated, PACTQuantizeScheme(4, 4)).output_shape
      (None, 2)
    """
    with quantize_scope():
        if scheme is None:
            quantized = tfmot.quantization.keras.quantize_apply(model)
        else:
            quantized = tfmot.quantization.keras.quantize_apply(model, scheme)
    return serialization.adopt(quantized)


def _pact_quantizers(model: keras.Model):
    """Yields ``(key, quantizer, weights)`` for every PACT quantizer in ``model``."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _pact_quantizers(layer)
        elif isinstance(layer, quantize_layer.QuantizeLayer):
            if isinstance(layer.quantizer, PACTQuantizer):
                yield layer.name, layer.quantizer, layer.quantizer_vars
        elif isinstance(layer, quantize_wrapper.QuantizeWrapper):
            outputs = getattr(layer, "_output_quantizers", None) or []
            if outputs and isinstance(outputs[0], PACTQuantizer):
                yield layer.layer.name, outputs[0], layer._output_quantizer_vars
            for activation in getattr(layer, "_quantize_activations", []):
                weights = getattr(activation, "_post_activation_vars", None) \
                    or getattr(activation, "_pre_activation_vars", None)
                if isinstance(activation.quantizer, PACTQuantizer) and weights:
                    yield layer.layer.name, activation.quantizer, weights


def clip_ranges(model: keras.Model) -> Dict[str, Tuple[float, float]]:
    """The learned PACT clipping range of every quantized tensor.

    Args:
      model: a model returned by :func:`quantize_model` or by ``quantize_apply`` with PACT
        configs.

    Returns:
      ``{layer name: (low, high)}`` where ``low`` is ``-beta`` (``-alpha`` in symmetric mode,
      0 in relu mode) and ``high`` is ``alpha``. Model inputs are keyed by their
      ``QuantizeLayer``'s name.

    Example:
      >>> qat = quantize_model(tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]),
      ...                      alpha_init=3.0, mode="symmetric")
      >>> sorted(clip_ranges(qat).values())
      [(-3.0, 3.0), (-3.0, 3.0)]
    """
    require_graph_model(model)
    ranges = {}
    for key, quantizer, weights in _pact_quantizers(model):
        low, high = quantizer.clip_range(weights)
        ranges[key] = (float(low), float(high))
    return ranges
