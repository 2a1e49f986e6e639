"""The extension seam of the channel graph: one :class:`ChannelHandler` per layer family.

The tracer (:class:`tfcompress.pruning.ChannelGraph`) walks a model call by call and asks the
handler of each layer:

* :meth:`ChannelHandler.barrier_reason` once per layer: can this configuration be reasoned
  about at all (e.g. ``data_format="channels_first"`` cannot)? A reason makes it a barrier.
* :meth:`ChannelHandler.propagate` once per call: given the channel :class:`Layout` of each
  input, return the layout of each output, creating fresh channel spaces (producers),
  coupling spaces (``tracer.unify``) or blocking them (``tracer.block``).

After tracing, the criteria, masking, counting and rebuilding read the declarative
:attr:`ChannelHandler.weights` table (which axis of which weight carries input or output
channels) through the other methods; each method's docstring says who calls it and when.

Example (a layer that scales each channel by a learned vector, output = x * gamma), one
module and one decorator::

    @register_handler(ChannelScale)            # tfcompress.pruning.handlers.register_handler
    class ChannelScaleHandler(CoupledHandler):
        weights = {"gamma": WeightSpec({0: OUT}, zero=OUT)}
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfcompress.pruning.layout import KeptFn, Layout

__all__ = [
    "IN", "OUT", "MID", "WeightSpec", "Call", "Tracer", "ChannelHandler", "BarrierHandler",
    "CoupledHandler", "maps_zero_to_zero", "mixes_channels", "producer_output",
    "channels_last_reason", "spatial", "ROLES",
]

#: Weight-axis roles: input channels, output channels, and (SeparableConv) the depthwise
#: output between its two kernels. A handler may declare more (:attr:`ChannelHandler.roles`).
IN, OUT, MID = "in", "out", "mid"
ROLES = (IN, OUT, MID)

Shape = Tuple[Optional[int], ...]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """Which axes of one weight carry channels, and what :func:`apply_masks` zeroes.

    Attributes:
      axes: ``{axis: role}`` with role IN, OUT, MID or one of the handler's own ``roles``.
      zero: role (or tuple of roles) whose pruned channels are zeroed by ``apply_masks``
        (None: never zeroed, e.g. BatchNorm moving statistics, which do not matter once gamma
        and beta are 0).
      consumes: zero the IN slice for pruned channels that arrive *non-zero* (not clean),
        e.g. a Conv kernel after a sigmoid, so the masked model equals the rebuilt one.
    """

    axes: Mapping[int, str]
    zero: Union[None, str, Tuple[str, ...]] = None
    consumes: bool = False

    @property
    def zero_roles(self) -> Tuple[str, ...]:
        """The roles of ``zero`` as a tuple (empty for None)."""
        if self.zero is None:
            return ()
        return (self.zero,) if isinstance(self.zero, str) else tuple(self.zero)


@dataclasses.dataclass
class Call:
    """One call of a layer, as seen by its handler while tracing."""

    layer: Any
    key: str
    inputs: List[Layout]
    input_shapes: List[Shape]
    output_shapes: List[Shape]
    args: Any = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tensor_ids: Sequence[int] = ()
    outputs: List[Layout] = dataclasses.field(default_factory=list)


class Tracer(Protocol):
    """What a handler may do to the channel graph while propagating one call."""

    def fresh(self, call: Call, size: int, *, clean: bool = True, index: int = 0) -> Layout:
        """A new space of ``size`` channels produced by this layer (same space on every call;
        a layer producing several spaces numbers them with ``index``)."""

    def unify(self, call: Call, layouts: Sequence[Layout]) -> bool:
        """Couples aligned layouts (same channels everywhere); blocks them and returns
        False if their segment structures differ."""

    def block(self, call: Call, layout: Layout, reason: str) -> None:
        """Marks every space of ``layout`` unprunable because of this layer."""

    def opaque(self, call: Call, reason: str) -> List[Layout]:
        """Makes this call a barrier: blocks its inputs, returns blocked output layouts."""

    def constrain(self, call: Call, layout: Layout, blocks: int) -> bool:
        """Requires ``layout`` to keep the same number of channels in each of ``blocks``
        contiguous blocks (grouped convolutions); blocks it and returns False if impossible."""

    def note(self, call: Call, text: str) -> None:
        """Records how this layer was judged (e.g. a probe's verdict), for reports."""


_ZERO_MAPS: Dict[Any, bool] = {}


def maps_zero_to_zero(fn: Callable[[tf.Tensor], Any]) -> bool:
    """True if ``fn(0) == 0`` exactly (relu, swish, tanh: yes; sigmoid, exp: no).

    Plain functions (Keras activations) are run once and remembered; bound methods and
    closures are run every time (their result can depend on the object's state).

    Example:
      >>> maps_zero_to_zero(tf.nn.relu), maps_zero_to_zero(tf.sigmoid)
      (True, False)
    """
    cacheable = getattr(fn, "__self__", None) is None and getattr(fn, "__closure__", None) is None
    try:
        if cacheable and fn in _ZERO_MAPS:
            return _ZERO_MAPS[fn]
    except TypeError:  # unhashable callable
        cacheable = False
    result = _run_on_zero(fn)
    if cacheable:
        _ZERO_MAPS[fn] = result
    return result


def _run_on_zero(fn: Callable[[tf.Tensor], Any]) -> bool:
    try:
        value = np.asarray(fn(np.zeros((1, 2), np.float32)))  # numpy: any backend takes it
    except Exception:  # an activation that cannot run on a constant: assume the worst
        return False
    return bool(np.all(value == 0))


#: Activations that normalize across the last axis (removing a channel changes the others).
CHANNEL_MIXING_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


def mixes_channels(activation: Any) -> bool:
    """True for activations such as softmax that combine all channels of a position."""
    return getattr(activation, "__name__", "") in CHANNEL_MIXING_ACTIVATIONS


def producer_output(call: "Call", tracer: "Tracer", size: int) -> Layout:
    """The fresh output space of a producer with an optional ``activation``: clean if the
    activation maps 0 to 0, blocked if it mixes channels (softmax)."""
    activation = getattr(call.layer, "activation", None)
    clean = activation is None or maps_zero_to_zero(activation)
    out = tracer.fresh(call, size, clean=clean)
    if mixes_channels(activation):
        tracer.block(call, out, f"activation {activation.__name__!r} mixes channels")
    return out


def channels_last_reason(layer: Any) -> Optional[str]:
    """A barrier reason for layers configured with channels first, else None."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return "data_format='channels_first' (only channels_last is traced)"
    return None


def _prod(dims: Sequence[Optional[int]]) -> int:
    return int(math.prod(d if d is not None else 1 for d in dims))


class ChannelHandler(abc.ABC):
    """How one layer family moves, consumes and produces channels.

    Subclasses override :meth:`propagate` and declare :attr:`weights` (attribute path of the
    weight -> :class:`WeightSpec`) and :attr:`size_key` (the config key holding the number of
    output channels, if any); the other methods have defaults that read that table. Register
    a subclass for its layer classes with
    :func:`~tfcompress.pruning.handlers.register_handler`.

    Handlers are stateless: one instance serves every layer of its classes, and every method
    receives the layer (or the call) it is asked about.
    """

    #: ``{weight attribute: WeightSpec}``; weights not listed are copied unchanged. An
    #: attribute may be a dotted path (``"cell.kernel"``: the weight of a sublayer).
    weights: Mapping[str, WeightSpec] = {}
    #: The config key of the number of output channels (``"filters"``, ``"units"``), or None.
    size_key: Optional[str] = None
    #: The roles its weight axes use; :meth:`role_layout` gives each one's layout (handlers
    #: with several channel spaces per weight add their own, e.g. recurrent gate blocks).
    roles: Tuple[str, ...] = ROLES

    # ----- called by the tracer ----------------------------------------------------------
    def barrier_reason(self, layer: Any) -> Optional[str]:
        """Why this layer's configuration cannot be traced, or None if it can.

        Called by the tracer once per layer, before its first call is propagated.
        """
        return channels_last_reason(layer)

    @abc.abstractmethod
    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        """Returns the channel layout of each output of ``call``.

        Called by the tracer once per call of the layer (shared layers: once per call), with
        the layouts of the call's inputs in ``call.inputs``. Create fresh spaces with
        ``tracer.fresh``, couple layouts with ``tracer.unify`` and block the ones this layer
        cannot prune through with ``tracer.block`` / ``tracer.opaque``.
        """

    # ----- called by the criteria --------------------------------------------------------
    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        """``(n_out_channels, n_features)`` filters of a producer, None for other layers.

        Called by the criteria (``fpgm_masks``, ``FPGMPruning``) on the producers of a group,
        with the current weights, every time masks are computed; ``index`` says which of the
        layer's output spaces (the ``index`` it gave ``Tracer.fresh``) the group holds.
        """
        return None

    # ----- called by masking, counting and the rebuild ------------------------------------
    def role_layout(self, layer: Any, role: str, call: Call) -> Layout:
        """The layout that indexes the weight axes with ``role``.

        Called by masking, counting and the rebuild with the layer's first call (masking
        also with every call, for the ``consumes`` input slices).
        """
        return call.inputs[0] if role == IN else call.outputs[0]

    def role_positions(self, layer: Any, call: Call, kept: KeptFn) -> Dict[str, Any]:
        """``{role: kept positions, or None when the role keeps all of them}``.

        Called by the rebuild and the parameter count for every traced layer.
        """
        positions = {}
        for role in self.roles:
            try:
                layout = self.role_layout(layer, role, call)
            except (IndexError, AttributeError):  # the layer has no axis with this role
                continue
            pos = layout.positions(kept)
            positions[role] = None if len(pos) == layout.length else pos
        return positions

    def weight_index(self, layer: Any) -> Dict[str, int]:
        """``{attribute: index in layer.get_weights()}`` for the attributes of :attr:`weights`
        the layer has (``bias`` is absent when ``use_bias=False``, ``gamma`` when
        ``scale=False``).

        Called by masking, counting and the rebuild to find the weights the table names.
        """
        ids = {id(w): i for i, w in enumerate(getattr(layer, "weights", ()))}  # ops: none
        index = {}
        for attr in self.weights:
            variable = self.variable(layer, attr)
            if variable is not None and id(variable) in ids:
                index[attr] = ids[id(variable)]
        return index

    @staticmethod
    def variable(layer: Any, attr: str) -> Any:
        """The weight at attribute path ``attr`` (``"cell.kernel"``), or None.

        Called by masking to find the variables it multiplies.
        """
        for name in attr.split("."):
            layer = getattr(layer, name, None)
        return layer

    def sliced_shape(self, layer: Any, attr: str, shape: Shape,
                     counts: Mapping[str, Optional[int]]) -> Shape:
        """The shape of weight ``attr`` once each role keeps ``counts[role]`` positions
        (None: the role keeps all its positions).

        Called by the parameter count (``count_params`` after pruning, from masks alone).
        """
        spec = self.weights.get(attr)
        if spec is None:
            return shape
        roles = [self._role_at(spec, axis, len(shape)) for axis in range(len(shape))]
        return tuple(counts[role] if role and counts.get(role) is not None else dim
                     for role, dim in zip(roles, shape))

    @staticmethod
    def _role_at(spec: WeightSpec, axis: int, ndim: int) -> Optional[str]:
        return spec.axes.get(axis, spec.axes.get(axis - ndim))

    def slice_weight(self, layer: Any, attr: str, value: np.ndarray,
                     positions: Mapping[str, Optional[np.ndarray]]) -> np.ndarray:
        """Keeps ``positions[role]`` along every channel axis of weight ``attr`` (None: all).

        Called by the rebuild for every weight of :attr:`weights` the layer has.
        """
        spec = self.weights.get(attr)
        if spec is None:
            return value
        for axis in range(value.ndim):
            role = self._role_at(spec, axis, value.ndim)
            if role is not None and positions.get(role) is not None:
                value = np.take(value, positions[role], axis=axis)
        return value

    def zero_weight(self, layer: Any, attr: str, value: np.ndarray, role: str,
                    positions: np.ndarray) -> np.ndarray:
        """Zeroes ``positions`` along the axes of weight ``attr`` that carry ``role``.

        Called by masking (``apply_masks`` and ``FPGMPruning``) on a 0/1 mask of the weight's
        shape, once per role to zero; returns a new array.
        """
        spec = self.weights[attr]
        value = value.copy()
        for axis in range(value.ndim):
            if self._role_at(spec, axis, value.ndim) == role:
                index = [slice(None)] * value.ndim
                index[axis] = positions
                value[tuple(index)] = 0
        return value

    def edit_config(self, config: Dict[str, Any], layer: Any,
                    positions: Mapping[str, Optional[np.ndarray]]) -> Dict[str, Any]:
        """The layer config of the rebuilt layer (``size_key`` set to the kept count).

        Called by the rebuild for every layer that loses channels, before ``from_config``.
        """
        if self.size_key is not None and positions.get(OUT) is not None:
            config = dict(config, **{self.size_key: int(len(positions[OUT]))})
        return config

    def after_set_weights(self, layer: Any) -> None:
        """Refreshes state derived from the weights of the rebuilt ``layer``.

        Called by the rebuild after the sliced weights were set.
        """

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        """Multiply-accumulates of one call with ``n_in``/``n_out`` channels kept.

        Called by :meth:`call_macs` (0: element-wise work is not counted).
        """
        return 0

    def call_macs(self, call: Call, kept: KeptFn) -> int:
        """Multiply-accumulates of one call once the pruned channels are removed: :meth:`macs`
        with the kept counts of the first input and output (override it for layers whose
        output holds several independently pruned spaces, e.g. ``Bidirectional``).

        Called by the MACs count once per call.
        """
        return self.macs(call, len(call.inputs[0].positions(kept)),
                         len(call.outputs[0].positions(kept)))


class BarrierHandler(ChannelHandler):
    """Layers tfcompress cannot reason about: every channel touching them stays."""

    def __init__(self, reason: str = "no channel handler for this layer type "
                 "(custom layer, Lambda or unsupported op)") -> None:
        self.reason = reason

    def barrier_reason(self, layer: Any) -> Optional[str]:
        return self.reason

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return tracer.opaque(call, self.reason)


class CoupledHandler(ChannelHandler):
    """Channel-wise layers: output channel ``c`` depends only on input channel ``c``.

    ``zero_preserving`` says whether a zero input channel stays zero (pooling, padding,
    dropout: yes). Subclasses with per-channel weights that ``apply_masks`` zeroes set
    ``makes_clean``: the output of a pruned channel is then 0 whatever came in.
    """

    zero_preserving: bool = True
    makes_clean: bool = False

    def output_clean(self, call: Call) -> bool:
        """Whether pruned channels are exactly zero in the output."""
        return self.makes_clean or (call.inputs[0].clean and self.zero_preserving)

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        return [call.inputs[0].with_clean(self.output_clean(call))]


def spatial(shape: Shape) -> int:
    """Product of the spatial dimensions (unknown ones count as 1).

    Example:
      >>> spatial((None, 4, 5, 3)), spatial((None, None, 7, 3))
      (20, 7)"""
    return _prod(shape[1:-1])
