"""Converting models between tf_keras (Keras 2) and Keras 3.

tensorflow-model-optimization works on tf_keras models; ``import keras`` (and ``tf.keras``
since TensorFlow 2.16) is Keras 3. :func:`to_tf_keras` and :func:`to_keras3` move a
Functional or Sequential model of built-in layers from one to the other: same class, same
layer, input and output names and shapes, weights copied, outputs equal to float rounding.

What translates: every built-in layer whose class exists in both Kerases under the same name,
with arguments both understand (an argument only one Kerases has is fine at its default),
nested models, shared layers, and (Keras 3 to tf_keras) ``keras.ops`` calls that are exactly a
merge layer (``ops.add``/``subtract``/``multiply``/``maximum``/``minimum`` of two same-shape
tensors, ``ops.concatenate``). What does not: Lambda layers (Python code), custom layer
classes, other ``keras.ops`` calls, tf_keras's ``TFOpLambda`` layers (``x * 2.0``,
``tf.nn.relu(x)``), layers or arguments the target lacks (e.g. Keras 3's ``lora_rank``,
tf_keras's ``ThresholdedReLU``, ``hard_sigmoid`` which the two compute differently, so also
tf_keras's ConvLSTM default), subclassed models. These raise one ValueError naming every
such layer and why.

Call arguments are kept except what Keras 3 records on its own: an implicitly propagated
mask (with the ``keras.ops`` computing it) and ``training=False``; the target Keras
propagates masks itself and takes ``training`` from the model call. Outputs agree to float
rounding (the two Kerases' BatchNorm and LayerNorm formulas differ by ~1e-7 relative);
weights are copied exactly, so a round trip gives back identical outputs.

Example:
  >>> import numpy as np
  >>> from tfcompress._keras import keras3
  >>> inputs = keras3.Input((4,), name="features")
  >>> outputs = keras3.layers.Dense(2, name="logits")(inputs)
  >>> model = keras3.Model(inputs, outputs, name="tiny")
  >>> legacy = to_tf_keras(model)
  >>> type(legacy).__module__.split(".")[0], [layer.name for layer in legacy.layers]
  ('tf_keras', ['features', 'logits'])
  >>> x = np.ones((1, 4), "float32")
  >>> bool(np.allclose(legacy(x), model(x), atol=1e-6))
  True
"""

from __future__ import annotations

from typing import Any

from tfcompress._keras import KERAS3, TF_KERAS, Flavour, flavour_of, require_graph_model
from tfcompress.convert._graph import Converter

__all__ = ["to_tf_keras", "to_keras3"]


def _convert(model: Any, target: Flavour) -> Any:
    require_graph_model(model)
    source = flavour_of(model)
    if source is target:
        return model
    converter = Converter(source, target)
    converter.translate(model)
    if not converter.problems:
        new = converter.build(model)
        converter.copy_weights()
    if converter.problems:
        raise ValueError(
            f"model {model.name!r} cannot be converted from {source.name} to {target.name}; "
            f"{len(converter.problems)} layer(s) have no equivalent:\n  "
            + "\n  ".join(converter.problems))
    return new


def to_tf_keras(model: Any) -> Any:
    """A tf_keras copy of a Keras 3 Functional or Sequential model.

    The copy has the same class (Sequential stays Sequential), the same layer, input and
    output names and shapes, and the same weights; nested models and shared layers are
    kept. Use it to hand a Keras 3 model to tensorflow-model-optimization.

    Args:
      model: a built Keras 3 Functional or Sequential model of built-in layers. A tf_keras
        model is returned unchanged (the same object, not a copy).

    Returns:
      The tf_keras model.

    Raises:
      TypeError: if ``model`` is not a Keras model.
      ValueError: for a subclassed or unbuilt model, or naming every layer that cannot be
        translated (Lambda layers, custom classes, ``keras.ops`` calls other than the merge
        ops, arguments tf_keras lacks) and why.

    Example:
      >>> from tfcompress._keras import keras3
      >>> model = keras3.Sequential([keras3.Input((8,)), keras3.layers.Dense(3, name="d")],
      ...                           name="seq")
      >>> legacy = to_tf_keras(model)
      >>> type(legacy).__name__, legacy.name, legacy.output_shape
      ('Sequential', 'seq', (None, 3))
      >>> to_tf_keras(legacy) is legacy
      True
    """
    return _convert(model, TF_KERAS)


def to_keras3(model: Any) -> Any:
    """A Keras 3 copy of a tf_keras Functional or Sequential model (the reverse of
    :func:`to_tf_keras`).

    Args:
      model: a built tf_keras Functional or Sequential model of built-in layers. A Keras 3
        model is returned unchanged (the same object, not a copy).

    Returns:
      The Keras 3 model.

    Raises:
      TypeError: if ``model`` is not a Keras model.
      ValueError: for a subclassed or unbuilt model, or naming every layer that cannot be
        translated (Lambda layers, custom classes, ``TFOpLambda`` layers from TensorFlow
        functions applied to Keras tensors, arguments Keras 3 lacks) and why.

    Example:
      >>> from tfcompress._keras import keras
      >>> inputs = keras.Input((8, 8, 3), name="image")
      >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
      >>> model = keras.Model(inputs, keras.layers.Flatten(name="flat")(x))
      >>> modern = to_keras3(model)
      >>> type(modern).__module__.split(".")[0], modern.output_shape
      ('keras', (None, 144))
    """
    return _convert(model, KERAS3)
