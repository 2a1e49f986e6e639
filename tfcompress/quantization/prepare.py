"""Graph rewrites that make a float model look like what TFLite will run.

Before quantization-aware training, :func:`prepare_for_qat` rewrites a model the way the
TFLite converter will rewrite it, so that the quantizers see the tensors that really get
quantized:

* ``SeparableConv2D`` -> ``DepthwiseConv2D`` + 1x1 ``Conv2D`` (TFLite has no separable
  op; the tensor between the two gets its own quantization range).
* ``Dense -> BatchNormalization`` (also after Conv1D/3D and DepthwiseConv1D, and with
  ``batch_norm="fold"`` after Conv2D/DepthwiseConv2D too) -> one layer with the BatchNorm
  folded into its kernel and bias.
  The weight quantizer then quantizes the *folded* kernel, which is what TFLite stores
  (tfmot issue #549), and the BatchNorm statistics are frozen from then on.

A BatchNorm after a ``Conv2D``/``DepthwiseConv2D`` is kept by default (``batch_norm="keep"``):
their kernels are quantized per output channel, and scaling a channel by the BatchNorm's
factor scales its grid with it, so the quantized unfolded kernel folds into exactly the
quantized folded one. The TFLite converter does that fold at export; during QAT the
BatchNorm keeps training on batch statistics, as in float training. On the QAT benchmark
(``benchmarks/qat.py``, 5 seeds) keeping it is worth 0.5 points at 8 bits and 0.7 at 4
bits: folding first costs even the *float* model 0.65 points when it is fine-tuned.

Both rewrites work on tf_keras models (by editing their configs) and on Keras 3 models (by
replaying their graph, :mod:`tfcompress.quantization.keras3_graph`), and both are exact in
inference mode: the prepared model computes what the original computes (up to float
rounding).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tfcompress._internals import inbound_nodes
from tfcompress._keras import flavour_of, keras, require_graph_model
from tfcompress._validate import check_choice
from tfcompress.quantization import keras3_graph
from tfcompress.quantization.folding import (
    BATCH_NORM_MODES,
    CONVERTER_FOLDS,
    FOLDABLE,
    fold_weights,
    folds_into,
)

L = keras.layers


def _is_keras3(model) -> bool:
    flavour = flavour_of(model)
    return flavour is not None and flavour.is_keras3


def _functional(model: keras.Model) -> keras.Model:
    """Returns ``model`` as a Functional model (a Sequential one is re-wired, not copied)."""
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _inbound_names(layer_config: Dict[str, Any]) -> List[str]:
    names = []
    for node in layer_config.get("inbound_nodes", []):
        for entry in node:
            if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
                names.append(entry[0])
    return names


def _consumers(config: Dict[str, Any]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for layer in config["layers"]:
        for name in _inbound_names(layer):
            out.setdefault(name, []).append(layer["name"])
    for entry in config["output_layers"]:
        out.setdefault(entry[0], []).append("<model output>")
    return out


def _rename_inbound(config: Dict[str, Any], old: str, new: str) -> None:
    def fix(obj):
        if isinstance(obj, list):
            if obj and obj[0] == old and len(obj) >= 3 and isinstance(obj[1], int):
                obj[0] = new
            for item in obj:
                fix(item)
    for layer in config["layers"]:
        fix(layer.get("inbound_nodes", []))
    fix(config["output_layers"])


def _rebuild(model: keras.Model, config: Dict[str, Any],
             new_weights: Dict[str, List[np.ndarray]]) -> keras.Model:
    """Builds ``config`` and copies weights: ``new_weights`` by layer name, else from ``model``."""
    custom = {type(layer).__name__: type(layer) for layer in model.layers}
    rebuilt = keras.Model.from_config(config, custom_objects=custom)
    for layer in rebuilt.layers:
        if layer.name in new_weights:
            layer.set_weights(new_weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def _foldable_pair(model, layer_config, consumers, producers) -> Optional[Tuple[Any, Any]]:
    """Returns ``(producer, bn)`` if the BatchNorm in ``layer_config`` can be folded."""
    inbound = _inbound_names(layer_config)
    if len(inbound) != 1:
        return None
    bn, producer = model.get_layer(layer_config["name"]), model.get_layer(inbound[0])
    if (len(inbound_nodes(bn)) != 1 or len(inbound_nodes(producer)) != 1
            or consumers.get(producer.name) != [bn.name]
            or not folds_into(producer, bn, len(producer.output_shape), producers)):
        return None
    return producer, bn


def fold_batch_norms(model: keras.Model, producers: Tuple[type, ...] = FOLDABLE) -> keras.Model:
    """Folds every BatchNorm that directly follows a Conv/DepthwiseConv/Dense into it.

    A BatchNorm is folded when it is the only consumer of a linear-activation producer,
    normalizes the last axis, and neither layer is shared. Others are left as they are.

    Args:
      model: a built Functional or Sequential model, tf_keras or Keras 3.
      producers: the layer classes to fold into (default: every Conv, DepthwiseConv and
        Dense class of both Kerases).

    Returns:
      A new Functional model of the same Keras (the input model is unchanged). It has the
      same outputs in inference mode; the folded producers keep their names and gain a bias.

    Example:
      >>> import tf_keras
      >>> model = tf_keras.Sequential([tf_keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1)),
      ...                              tf_keras.layers.BatchNormalization()])
      >>> [type(l).__name__ for l in fold_batch_norms(model).layers]
      ['InputLayer', 'Conv2D']
    """
    if _is_keras3(model):
        return keras3_graph.fold_batch_norms(model, producers)
    model = _functional(require_graph_model(model))
    config = copy.deepcopy(model.get_config())
    consumers = _consumers(config)
    new_weights: Dict[str, List[np.ndarray]] = {}
    kept = []
    for layer_config in config["layers"]:
        pair = _foldable_pair(model, layer_config, consumers, producers)
        if pair is None:
            kept.append(layer_config)
            continue
        producer, bn = pair
        new_weights[producer.name] = fold_weights(producer, bn)
        producer_config = next(c for c in kept if c["name"] == producer.name)
        producer_config["config"]["use_bias"] = True
        producer_config["config"]["bias_initializer"] = keras.initializers.serialize(
            keras.initializers.Zeros())
        _rename_inbound(config, bn.name, producer.name)
    if not new_weights:
        return model
    config["layers"] = kept
    return _rebuild(model, config, new_weights)


def split_separable_convs(model: keras.Model) -> keras.Model:
    """Replaces each ``SeparableConv2D`` by ``DepthwiseConv2D`` + 1x1 ``Conv2D``.

    The 1x1 convolution keeps the original layer's name (so its consumers are untouched);
    the depthwise part is named ``{name}_depthwise``.

    Returns:
      A new Functional model computing the same function, or ``model`` if it has no
      SeparableConv2D.

    Example:
      >>> import tf_keras
      >>> model = tf_keras.Sequential([
      ...     tf_keras.layers.SeparableConv2D(4, 3, input_shape=(8, 8, 2), name="sep")])
      >>> [(type(l).__name__, l.name) for l in split_separable_convs(model).layers[1:]]
      [('DepthwiseConv2D', 'sep_depthwise'), ('Conv2D', 'sep')]
    """
    if _is_keras3(model):
        return keras3_graph.split_separable_convs(model)
    model = _functional(require_graph_model(model))
    config = copy.deepcopy(model.get_config())
    new_weights: Dict[str, List[np.ndarray]] = {}
    layers = []
    for layer_config in config["layers"]:
        layer = model.get_layer(layer_config["name"])
        if not isinstance(layer, L.SeparableConv2D) or len(inbound_nodes(layer)) != 1:
            layers.append(layer_config)
            continue
        c = layer_config["config"]
        dw_name = f"{layer.name}_depthwise"
        depthwise = {
            "class_name": "DepthwiseConv2D", "name": dw_name,
            "inbound_nodes": layer_config["inbound_nodes"],
            "config": {"name": dw_name, "kernel_size": c["kernel_size"], "strides": c["strides"],
                       "padding": c["padding"], "depth_multiplier": c["depth_multiplier"],
                       "data_format": c["data_format"], "dilation_rate": c["dilation_rate"],
                       "use_bias": False, "activation": "linear", "trainable": c["trainable"],
                       "dtype": c.get("dtype")},
        }
        pointwise = {
            "class_name": "Conv2D", "name": layer.name,
            "inbound_nodes": [[[dw_name, 0, 0, {}]]],
            "config": {"name": layer.name, "filters": c["filters"], "kernel_size": (1, 1),
                       "strides": (1, 1), "padding": "valid", "data_format": c["data_format"],
                       "use_bias": c["use_bias"], "activation": c["activation"],
                       "trainable": c["trainable"], "dtype": c.get("dtype")},
        }
        layers.extend([depthwise, pointwise])
        weights = layer.get_weights()
        new_weights[dw_name] = [weights[0]]
        new_weights[layer.name] = [weights[1]] + weights[2:]
    if not new_weights:
        return model
    config["layers"] = layers
    return _rebuild(model, config, new_weights)


def prepare_for_qat(model: keras.Model, batch_norm: str = "keep") -> keras.Model:
    """Splits SeparableConvs, then folds the BatchNorms that ``batch_norm`` says to fold.

    Args:
      model: a built Functional or Sequential model, tf_keras or Keras 3.
      batch_norm: ``"keep"`` folds only the BatchNorms that follow a Dense (or a Conv1D/3D,
        DepthwiseConv1D); ``"fold"`` folds those after Conv2D/DepthwiseConv2D too (see the
        module docstring).

    Example:
      >>> import tf_keras
      >>> model = tf_keras.Sequential([
      ...     tf_keras.layers.SeparableConv2D(4, 3, input_shape=(8, 8, 2)),
      ...     tf_keras.layers.Conv2D(4, 1), tf_keras.layers.BatchNormalization()])
      >>> [type(l).__name__ for l in prepare_for_qat(model).layers]
      ['InputLayer', 'DepthwiseConv2D', 'Conv2D', 'Conv2D', 'BatchNormalization']
      >>> [type(l).__name__ for l in prepare_for_qat(model, batch_norm="fold").layers]
      ['InputLayer', 'DepthwiseConv2D', 'Conv2D', 'Conv2D']
    """
    fold = check_choice(batch_norm, "batch_norm", BATCH_NORM_MODES) == "fold"
    producers = FOLDABLE if fold else tuple(
        t for t in FOLDABLE if not issubclass(t, CONVERTER_FOLDS))
    return fold_batch_norms(split_separable_convs(model), producers)
