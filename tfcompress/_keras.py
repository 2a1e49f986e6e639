"""The one module that imports Keras: the flavour seam.

tfcompress works on two Kerases:

* **tf_keras** (Keras 2), the package tensorflow-model-optimization (tfmot) is built on;
* **Keras 3** (``import keras``, and ``tf.keras`` since TensorFlow 2.16).

They agree on what a Conv2D is and differ in how a model stores its graph, its configs and
its callbacks. Everything that differs lives here (and, for private attributes, in
:mod:`tfcompress._internals`): which flavour an object is (:func:`flavour_of`), the layer
classes of both (:func:`layer_classes`), a model's calls in order (:func:`graph_nodes`),
rebuilding a model from its config (:func:`model_from_config`), registering serializable
classes in both (:func:`serializable`). Handlers, criteria, masks, counting, the rebuild,
export and PACT's math are written once against this module.

``keras`` is tf_keras (the tfmot front-end's Keras), ``keras3`` is Keras 3; every other
module imports them from here. We never rely on ``TF_USE_LEGACY_KERAS``.

Example:
  >>> flavour_of(keras.layers.Dense(2)).name, flavour_of(keras3.layers.Dense(2)).name
  ('tf_keras', 'keras3')
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import keras as keras3
import tf_keras as keras

from tfcompress import _internals

__all__ = [
    "keras", "keras3", "Flavour", "TF_KERAS", "KERAS3", "FLAVOURS", "flavour_of", "check_model",
    "is_keras3_object", "require_graph_model", "existing_classes", "layer_classes", "is_model",
    "is_sequential", "is_input_layer", "Node", "graph_nodes", "input_names", "output_names",
    "read_value", "model_from_config", "registered_name", "serializable", "serialize_layer",
    "keep_one_input", "Callback",
    "callback_bases", "backend", "require_tensorflow_backend", "bidirectional_shares_units",
]

T = TypeVar("T", bound=type)


@dataclasses.dataclass(frozen=True)
class Flavour:
    """One Keras: its name (``"tf_keras"`` or ``"keras3"``) and its module."""

    name: str
    module: types.ModuleType

    @property
    def is_keras3(self) -> bool:
        return self.name == "keras3"

    def __repr__(self) -> str:
        return f"Flavour({self.name!r})"


TF_KERAS = Flavour("tf_keras", keras)
KERAS3 = Flavour("keras3", keras3)
FLAVOURS: Tuple[Flavour, ...] = (TF_KERAS, KERAS3)


is_keras3_object = _internals.is_keras3_object


def flavour_of(obj: object) -> Optional[Flavour]:
    """The Keras a layer, model or KerasTensor comes from, or None for anything else."""
    if isinstance(obj, keras3.layers.Layer) or is_keras3_object(obj):
        return KERAS3
    if isinstance(obj, keras.layers.Layer) or type(obj).__module__.startswith("tf_keras"):
        return TF_KERAS
    return None


def backend() -> str:
    """The Keras 3 backend in use (``"tensorflow"``, ``"jax"``, ...)."""
    return keras3.backend.backend()


def require_tensorflow_backend(what: str) -> None:
    """Raises a RuntimeError naming ``what`` if Keras 3 runs on a backend other than
    TensorFlow (QAT and TFLite export run TensorFlow graphs)."""
    if backend() != "tensorflow":
        raise RuntimeError(
            f"{what} needs Keras 3's TensorFlow backend, but KERAS_BACKEND={backend()!r}. "
            "Pruning (masks, rebuild, counting) works on any backend; for this step set "
            "KERAS_BACKEND=tensorflow before importing keras, or save the model as .keras "
            "and run it in a TensorFlow-backend process.")


def is_model(obj: object) -> bool:
    """True for a ``Model`` of either flavour."""
    return isinstance(obj, (keras.Model, keras3.Model))


def is_sequential(obj: object) -> bool:
    """True for a ``Sequential`` model of either flavour."""
    return isinstance(obj, (keras.Sequential, keras3.Sequential))


def is_input_layer(obj: object) -> bool:
    """True for an ``InputLayer`` of either flavour."""
    return isinstance(obj, (keras.layers.InputLayer, keras3.layers.InputLayer))


def check_model(model: object, argument: str = "model") -> Any:
    """Validates that ``model`` is a built Keras model (tf_keras or Keras 3).

    Args:
      model: the object a user passed to a public function.
      argument: the argument's name, used in error messages.

    Returns:
      ``model`` unchanged.

    Raises:
      TypeError: if ``model`` is not a Keras model at all.
      ValueError: if the model has not been built (its input shapes are unknown).
    """
    if is_model(model):
        if not model.built:
            raise ValueError(
                f"`{argument}` ({model.name!r}) is not built, so its shapes are unknown. "
                "Call `model.build(input_shape)` or call the model on data first, or start "
                "it with `keras.Input(shape)`."
            )
        return model
    raise TypeError(
        f"`{argument}` must be a Keras model (keras.Model from Keras 3, or tf_keras.Model), "
        f"got {type(model).__module__}.{type(model).__qualname__}."
    )


def require_graph_model(model: object, argument: str = "model") -> Any:
    """Like :func:`check_model`, and also requires a Functional or Sequential model.

    Pruning and quantization read the model's layer graph; a subclassed model hides it.

    Raises:
      TypeError: for non-models.
      ValueError: for subclassed or unbuilt models.
    """
    check_model(model, argument)
    if not _internals.is_graph_network(model):
        raise ValueError(
            f"`{argument}` ({type(model).__name__} {model.name!r}) is a subclassed model, whose "
            "layer graph tfcompress cannot read. Use a Functional or Sequential model; to keep "
            "subclassed code, call it on a `keras.Input` to make a Functional model: "
            "`inputs = keras.Input(shape); model = keras.Model(inputs, MyModel()(inputs))` "
            "works only if MyModel's own layers are Functional-compatible, otherwise rewrite "
            "its `call` as Functional layers."
        )
    return model


def _lookup(module: Any, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def existing_classes(*paths: str) -> List[type]:
    """The classes at ``<keras>.<path>`` that exist, in tf_keras and in Keras 3 (classes
    that only some versions have, or that live in ``src.applications``)."""
    found = []
    for flavour in FLAVOURS:
        for path in paths:
            obj = _lookup(flavour.module, path)
            if isinstance(obj, type) and obj not in found:
                found.append(obj)
    return found


def layer_classes(*names: str) -> List[type]:
    """``keras.layers.<name>`` of both flavours, for every name that exists in each.

    Example:
      >>> [c.__module__.split(".")[0] for c in layer_classes("Conv2D")]
      ['tf_keras', 'keras']
    """
    return existing_classes(*(f"layers.{name}" for name in names))


def bidirectional_shares_units(layer: Any) -> bool:
    """True if a ``Bidirectional`` needs as many backward as forward units: Keras 3 infers its
    output shapes from the forward layer alone (``concat`` doubles its units), so rebuilt
    directions of different sizes would mis-shape the layers after it; tf_keras runs both.

    Example:
      >>> bidirectional_shares_units(keras3.layers.Bidirectional(keras3.layers.GRU(2)))
      True
    """
    return flavour_of(layer) is KERAS3


# ----- the functional graph -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Node:
    """One call in a model's graph, the same for both flavours.

    Attributes:
      layer: the layer (or, in Keras 3, the ``keras.ops`` operation) called.
      inputs: the KerasTensors the call consumed, flattened.
      outputs: the KerasTensors it produced, flattened.
      args, kwargs: the call's arguments as recorded (tensors included).
      is_input: True for an InputLayer's node.
    """

    layer: Any
    inputs: Sequence[Any]
    outputs: Sequence[Any]
    args: Any
    kwargs: Any
    is_input: bool


def graph_nodes(model: Any) -> Dict[int, List[Node]]:
    """``{depth: [Node, ...]}`` of a Functional or Sequential model (what Keras runs)."""
    return {depth: [Node(*_internals.node_parts(node)) for node in nodes]
            for depth, nodes in _internals.nodes_by_depth(model).items()}


def input_names(model: Any) -> List[str]:
    """The names of the model's inputs (its InputLayers)."""
    if flavour_of(model) is TF_KERAS:
        return list(model.input_names)
    return [_internals.history_layer(t).name for t in model.inputs]


