"""One-call PACT quantization-aware training: ``quantize_model``, ``quantize_scope``,
``clip_ranges``."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import tensorflow_model_optimization as tfmot

from tfcompress._internals import tfmot_private
from tfcompress._keras import flavour_of, keras, keras3, require_graph_model
from tfcompress._validate import check_choice, check_names, require_float32
from tfcompress.quantization import keras3_api, serialization
from tfcompress.quantization.configs import PACTQuantizeConfig, rule_for, supported_types
from tfcompress.quantization.folding import BATCH_NORM_MODES
from tfcompress.quantization.pact import PACTQuantizer
from tfcompress.quantization.prepare import prepare_for_qat
from tfcompress.quantization.recipe import (
    LOW_BIT_ACTIVATIONS,
    layer_bits,
    model_pact_options,
    tracked_outputs,
)
from tfcompress.quantization.scheme import PACTQuantizeScheme
from tfcompress.quantization.weights import ChannelWeightQuantizer

_CUSTOM_OBJECTS = {
    cls.__name__: cls
    for cls in (PACTQuantizer, PACTQuantizeConfig, ChannelWeightQuantizer)
}
_CUSTOM_OBJECTS.update(serialization.CUSTOM_OBJECTS)
_CUSTOM_OBJECTS.update(keras3_api.CUSTOM_OBJECTS)


@contextlib.contextmanager
def quantize_scope(*custom_objects: Dict[str, type]) -> Iterator[None]:
    """Scope in which tfmot and tfcompress quantized models can be loaded or cloned.

    tfcompress' own classes are registered with Keras and load anywhere; tfmot's wrapper
    classes (``QuantizeWrapperV2``, ``QuantizeLayer`` …) need this scope. The scope covers
    Keras 3 too (``keras.saving.load_model``), though Keras 3 QAT models do not need it.

    Args:
      *custom_objects: extra ``{name: class}`` dicts, e.g. for your own layers.

    Example:
      >>> import os, tempfile
      >>> import tf_keras
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
    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(extra), \
            keras3.saving.custom_object_scope(extra):
        yield


def _is_keras3(model) -> bool:
    flavour = flavour_of(model)
    return flavour is not None and flavour.is_keras3


def _check_exclusions(model: keras.Model, exclude, skip_unsupported) -> List[str]:
    """Validates ``exclude`` and refuses unsupported layers unless ``skip_unsupported``."""
    exclude = check_names(exclude, "exclude") or []
    if not isinstance(skip_unsupported, bool):
        raise TypeError(f"`skip_unsupported` must be True or False, got {skip_unsupported!r}.")
    unknown = sorted(set(exclude) - {layer.name for layer in model.layers})
    if unknown:
        raise ValueError(f"`exclude` names layers that are not in the model: {unknown}.")
    unsupported = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers
                   if layer.name not in exclude and rule_for(layer) is None]
    if unsupported and not skip_unsupported:
        raise ValueError(
            f"PACT cannot quantize these layers: {', '.join(unsupported)}. Pass "
            "`skip_unsupported=True` to keep them in float, or `exclude=[...]` to name them. "
            f"Supported layer types: {', '.join(supported_types())}."
        )
    return exclude


