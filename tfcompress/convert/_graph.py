"""Rebuilding a model's graph in the other Keras, layer by layer.

:class:`Converter` walks the source model twice. The first walk translates every layer (and
every nested model's layers) and collects every refusal, so that one error names all the
layers that cannot be translated. The second walk calls the translated layers on the target
Keras's tensors in the source graph's order (shared layers are translated once and called
once per call; a nested model is converted once and called like a layer), then copies the
weights layer by layer.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import tensorflow as tf

from tfcompress import _internals
from tfcompress._keras import (
    KERAS3,
    Flavour,
    graph_nodes,
    is_input_layer,
    is_model,
    is_sequential,
)
from tfcompress.convert._configs import Refused, layer_config, policy_name

#: ``keras.ops`` operations that are exactly a tf_keras merge layer of the same class name
#: when called on same-shape tensors (``ops.add(x, y)`` is ``layers.Add()([x, y])``).
_ELEMENTWISE_OPS = frozenset({"Add", "Subtract", "Multiply", "Maximum", "Minimum"})
#: tf_keras's wrappers of TensorFlow functions called on Keras tensors (``x * 2.0``,
#: ``tf.nn.relu(x)``, ``x[:, 0]``, ``x.shape``).
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod",
                           "InstanceProperty", "TensorFlowOpLayer"})


def _weight_names(layer: Any) -> List[str]:
    """``kernel`` for tf_keras ``dense/kernel:0`` and Keras 3 ``kernel``; a depthwise
    convolution's kernel is ``depthwise_kernel`` in tf_keras and ``kernel`` in Keras 3."""
    names = [v.name.rpartition("/")[2].partition(":")[0] for v in layer.weights]
    if type(layer).__name__.startswith("DepthwiseConv"):
        names = ["kernel" if name == "depthwise_kernel" else name for name in names]
    return names


def _describe(op: Any) -> str:
    return f"{op.name!r} ({type(op).__name__})"