def output_names(model: Any) -> List[str]:
    """The names of the model's outputs (the layers producing them)."""
    if flavour_of(model) is TF_KERAS:
        return list(model.output_names)
    return [_internals.history_layer(t).name for t in model.outputs]


def model_from_config(model: Any, config: Dict[str, Any], custom_objects: Dict[str, type]
                      ) -> Any:
    """A new model of ``model``'s flavour and class (Sequential or Functional) from
    ``config``, an edited copy of ``model.get_config()``.

    The config comes from the caller's live model, not from a file, so Python lambdas in
    Lambda layers are the caller's own code: deserializing them is not a safety concern.
    """
    module = flavour_of(model).module
    cls = module.Sequential if is_sequential(model) else module.Model
    if module is keras3:
        custom_objects = dict(custom_objects, **_live_lambda_functions(model, config))
    with module.utils.custom_object_scope(custom_objects), \
            _internals.unsafe_deserialization(module):
        return cls.from_config(config)


def _live_lambda_functions(model: Any, config: Any) -> Dict[str, Callable]:
    """Points the Keras 3 ``Lambda`` configs inside ``config`` (edited in place) at the live
    functions of ``model``'s layers, returned as custom objects.

    Keras 3 rebuilds a Lambda's Python function from its bytecode with Keras's own module
    globals, so a function that uses a name of its module (``tf.nn.depth_to_space``) fails
    after ``from_config``; the live function keeps its globals.
    """
    layers = {layer.name: layer for layer in _all_layers(model)}
    found = {}

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            layer = layers.get(node.get("config", {}).get("name"))
            if node.get("class_name") == "Lambda" and layer is not None:
                for key in ("function", "output_shape"):
                    value = getattr(layer, "_" + key if key == "output_shape" else key, None)
                    if callable(value):
                        name = f"tfcompress_lambda_{key}_{id(value)}"
                        node["config"][key], found[name] = name, value
            for value in node.values():
                visit(value)

    visit(config)
    return found


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from _all_layers(layer)


