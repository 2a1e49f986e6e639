"""``keras.ops`` nodes of Keras 3 Functional models, e.g. ``keras.ops.add(a, b)`` or ``x * 2``.

Keras 3 records an op called on KerasTensors as a node of the graph (an ``Operation``, not a
layer): the counterpart of tf_keras' ``TFOpLambda``. Element-wise ops listed in
:data:`KERAS_OPS` are traced like their layer equivalents, reductions over non-channel axes
(``ops.mean(x, axis=[1, 2])``) keep channels, ``ops.concatenate`` on the last axis is a
Concatenate; every other op is a barrier.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

from tfcompress._keras import existing_classes
from tfcompress.pruning.handlers.base import Call, CoupledHandler, Tracer
from tfcompress.pruning.handlers.merge import ConcatenateHandler
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.handlers.tfop import GraphOpHandler
from tfcompress.pruning.layout import Layout

__all__ = ["KerasOpHandler", "ReductionOpHandler", "KERAS_OPS"]

_UNARY = None
_SUM: Callable[[Iterable[bool]], bool] = all
_PRODUCT: Callable[[Iterable[bool]], bool] = any

_NUMPY_UNARY = ("Absolute", "Negative", "Square", "Sqrt", "Exp", "Expm1", "Log1p",
                "Tanh", "Sin", "Sign", "Clip", "Copy", "Reciprocal", "Power", "Divide",
                "TrueDivide", "Round", "Floor", "Ceil")
_NN_UNARY = ("Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "Elu",
             "Selu", "Celu", "LeakyRelu", "Softplus", "Softsign", "LogSigmoid", "HardTanh",
             "Threshold", "SoftShrink", "HardShrink", "TanhShrink", "Squareplus", "SparsePlus")

#: ``keras.ops`` class name -> how tensor operands combine (None: unary, with constants).
KERAS_OPS: Dict[str, Optional[Callable[[Iterable[bool]], bool]]] = {
    "Add": _SUM, "Subtract": _SUM, "Maximum": _SUM, "Minimum": _SUM, "Multiply": _PRODUCT,
    **{name: _UNARY for name in _NUMPY_UNARY + _NN_UNARY},
}

_REDUCTIONS = ("Mean", "Max", "Min", "Sum", "Amax", "Amin")


@register_handler(*existing_classes(
    *(f"src.ops.numpy.{name}" for name in ("Add", "Subtract", "Maximum", "Minimum",
                                           "Multiply") + _NUMPY_UNARY),
    *(f"src.ops.nn.{name}" for name in _NN_UNARY)))
class KerasOpHandler(GraphOpHandler):
    """Element-wise ``keras.ops`` nodes listed in :data:`KERAS_OPS`.

    Example:
      >>> import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((6,))
      >>> h = keras.ops.relu(keras.layers.Dense(4, name="d")(x) * 3.0)
      >>> ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h))).group("d").prunable
      True
    """

    ops = KERAS_OPS
    kind = "keras op"

    def op_name(self, layer: Any) -> str:
        return type(layer).__name__

    def run_op(self, layer: Any, args: Any, kwargs: Any) -> Any:
        return layer(*args, **kwargs)


@register_handler(*existing_classes(*(f"src.ops.numpy.{name}" for name in _REDUCTIONS)))
class ReductionOpHandler(CoupledHandler):
    """``ops.mean/max/min/sum`` over axes that leave the channel (last) axis alone: like
    global pooling, channel ``c`` of the output comes from channel ``c`` of the input.

    Example:
      >>> import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((4, 4, 3))
      >>> h = keras.ops.mean(keras.layers.Conv2D(6, 3, name="c")(x), axis=[1, 2])
      >>> ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h))).group("c").prunable
      True
    """

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        rank = len(call.input_shapes[0])
        axis = getattr(call.layer, "axis", None)
        axes = [axis] if isinstance(axis, int) else list(axis) if axis is not None else None
        if axes is None or rank - 1 in [a % rank for a in axes]:
            return tracer.opaque(call, f"keras op {type(call.layer).__name__!r} reduces the "
                                       "channel axis")
        return super().propagate(call, tracer)


@register_handler(*existing_classes("src.ops.numpy.Concatenate"))
class ConcatenateOpHandler(ConcatenateHandler):
    """``ops.concatenate``: the op keeps ``axis`` like the layer, so it is traced the same.

    Example:
      >>> import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((5,))
      >>> a, b = keras.layers.Dense(3, name="a")(x), keras.layers.Dense(4, name="b")(x)
      >>> h = keras.ops.concatenate([a, b], axis=-1)
      >>> graph = ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h)))
      >>> graph.group("a").prunable, graph.group("b").prunable
      (True, True)
    """
