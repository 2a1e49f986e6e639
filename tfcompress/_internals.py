"""Every private Keras and tfmot attribute tfcompress relies on, in one place.

tfcompress reads a model's layer graph and extends tfmot's quantization machinery; a few of
the things it needs have no public API. Each use lives here, with why it is needed and the
versions it was checked on, so that an upgrade that breaks one breaks exactly one function.

Checked on: TensorFlow 2.21.0, tf_keras 2.21.0, tensorflow-model-optimization 0.8.1.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from typing import Any, Dict, List, Tuple

import tensorflow as tf

__all__ = [
    "is_keras3_object", "is_graph_network", "nodes_by_depth", "node_parts", "history_layer",
    "inbound_nodes", "outbound_layers", "io_structure", "keras_mask", "unsafe_deserialization",
    "output_quantizer_vars", "tfmot_private",
]


# ----- tf_keras functional graph ------------------------------------------------------------
def _keras3_graph(model: Any) -> Any:
    """The Keras 3 object holding a model's graph: a Functional model itself, or the
    Functional a built Sequential model keeps in ``Sequential._functional``."""
    if hasattr(model, "_nodes_by_depth"):
        return model
    return getattr(model, "_functional", None)


def is_keras3_object(obj: Any) -> bool:
    """True if ``obj`` is an instance of a Keras 3 (``keras``) class (any class in its MRO
    lives in the ``keras`` package)."""
    for cls in type(obj).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def is_graph_network(model: Any) -> bool:
    """True for Functional and Sequential models whose layer graph is known.

    tf_keras: ``Model._is_graph_network``, the only flag that tells a Functional model (or a
    Sequential model with an input shape) from a subclassed one. Keras 3 (3.15): a
    Functional model has ``_nodes_by_depth`` (from ``ops.Function``); a built Sequential
    model keeps a Functional in ``_functional``.
    """
    if is_keras3_object(model):
        return _keras3_graph(model) is not None
    return bool(getattr(model, "_is_graph_network", False))


def nodes_by_depth(model: Any) -> Dict[int, List[Any]]:
    """``{depth: [node, ...]}`` of a Functional model (``_nodes_by_depth`` in both Kerases).

    The public ``model.layers`` loses the call structure of shared layers and nested models;
    the depth-ordered nodes are what Keras itself runs (``Functional._run_internal_graph``).
    """
    if is_keras3_object(model):
        return _keras3_graph(model)._nodes_by_depth
    return model._nodes_by_depth


def node_parts(node: Any) -> Tuple[Any, list, list, Any, Any, bool]:
    """``(layer, input tensors, output tensors, args, kwargs, is_input)`` of a graph node.

    tf_keras nodes: ``layer``, ``keras_inputs``, ``outputs``, ``call_args``,
    ``call_kwargs``; Keras 3 nodes: ``operation``, ``input_tensors``, ``outputs``,
    ``arguments.args``/``arguments.kwargs``.
    """
    if hasattr(node, "operation"):
        return (node.operation, list(node.input_tensors), list(node.outputs),
                node.arguments.args, node.arguments.kwargs, bool(node.is_input))
    return (node.layer, list(node.keras_inputs), tf.nest.flatten(node.outputs),
            node.call_args, node.call_kwargs, bool(node.is_input))


def history_layer(tensor: Any) -> Any:
    """The layer that produced a symbolic Keras tensor (``KerasTensor._keras_history``, a
    named tuple whose first field is the layer in tf_keras and the operation in Keras 3)."""
    return tensor._keras_history[0]


def inbound_nodes(layer: Any) -> List[Any]:
    """The calls of ``layer`` in the graphs it belongs to (``Layer._inbound_nodes``)."""
    return list(layer._inbound_nodes)


def outbound_layers(layer: Any) -> List[Any]:
    """The layers that consume ``layer``'s outputs (``Layer._outbound_nodes``)."""
    return [node.outbound_layer for node in layer._outbound_nodes]


def io_structure(model: Any) -> Tuple[Any, Any]:
    """The nested structures (a tensor, a list, a dict) of a Functional model's inputs and
    outputs, as the model was built with them.

    ``model.inputs``/``model.outputs`` are flat lists; the structure a user passed to
    ``Model(inputs, outputs)`` is kept only privately: tf_keras ``Functional._nested_inputs``
    and ``_nested_outputs``, Keras 3 (3.15) ``Functional._inputs_struct`` and
    ``_outputs_struct``. Used by :mod:`tfcompress.convert` to rebuild the same structure.
    """
    if is_keras3_object(model):
        graph = _keras3_graph(model)
        return graph._inputs_struct, graph._outputs_struct
    return model._nested_inputs, model._nested_outputs


def keras_mask(tensor: Any) -> Any:
    """The mask Keras attached to a symbolic tensor (``KerasTensor._keras_mask``), or None.

    Keras 3 records an implicitly propagated mask as an explicit ``mask=`` argument of the
    consuming call (with the ``keras.ops`` that computed it as graph nodes); comparing it with
    the input's ``_keras_mask`` is the only way to tell it from a mask the user passed.
    """
    return getattr(tensor, "_keras_mask", None)


def unsafe_deserialization(keras_module: Any) -> contextlib.AbstractContextManager:
    """Allows Lambda layers in ``from_config`` (``serialization_lib.SafeModeScope(False)``).

    Used only to rebuild a config that came from the caller's live model (their own Python
    code), never one read from a file. Older tf_keras versions have no safe mode: a no-op.
    """
    lib = getattr(getattr(getattr(keras_module, "src", None), "saving", None),
                  "serialization_lib", None)
    scope = getattr(lib, "SafeModeScope", None)
    return scope(False) if scope is not None else contextlib.nullcontext()


# ----- tensorflow-model-optimization ----------------------------------------------------------
def output_quantizer_vars(wrapper: Any) -> Any:
    """The variables of a ``QuantizeWrapper``'s output quantizers
    (``QuantizeWrapper._output_quantizer_vars``): tfmot keeps PACT's alpha/beta there and has
    no accessor for them."""
    return wrapper._output_quantizer_vars


_TFMOT_KERAS = "tensorflow_model_optimization.python.core.quantization.keras"

#: tfmot modules used that ``tfmot.quantization.keras`` does not export: the QuantizeLayer
#: that quantizes model inputs, the wrapper class (for isinstance checks and .keras saving
#: fixes), the layout-transform and registry base classes a custom scheme subclasses, the
#: graph-transformation API the layout transform uses, and ``utils`` (its custom-object scope).
_TFMOT_PRIVATE = frozenset({
    "quantize_layer", "quantize_wrapper", "quantize_layout_transform", "quantize_registry",
    "quantize_scheme", "utils", "graph_transformations.model_transformer",
    "graph_transformations.transforms",
})


def tfmot_private(name: str) -> types.ModuleType:
    """A private tfmot module under ``tfmot.python.core.quantization.keras`` (see above).

    Raises:
      KeyError: for a module not declared in ``_TFMOT_PRIVATE`` (declare it, with the reason).
    """
    if name not in _TFMOT_PRIVATE:
        raise KeyError(f"{name!r} is not a declared tfmot internal; add it to _TFMOT_PRIVATE.")
    return importlib.import_module(f"{_TFMOT_KERAS}.{name}")