def read_value(variable: Any) -> Any:
    """A variable's value as numpy, for both flavours (tf_keras ``backend.get_value`` also
    reads a MirroredVariable; Keras 3 variables convert through ``ops.convert_to_numpy``)."""
    if is_keras3_object(variable):
        return keras3.ops.convert_to_numpy(variable)
    return keras.backend.get_value(variable)


def registered_name(cls: type) -> str:
    """The name a layer class is serialized under (``package>Name`` for registered ones)."""
    for flavour in FLAVOURS:
        if issubclass(cls, flavour.module.layers.Layer):
            return flavour.module.saving.get_registered_name(cls)
    return cls.__name__


def serializable(package: str = "tfcompress") -> Callable[[T], T]:
    """Registers a class as serializable (``package>ClassName``): a layer in its own Keras
    only (so each flavour can have its own class of one name), anything else in both.

    Example:
      >>> Twice = serializable("doctest")(type("Twice", (keras3.layers.Layer,), {}))
      >>> keras3.saving.get_registered_object("doctest>Twice") is Twice
      True
      >>> keras.utils.get_registered_object("doctest>Twice") is None
      True
    """
    def register(cls: T) -> T:
        if not issubclass(cls, keras3.layers.Layer):
            cls = keras.utils.register_keras_serializable(package=package)(cls)
        if not issubclass(cls, keras.layers.Layer):
            cls = keras3.saving.register_keras_serializable(package=package)(cls)
        return cls
    return register


def serialize_layer(layer: Any) -> Dict[str, Any]:
    """A layer's ``{"class_name": ..., "config": ...}`` entry in its flavour's format (what a
    Functional config holds, minus ``name`` and ``inbound_nodes``)."""
    return flavour_of(layer).module.layers.serialize(layer)


def keep_one_input(entry: Dict[str, Any], index: int) -> Dict[str, Any]:
    """A copy of a Functional config's layer ``entry`` (a merge layer called once on a list
    of tensors) whose call takes only its ``index``-th input, as a single tensor.

    tf_keras lists a call's inputs as ``[[name, node, tensor, kwargs], ...]``, Keras 3 as
    ``{"args": [[tensor, ...]], "kwargs": {}}``.

    Raises:
      ValueError: if the layer is called more than once or not on a list.

    Example:
      >>> entry = {"name": "add", "inbound_nodes": [[["a", 0, 0, {}], ["b", 0, 0, {}]]]}
      >>> keep_one_input(entry, 1)["inbound_nodes"]
      [[['b', 0, 0, {}]]]
    """
    nodes = entry.get("inbound_nodes", [])
    if len(nodes) != 1:
        raise ValueError(f"Layer {entry.get('name')!r} is called {len(nodes)} times; "
                         "expected one call.")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3
        args = node.get("args", [])
        if len(args) != 1 or not isinstance(args[0], list):
            raise ValueError(f"Layer {entry.get('name')!r} is not called on a list of tensors.")
        node = dict(node, args=[args[0][index]])
    else:
        node = [node[index]]
    return dict(entry, inbound_nodes=[node])


class Callback(keras.callbacks.Callback, keras3.callbacks.Callback):
    """A callback base class that both Kerases' ``fit`` accept (an instance of both bases).

    The two bases disagree on ``model``: tf_keras assigns an attribute, Keras 3 exposes a
    read-only property over ``_model`` (that syncs JAX state); here it is a property both
    can set, read through Keras 3's getter.
    """

    def __init__(self) -> None:
        keras3.callbacks.Callback.__init__(self)  # params, _model
        self.validation_data = None  # what tf_keras' __init__ sets, minus `self.model = None`
        self._chief_worker_only = None
        self._supports_tf_logs = False

    @property
    def model(self) -> Any:
        return keras3.callbacks.Callback.model.fget(self)

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    def set_model(self, model: Any) -> None:
        self._model = model


def callback_bases() -> Tuple[type, ...]:
    """Base classes for a callback that both Kerases' ``fit`` accept:
    ``class MyCallback(*callback_bases())``."""
    return (Callback,)