def quantize_model(
    model: keras.Model,
    activation_bits: int = 8,
    weight_bits: int = 8,
    *,
    exclude: Sequence[str] = (),
    skip_unsupported: bool = False,
    first_last_bits: Optional[int] = 8,
    weight_range: str = "auto",
    output_range: str = "pact",
    batch_norm: str = "keep",
    low_bit_activations: str = "layer_inputs",
    **pact_options,
) -> keras.Model:
    """Makes a float model ready for PACT quantization-aware training.

    The model is first rewritten as TFLite will run it (SeparableConv split, BatchNorm
    folded into a preceding Dense, see :mod:`tfcompress.quantization.prepare`).
    Then, for a tf_keras model, every layer is annotated and ``quantize_apply`` runs with
    :class:`PACTQuantizeScheme`; for a Keras 3 model the graph is rebuilt with
    :class:`PACTActivation` on each input and :class:`PACTQuantizeWrapper` around each
    quantized layer (:mod:`tfcompress.quantization.keras3_api`). Both place the quantizers
    alike: per-channel symmetric weights at ``weight_bits``, PACT on every activation at
    ``activation_bits``, activations that TFLite fuses (Conv -> ReLU) quantized once, after
    the fused op.

    Args:
      model: a built Functional or Sequential model, tf_keras or Keras 3 (TensorFlow
        backend), typically trained in float.
      activation_bits: activation bit width, 2 to 8.
      weight_bits: weight bit width, 2 to 8.
      exclude: names of layers to keep in float.
      skip_unsupported: if True, layers with no quantization rule stay float (TFLite then
        runs them in float between dequantize/quantize ops); if False they raise.
      first_last_bits: when fewer bits are asked for, the model inputs, the weights of the
        first and last weighted layers and the outputs of the last ones keep this many
        (:mod:`tfcompress.quantization.recipe`); ``None`` quantizes them like the rest.
      weight_range: how each kernel channel's range is chosen below 8 bits: ``"max"``, its
        absolute maximum; ``"mse"``, the fraction of it with the least rounding error;
        ``"learned"``, a trainable step per channel started there (LSQ);
        ``"learned_midrise"``, the same on the grid of all ``2^b`` levels ``(k + 1/2) *
        step`` (no zero level); ``"auto"`` learns it at 2-3 bits (midrise at 2) and takes
        the maximum at 4-7 (what ``benchmarks/qat.py`` measured best; see
        :class:`~tfcompress.quantization.ChannelWeightQuantizer`).
      output_range: ``"pact"`` clips the model's outputs (the logits) on a learned range
        like every other tensor; ``"track"`` ranges them by the running min/max of the
        training batches instead (``track_range=True``), never clipping them (not the
        default: no gain in an exploratory 4-seed run of ``benchmarks/qat.py``).
      batch_norm: ``"keep"`` trains a BatchNorm that follows a Conv2D/DepthwiseConv2D on
        batch statistics, as float training does, and the TFLite converter folds it at
        export (exact: per-channel kernel grids scale with the fold); ``"fold"`` folds it
        into the kernel first and freezes its statistics (0.5 points lower at 8 bits and
        0.7 at 4 bits on ``benchmarks/qat.py``).
      low_bit_activations: below 8 activation bits, ``"layer_inputs"`` gives them only to
        the tensors that weighted layers (Conv, Dense …) read, what a low-bit kernel
        consumes; residual-add operands and other results keep 8 bits, as TFLite runs every
        tensor in int8 (:mod:`tfcompress.quantization.recipe`). ``"all"``: every tensor.
      **pact_options: :class:`PACTQuantizer` options (``mode``, ``alpha_init``, ``beta_init``,
        ``decay``, ``calibration_steps``, ``trainable_range``, ``range_learning``); an
        ``"auto"`` range learning is resolved by ``activation_bits`` for every tensor, so a
        2-bit model's 8-bit edges learn LSQ's way too (:func:`~tfcompress.quantization.
        recipe.model_pact_options`).

    Returns:
      A new model of the same Keras to compile and train (fine-tune) as usual: tfmot
      quantize wrappers for tf_keras (save and load it inside :func:`quantize_scope`),
      tfcompress' Keras 3 layers for Keras 3 (``.keras`` files load with
      ``keras.saving.load_model``). Export it with ``tfcompress.export.to_tflite`` to get an
      int8 file.

    Raises:
      TypeError: for a non-model, or unknown PACT options.
      ValueError: for a subclassed or unbuilt model, a mixed-precision model or policy,
        bad bit widths or options, unknown ``exclude`` names, or layers with no
        quantization rule (listed in the message).
      RuntimeError: for a Keras 3 model on a backend other than TensorFlow.

    Example:
      >>> import tf_keras
      >>> model = tf_keras.Sequential([
      ...     tf_keras.layers.Conv2D(8, 3, input_shape=(16, 16, 1)),
      ...     tf_keras.layers.BatchNormalization(), tf_keras.layers.ReLU(),
      ...     tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(10)])
      >>> qat = quantize_model(model, activation_bits=4, weight_bits=4)
      >>> qat.output_shape
      (None, 10)

      The same model in Keras 3:

      >>> import keras
      >>> model = keras.Sequential([
      ...     keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3),
      ...     keras.layers.BatchNormalization(), keras.layers.ReLU(),
      ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
      >>> qat = quantize_model(model, activation_bits=4, weight_bits=4)
      >>> [type(layer).__name__ for layer in qat.layers[1:4]]
      ['PACTActivation', 'PACTQuantizeWrapper', 'PACTQuantizeWrapper']
    """
    require_graph_model(model)
    require_float32(model, "PACT quantization-aware training")
    config = PACTQuantizeConfig(weight_bits, activation_bits, weight_range=weight_range,
                                **pact_options)
    pact_options = model_pact_options(pact_options, config.activation_bits)
    exclude = _check_exclusions(model, exclude, skip_unsupported)
    check_choice(batch_norm, "batch_norm", BATCH_NORM_MODES)
    check_choice(low_bit_activations, "low_bit_activations", LOW_BIT_ACTIVATIONS)
    if _is_keras3(model):
        return keras3_api.quantize_keras3_model(
            model, activation_bits, weight_bits, exclude, pact_options, skip_unsupported,
            first_last_bits=first_last_bits, low_bit_activations=low_bit_activations,
            weight_range=weight_range, output_range=output_range, batch_norm=batch_norm)
    prepared = prepare_for_qat(model, batch_norm)
    tracked = tracked_outputs(prepared, output_range)
    keep_float = set(exclude) | {layer.name for layer in prepared.layers
                                 if rule_for(layer) is None}
    bits, input_bits = layer_bits(prepared, config.weight_bits, config.activation_bits,
                                  first_last_bits, low_bit_activations)

    def annotate(layer):
        if layer.name in keep_float or isinstance(layer, keras.layers.InputLayer):
            return layer
        w, a = bits.get(layer.name, (weight_bits, activation_bits))
        options = dict(pact_options, track_range=True) if layer.name in tracked else pact_options
        return tfmot.quantization.keras.quantize_annotate_layer(
            layer, PACTQuantizeConfig(w, a, weight_range=weight_range, **options))

    annotated = keras.models.clone_model(prepared, clone_function=annotate)
    annotated.set_weights(prepared.get_weights())
    scheme = PACTQuantizeScheme(weight_bits, activation_bits,
                                input_quantizer=PACTQuantizer(input_bits, **pact_options),
                                **pact_options)
    return quantize_apply(annotated, scheme)