class Converter:
    """Converts Functional and Sequential models from ``source`` to ``target``."""

    def __init__(self, source: Flavour, target: Flavour) -> None:
        self.source, self.target = source, target
        self.layers: Dict[int, Tuple[Any, Any]] = {}  # id(source op) -> (op, target layer)
        self.op_layers: set = set()  # ids of keras.ops nodes translated to merge layers
        self.models: Dict[int, Any] = {}  # id(source model) -> target model (or None)
        self.problems: List[str] = []

    # ----- first walk: translate every layer ---------------------------------------------
    def _calls(self, model: Any) -> Iterator[Tuple[Any, Optional[Any]]]:
        """``(layer, node)`` of every call in ``model`` (node None for Sequential)."""
        if is_sequential(model):
            for layer in model.layers:
                yield layer, None
            return
        for node in self._nodes(model):
            if not node.is_input:
                yield node.layer, node

    def _kwargs(self, node: Any) -> Dict[str, Any]:
        """The call's keyword arguments without what Keras 3 records implicitly: the mask
        it propagated, and ``training=False`` (a Keras 3 model's own ``training`` overrides
        it; tf_keras would keep it, freezing Dropout in ``fit``)."""
        kwargs = dict(node.kwargs)
        if "mask" in kwargs and (kwargs["mask"] is None or node.inputs and kwargs["mask"] is
                                 _internals.keras_mask(node.inputs[0])):
            del kwargs["mask"]
        if self.source is KERAS3 and kwargs.get("training") is False:
            del kwargs["training"]
        return kwargs

    def _nodes(self, model: Any) -> List[Any]:
        """The model's calls, inputs first, without the ``keras.ops`` calls that only
        compute implicit masks (the target Keras propagates those itself)."""
        needed = {id(t) for t in model.outputs}
        live = []
        for depth, nodes in sorted(graph_nodes(model).items()):
            for node in nodes:
                is_op = not isinstance(node.layer, self.source.module.layers.Layer)
                if is_op and not any(id(t) in needed for t in node.outputs):
                    continue
                live.append(node)
                used = tf.nest.flatten((node.args, self._kwargs(node)))
                needed.update(id(t) for t in node.inputs if any(t is u for u in used))
        return live[::-1]

    def translate(self, model: Any, path: str = "") -> None:
        """Translates every layer of ``model`` and of the models nested in it."""
        self.models.setdefault(id(model), None)
        for op, node in self._calls(model):
            if is_model(op):
                if id(op) not in self.models:
                    self.translate(op, f"{path}{model.name}/")
            elif not is_input_layer(op) and id(op) not in self.layers:
                try:
                    self.layers[id(op)] = (op, self._target_layer(op, node))
                except Refused as error:
                    self.layers[id(op)] = (op, None)
                    self.problems.append(f"{path}{model.name}/{_describe(op)}: {error}")

    def _target_layer(self, op: Any, node: Optional[Any]) -> Any:
        module = type(op).__module__
        if self.source is KERAS3 and ".ops." in module:
            return self._target_op(op, node)
        if type(op).__name__ in _TF_OP_LAYERS and module.startswith("tf_keras"):
            function = op.get_config().get("function", type(op).__name__)
            raise Refused(f"it wraps the TensorFlow function {function!r} (from an operator "
                          "or tf.* function applied to a Keras tensor, e.g. `x * 2.0`), which "
                          "has no Keras 3 layer; use built-in layers (Rescaling, Multiply, "
                          "Activation, ...) instead")
        cls, config = layer_config(op, self.source, self.target)
        try:
            new = cls.from_config(config)
        except Exception as error:  # noqa: BLE001 - reported with the layer's name
            raise Refused(f"{self.target.name} refused its translated config: "
                          f"{type(error).__name__}: {error}") from None
        new.trainable = op.trainable
        return new

    def _target_op(self, op: Any, node: Any) -> Any:
        """The tf_keras merge layer equal to a ``keras.ops`` call, if there is one."""
        name, layers = type(op).__name__, self.target.module.layers
        tensors = list(node.inputs)
        flat_args = tf.nest.flatten((node.args, node.kwargs))
        only_tensors = len(flat_args) == len(tensors) and len(tensors) >= 2
        same = only_tensors and len({(tuple(t.shape), t.dtype) for t in tensors}) == 1
        if name in _ELEMENTWISE_OPS and same and len(tensors) == 2 and not node.kwargs:
            self.op_layers.add(id(op))
            return getattr(layers, name)(name=op.name)
        if name == "Concatenate" and len(node.args) == 1 and only_tensors:
            self.op_layers.add(id(op))
            return layers.Concatenate(axis=getattr(op, "axis", -1), name=op.name)
        raise Refused(f"the keras.ops call {type(op).__module__}.{name} has no tf_keras "
                      "layer (only ops.add/subtract/multiply/maximum/minimum of two "
                      "same-shape tensors and ops.concatenate are translated); use a "
                      "keras.layers layer instead")

    # ----- second walk: build the graph ----------------------------------------------------
    def build(self, model: Any) -> Any:
        """The target model equal to ``model`` (after :meth:`translate` found no problem)."""
        if self.models.get(id(model)) is not None:
            return self.models[id(model)]
        if is_sequential(model):
            inputs = [self._input(_internals.history_layer(t)) for t in model.inputs]
            layers = [self._layer(layer) for layer in model.layers]
            new = self.target.module.Sequential(inputs + layers, name=model.name)
        else:
            new = self._functional(model)
        new.trainable = model.trainable
        self.models[id(model)] = new
        return new

    def _layer(self, op: Any) -> Any:
        return self.build(op) if is_model(op) else self.layers[id(op)][1]

    def _input(self, layer: Any) -> Any:
        config = layer.get_config()
        shape = config.get("batch_shape", config.get("batch_input_shape"))
        kwargs = {"sparse": True} if config.get("sparse") else {}
        return self.target.module.Input(batch_shape=tuple(shape), name=layer.name,
                                        dtype=policy_name(config.get("dtype") or "float32"),
                                        **kwargs)

    def _functional(self, model: Any) -> Any:
        tensors: Dict[int, Any] = {}

        def mapped(structure: Any) -> Any:
            return tf.nest.map_structure(lambda t: tensors.get(id(t), t), structure)

        for node in self._nodes(model):
            if node.is_input:
                outputs = self._input(node.layer)
            elif id(node.layer) in self.op_layers:
                outputs = self._layer(node.layer)(mapped(list(node.inputs)))
            else:
                outputs = self._layer(node.layer)(*mapped(node.args),
                                                  **mapped(self._kwargs(node)))
            for old, new in zip(node.outputs, tf.nest.flatten(outputs)):
                tensors[id(old)] = new
        inputs, outputs = _internals.io_structure(model)
        return self.target.module.Model(mapped(inputs), mapped(outputs), name=model.name)

    def copy_weights(self) -> None:
        """Copies every translated layer's weights, matched by variable name."""
        for key, (op, new) in self.layers.items():
            if key in self.op_layers:
                continue
            old_names, new_names = _weight_names(op), _weight_names(new)
            weights = op.get_weights()
            if old_names != new_names:
                if sorted(old_names) != sorted(new_names) or len(set(old_names)) < len(
                        old_names):
                    self.problems.append(f"{_describe(op)}: its weights {old_names} do not "
                                         f"match the {self.target.name} layer's {new_names}")
                    continue
                values = dict(zip(old_names, weights))
                weights = [values[name] for name in new_names]
            new.set_weights(weights)
