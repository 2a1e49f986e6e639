"""The one module that imports Keras.

tfcompress works on Keras 2 models, i.e. the ``tf_keras`` package, because
tensorflow-model-optimization (tfmot) is built on it. Since TensorFlow 2.16,
``tf.keras`` is Keras 3 unless the user sets ``TF_USE_LEGACY_KERAS=1`` before
importing TensorFlow. We never rely on that variable: we import ``tf_keras``
directly, and every public entry point calls :func:`check_model` so that a
Keras 3 model gets a clear explanation instead of a failure deep inside tfmot.

Every other module does ``from tfcompress._keras import keras``.
"""

from __future__ import annotations

from typing import Any, List

import tf_keras as keras

from tfcompress._internals import is_graph_network

__all__ = [
    "keras", "check_model", "is_keras3_object", "require_graph_model", "existing_classes",
]

_KERAS3_FIX = (
    "tfcompress (like tensorflow-model-optimization) works on Keras 2 models from the "
    "`tf_keras` package, but this is a Keras 3 object (what `tf.keras` and `import keras` "
    "give since TensorFlow 2.16). Build the model with tf_keras instead:\n"
    "    import tf_keras as keras\n"
    "    model = keras.Sequential([...])   # or keras.Model(inputs, outputs)\n"
    "and load saved models with `tf_keras.models.load_model(path)`."
)


def is_keras3_object(obj: object) -> bool:
    """Returns True if ``obj`` is an instance of a Keras 3 (``keras``) class."""
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def check_model(model: object, argument: str = "model") -> "keras.Model":
    """Validates that ``model`` is a built ``tf_keras.Model``.

    Args:
      model: the object a user passed to a public function.
      argument: the argument's name, used in error messages.

    Returns:
      ``model`` unchanged.

    Raises:
      TypeError: if ``model`` is a Keras 3 object or not a Keras model at all.
      ValueError: if the model has not been built (its input shapes are unknown).
    """
    if isinstance(model, keras.Model):
        if not model.built:
            raise ValueError(
                f"`{argument}` ({model.name!r}) is not built, so its shapes are unknown. "
                "Call `model.build(input_shape)` or call the model on data first, or give "
                "the first layer an `input_shape`."
            )
        return model
    if is_keras3_object(model):
        raise TypeError(f"`{argument}` is a Keras 3 model ({type(model).__name__}). {_KERAS3_FIX}")
    raise TypeError(
        f"`{argument}` must be a tf_keras.Model, got {type(model).__module__}."
        f"{type(model).__qualname__}. Build the model with `tf_keras` "
        "(`import tf_keras as keras`)."
    )


def require_graph_model(model: object, argument: str = "model") -> "keras.Model":
    """Like :func:`check_model`, and also requires a Functional or Sequential model.

    Pruning and quantization read the model's layer graph; a subclassed model hides it.

    Raises:
      TypeError: for Keras 3 objects and non-models.
      ValueError: for subclassed or unbuilt models.
    """
    check_model(model, argument)
    if not isinstance(model, keras.Sequential) and not is_graph_network(model):
        raise ValueError(
            f"`{argument}` ({type(model).__name__} {model.name!r}) is a subclassed model, whose "
            "layer graph tfcompress cannot read. Use a Functional or Sequential model; to keep "
            "subclassed code, call it on a `keras.Input` to make a Functional model: "
            "`inputs = keras.Input(shape); model = keras.Model(inputs, MyModel()(inputs))` "
            "works only if MyModel's own layers are Functional-compatible, otherwise rewrite "
            "its `call` as Functional layers."
        )
    return model


def existing_classes(*paths: str) -> List[type]:
    """The classes at ``keras.<path>`` that exist in the installed Keras (e.g. classes that
    only some versions have, or that live in ``src.applications``)."""
    found = []
    for path in paths:
        obj: Any = keras
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            found.append(obj)
    return found