def quantize_apply(model: keras.Model, scheme=None) -> keras.Model:
    """tfmot's ``quantize_apply``, returning a model that also saves as ``.keras``.

    Use it like tfmot's (``scheme`` defaults to tfmot's 8-bit scheme; pass
    :class:`PACTQuantizeScheme` to get PACT on every annotated layer without an explicit
    config). The only difference: the wrappers of the result are switched to
    :mod:`tfcompress.quantization.serialization`'s classes, which tfmot lacks for the
    ``.keras`` format.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> import tf_keras
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


def _pact_variables(wrapper) -> Dict[str, Dict[str, object]]:
    """``{quantizer name: {"alpha": var, "beta": var}}`` of a wrapper, found by variable name.

    :meth:`PACTQuantizer.build` names its variables ``{name}_pact_alpha``/``_pact_beta``
    (``name`` is ``output``, ``post_activation`` …), which is public, unlike where tfmot
    keeps them.
    """
    found: Dict[str, Dict[str, object]] = {}
    for variable in wrapper.weights:
        short = variable.name.split("/")[-1].split(":")[0]
        for key in ("alpha", "beta"):
            if short.endswith(f"_pact_{key}"):
                found.setdefault(short[: -len(f"_pact_{key}")], {})[key] = variable
    return found


def _config_quantizers(wrapper) -> List[Tuple[str, PACTQuantizer]]:
    """``(kind, quantizer)`` of the PACT quantizers the wrapper's (public) config declares."""
    config, layer = wrapper.quantize_config, wrapper.layer
    declared = [("output", q) for q in config.get_output_quantizers(layer)]
    declared += [("activation", q) for _, q in config.get_activations_and_quantizers(layer)]
    return [(kind, q) for kind, q in declared if isinstance(q, PACTQuantizer)]


def _pact_quantizers(model: keras.Model):
    """Yields ``(key, quantizer, weights)`` for every PACT quantizer in ``model``."""
    quantize_layer_class = tfmot_private("quantize_layer").QuantizeLayer
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _pact_quantizers(layer)
        elif isinstance(layer, quantize_layer_class):
            if isinstance(layer.quantizer, PACTQuantizer):
                yield layer.name, layer.quantizer, layer.quantizer_vars
        elif isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            variables = _pact_variables(layer)
            quantizers = dict(_config_quantizers(layer)) if variables else {}
            for name, weights in sorted(variables.items()):
                quantizer = quantizers.get("output" if name == "output" else "activation")
                if quantizer is not None and "alpha" in weights:
                    yield layer.layer.name, quantizer, weights


def clip_ranges(model: keras.Model) -> Dict[str, Tuple[float, float]]:
    """The learned PACT clipping range of every quantized tensor.

    Args:
      model: a model returned by :func:`quantize_model` (tf_keras or Keras 3) or by
        ``quantize_apply`` with PACT configs.

    Returns:
      ``{layer name: (low, high)}`` where ``low`` is ``-beta`` (``-alpha`` in symmetric mode,
      0 in relu mode) and ``high`` is ``alpha``. Model inputs are keyed by their
      ``QuantizeLayer``'s (Keras 3: ``PACTActivation``'s) name, ``quantize_layer``.

    Example:
      >>> import tf_keras
      >>> qat = quantize_model(tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]),
      ...                      alpha_init=3.0, mode="symmetric")
      >>> sorted(clip_ranges(qat).values())
      [(-3.0, 3.0), (-3.0, 3.0)]
    """
    require_graph_model(model)
    if _is_keras3(model):
        return keras3_api.clip_ranges_keras3(model)
    ranges = {}
    for key, quantizer, weights in _pact_quantizers(model):
        low, high = quantizer.clip_range(weights)
        ranges[key] = (float(low), float(high))
    return ranges
