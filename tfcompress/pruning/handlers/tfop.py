"""Ops recorded in Functional models: TensorFlow ops in tf_keras (``TFOpLambda``, e.g.
``x + 3.0``), and the shared logic of :class:`GraphOpHandler` (``keras.ops`` nodes of Keras 3
subclass it in :mod:`~tfcompress.pruning.handlers.kerasop`).

Listed ops are traced by name: unary ops and ops with a scalar constant are channel-wise;
ops between two tensors are element-wise merges. Any other op is probed
(:mod:`~tfcompress.pruning.handlers.probe`): a barrier unless running it proves it
channel-wise.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from tfcompress._keras import existing_classes
from tfcompress.pruning.handlers.base import Call, ChannelHandler, Tracer
from tfcompress.pruning.handlers.merge import merge_layouts
from tfcompress.pruning.handlers.probe import probe_propagate
from tfcompress.pruning.handlers.registry import register_handler
from tfcompress.pruning.layout import Layout

__all__ = ["GraphOpHandler", "TFOpHandler", "TF_OPS"]

_UNARY = None  # channel-wise op of one tensor (plus scalar constants)
_SUM: Callable[[Iterable[bool]], bool] = all
_PRODUCT: Callable[[Iterable[bool]], bool] = any

#: ``TFOpLambda.symbol`` -> how two tensor operands combine (None: the op is unary).
TF_OPS: Dict[str, Optional[Callable[[Iterable[bool]], bool]]] = {
    "__operators__.add": _SUM, "math.add": _SUM, "math.subtract": _SUM,
    "math.maximum": _SUM, "math.minimum": _SUM,
    "math.multiply": _PRODUCT, "math.truediv": _UNARY, "math.divide": _UNARY,
    "identity": _UNARY, "nn.relu": _UNARY, "nn.relu6": _UNARY, "nn.leaky_relu": _UNARY,
    "nn.elu": _UNARY, "nn.selu": _UNARY, "nn.gelu": _UNARY, "nn.silu": _UNARY,
    "nn.swish": _UNARY, "math.sigmoid": _UNARY, "nn.sigmoid": _UNARY, "math.tanh": _UNARY,
    "nn.tanh": _UNARY, "math.softplus": _UNARY, "nn.softplus": _UNARY, "math.abs": _UNARY,
    "math.negative": _UNARY, "math.square": _UNARY, "math.exp": _UNARY,
    "clip_by_value": _UNARY, "math.scalar_mul": _UNARY,
}


def _channel_constant(value: Any, channels: Optional[int]) -> bool:
    """True if a constant operand has one value per channel (cannot be traced)."""
    shape = np.shape(value)
    return bool(shape) and shape[-1] not in (1,) and channels != 1


class GraphOpHandler(ChannelHandler):
    """Ops recorded as nodes of a functional graph, looked up by name in :attr:`ops`.

    Subclasses say how to name an op (:meth:`op_name`) and run it (:meth:`run_op`); unary
    ops and ops with scalar constants are channel-wise, ops between tensors are merges.
    """

    #: op name -> how two tensor operands combine (None: the op is unary).
    ops: Mapping[str, Optional[Callable[[Iterable[bool]], bool]]] = {}
    kind = "op"

    def op_name(self, layer: Any) -> str:
        """The name of the op ``layer`` records (a key of :attr:`ops`)."""
        raise NotImplementedError

    def run_op(self, layer: Any, args: Any, kwargs: Any) -> Any:
        """Runs the op on concrete arguments."""
        raise NotImplementedError

    def zero(self) -> Any:
        """The all-zero operand the op is run on to see where a pruned channel goes."""
        return np.zeros((1, 2), np.float32)

    def barrier_reason(self, layer: Any) -> Optional[str]:
        return None  # unknown ops are probed, call by call

    def _zero_call(self, call: Call) -> Callable[[Any], Any]:
        ids = set(call.tensor_ids)

        def run(zero: Any) -> Any:
            swap = lambda v: zero if id(v) in ids else v  # noqa: E731
            args = tf.nest.map_structure(swap, list(call.args))
            kwargs = tf.nest.map_structure(swap, dict(call.kwargs))
            return self.run_op(call.layer, args, kwargs)

        return run

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        name = self.op_name(call.layer)
        if name not in self.ops:
            # symbolic=False: the rebuild records an op by running it, as the probe did
            return probe_propagate(call, tracer, lambda a, k: self.run_op(call.layer, a, k),
                                   f"{self.kind} {name!r} is not a known element-wise op",
                                   symbolic=False)
        combine = self.ops[name]
        channels = call.output_shapes[0][-1] if call.output_shapes[0] else None
        ids = set(call.tensor_ids)
        constants = [v for v in tf.nest.flatten([list(call.args), dict(call.kwargs)])
                     if id(v) not in ids and not isinstance(v, (str, type(None)))]
        if any(_channel_constant(v, channels) for v in constants):
            return tracer.opaque(call, f"{self.kind} {name!r} with a per-channel constant")
        if len(call.inputs) > 1:
            if combine is None:
                return tracer.opaque(call, f"{self.kind} {name!r} between two tensors")
            return merge_layouts(call, tracer, call.inputs, call.input_shapes, combine)
        try:
            zero = np.asarray(self._zero_call(call)(self.zero()))
        except Exception:  # an op that cannot run on a constant: assume the worst
            zero = np.full((1,), np.nan)
        if not np.all(np.isfinite(zero)):  # 0 * inf in a consumer would be nan, not 0
            return tracer.opaque(call, f"{self.kind} {name!r} maps a pruned (zero) channel "
                                       "to inf or nan")
        clean = call.inputs[0].clean and bool(np.all(zero == 0))
        return [call.inputs[0].with_clean(clean)]


@register_handler(*existing_classes("src.layers.core.TFOpLambda"))
class TFOpHandler(GraphOpHandler):
    """``TFOpLambda`` layers (tf_keras) whose op is listed in :data:`TF_OPS`.

    Example:
      >>> from tfcompress._keras import keras
      >>> from tfcompress.pruning import ChannelGraph
      >>> x = keras.Input((6,))
      >>> h = keras.layers.Dense(4, name="d")(x) * 3.0  # a TFOpLambda: math.multiply
      >>> ChannelGraph(keras.Model(x, keras.layers.Dense(2)(h))).group("d").prunable
      True
    """

    ops = TF_OPS
    kind = "TF op"

    def op_name(self, layer: Any) -> str:
        return layer.symbol

    def zero(self) -> Any:
        return tf.zeros((1, 2))  # TF's Python operators want tensors, not numpy arrays

    def run_op(self, layer: Any, args: Any, kwargs: Any) -> Any:
        return layer.call(*args, **kwargs)  # SlicingOpLambda.call turns dicts into slices
