"""Saving and loading quantization-aware models in every Keras format.

tfmot's wrappers save fine as SavedModel and ``.h5``, but not as ``.keras`` (the Keras v3
format, which stores variables by position): ``QuantizeLayer.build`` never sets
``built``, so loading builds it twice, and ``QuantizeWrapperV2`` lists its inner layer's
kernel once or twice depending on how it was built, so positions shift between save and
load (and so do the optimizer's slots). This happens with tfmot's own ``quantize_model``.

The two classes here keep tfmot's behaviour and fix only that: :class:`QuantizeLayer`
marks itself built, :class:`OrderedQuantizeWrapper` lists its variables in one canonical
order (sorted by their short names) and saves them by name. :func:`adopt` switches a
model's tfmot wrappers to these classes. The wrapper has a name of its own, so models
saved with tfmot's ``QuantizeWrapperV2`` keep loading with tfmot's class (and its variable
order) inside :func:`~tfcompress.quantization.quantize_scope`.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfcompress._internals import tfmot_private
from tfcompress._keras import keras

_TfmotQuantizeLayer = tfmot_private("quantize_layer").QuantizeLayer


def _short_name(variable: tf.Variable) -> str:
    return variable.name.split("/")[-1].replace(":", "_")


def _canonical(variables: Iterable[tf.Variable]) -> List[tf.Variable]:
    unique = {id(v): v for v in variables}
    return sorted(unique.values(), key=_short_name)


class QuantizeLayer(_TfmotQuantizeLayer):
    """tfmot's ``QuantizeLayer`` that marks itself built (so ``.keras`` builds it once).

    The class keeps tfmot's name because ``.keras`` files locate a layer's weights by its
    snake-cased class name.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.built = True


@keras.utils.register_keras_serializable(package="tfcompress")
class OrderedQuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """tfmot's ``QuantizeWrapperV2`` with a build-independent variable order.

    ``trainable_weights``/``non_trainable_weights`` are sorted by short variable name
    (``kernel:0``, ``output_pact_alpha:0`` …), unique within one wrapper, so ``.h5`` files
    and optimizer slots line up however the wrapper was built; ``.keras`` files store the
    wrapper's variables by those names.
    """

    @property
    def trainable_weights(self):
        return _canonical(super().trainable_weights)

    @property
    def non_trainable_weights(self):
        return _canonical(super().non_trainable_weights)

    def _named_variables(self) -> Dict[str, tf.Variable]:
        named: Dict[str, tf.Variable] = {}
        for variable in _canonical(self.trainable_weights + self.non_trainable_weights):
            key = _short_name(variable)
            if key in named:
                raise ValueError(f"Layer {self.name!r} has two variables named {key!r}.")
            named[key] = variable
        return named

    def save_own_variables(self, store):
        for key, variable in self._named_variables().items():
            store[key] = variable.numpy()

    def load_own_variables(self, store):
        named = self._named_variables()
        missing = sorted(set(named) - set(store.keys()))
        if missing:
            raise ValueError(
                f"Layer {self.name!r}: the file has no values for {missing}. It was saved by "
                "another quantization wrapper; re-save it from a model made by "
                "tfcompress.quantization.quantize_model or quantize_apply."
            )
        for key, variable in named.items():
            variable.assign(store[key])


# Keyed by exact class on purpose: ``adopt`` swaps ``__class__``, which is only safe for
# tfmot's own classes; a user's subclass would lose its methods, so it is left alone.
_ADOPTED = {
    _TfmotQuantizeLayer: QuantizeLayer,
    tfmot.quantization.keras.QuantizeWrapperV2: OrderedQuantizeWrapper,
}

CUSTOM_OBJECTS = {"QuantizeLayer": QuantizeLayer,
                  "OrderedQuantizeWrapper": OrderedQuantizeWrapper}
"""Names :func:`~tfcompress.quantization.quantize_scope` maps to the classes above."""


def adopt(model: keras.Model) -> keras.Model:
    """Switches tfmot's ``QuantizeLayer``/``QuantizeWrapperV2`` in ``model`` to the classes here.

    (``QuantizeLayer`` keeps its class name: ``.keras`` files locate weights by the
    snake-cased class name, and its variable order is unchanged, so files written either
    way load either way.)

    The classes only add methods, so the switch is in place and keeps every variable.

    Returns:
      ``model``, for chaining.

    Example:
      >>> import tensorflow_model_optimization as tfmot
      >>> import tf_keras
      >>> qat = tfmot.quantization.keras.quantize_model(
      ...     tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))]))
      >>> [type(layer).__name__ for layer in adopt(qat).layers]
      ['QuantizeLayer', 'OrderedQuantizeWrapper']
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            adopt(layer)
        replacement = _ADOPTED.get(type(layer))
        if replacement is not None:
            layer.__class__ = replacement
    return model
