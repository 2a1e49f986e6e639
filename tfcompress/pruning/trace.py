"""Tracing a model into channel groups: the channels that must be pruned together.

:func:`trace` walks a Functional or Sequential model call by call (nested models included)
and asks each layer's handler (:mod:`tfcompress.pruning.handlers`) how channels flow through
it. Channels created by one layer form a *space*; spaces coupled by element-wise merges,
shared layers or channel-wise layers are united into a :class:`Group`, the unit that criteria
score and masks prune. Spaces that touch a barrier, a model input or a model output are
blocked: their group is not prunable and says why.

The tracer is the only mutable object here; what it returns (:class:`Trace`) is frozen and is
wrapped by :class:`tfcompress.pruning.ChannelGraph`.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> found = trace(residual_cnn(width=8))
  >>> found.groups["stem_conv"].producers, found.groups["stem_conv"].prunable
  (('stem_conv', 'block1b_conv'), True)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tfcompress._internals import history_layer, is_graph_network
from tfcompress._keras import graph_nodes, input_names, is_model, output_names
from tfcompress.pruning.handlers import BarrierHandler, Call, ChannelHandler, handler_for
from tfcompress.pruning.layout import Layout, Segment

__all__ = ["Group", "LayerRecord", "Trace", "trace", "STRICT_ENV"]

_LOG = logging.getLogger("tfcompress.pruning")

#: Set this environment variable to ``1`` to make every trace strict by default (the test
#: suite does): an exception inside a handler is raised instead of turned into a barrier.
STRICT_ENV = "TFCOMPRESS_STRICT_TRACING"

Barrier = Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Group:
    """Channels pruned together.

    Attributes:
      id: stable name: the first layer producing these channels (or the blocking layer).
      layers: names of every layer whose weights or config involve these channels.
      size: number of channels.
      prunable: False if a barrier, a model input or a model output touches the group.
      producers: layers whose filters the criteria score (Conv, Dense, ...).
      producer_indices: for each producer, which of its output spaces the group holds (the
        ``index`` its handler gave ``Tracer.fresh``: 1 for a Bidirectional's backward units,
        else 0); empty means all 0.
      blocks: pruning keeps the same number of channels in each of ``blocks`` contiguous
        blocks (grouped convolutions); 1 otherwise.
      barriers: ``(layer, reason)`` pairs that block the group.
    """

    id: str
    layers: Tuple[str, ...]
    size: int
    prunable: bool
    producers: Tuple[str, ...] = ()
    blocks: int = 1
    barriers: Tuple[Barrier, ...] = ()
    producer_indices: Tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """The name users read: the group's first producer layer, else its id."""
        return self.producers[0] if self.producers else self.id


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """One traced layer: its handler and every call (shared layers have several).

    Attributes:
      key: qualified layer name (``outer/inner`` inside nested models).
      layer: the Keras layer.
      handler: its :class:`~tfcompress.pruning.handlers.ChannelHandler`.
      calls: every call of the layer, in trace order, with input and output layouts.
      barrier: why the layer blocks its channels, or None.
      probe: how probing judged a layer no handler knows (``"probed: ..."``), or None.
    """

    key: str
    layer: Any
    handler: ChannelHandler
    calls: Tuple[Call, ...]
    barrier: Optional[str] = None
    probe: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Trace:
    """What tracing found (read-only mappings, in trace order)."""

    groups: Mapping[str, Group]
    records: Mapping[str, LayerRecord]
    space_group: Mapping[int, str]
    nested_inputs: Mapping[str, Layout]


@dataclasses.dataclass
class _Record:  # the mutable record the tracer fills, frozen into a LayerRecord at the end
    key: str
    layer: Any
    handler: ChannelHandler
    calls: List[Call]
    barrier: Optional[str] = None
    probe: Optional[str] = None


@dataclasses.dataclass
class _Space:
    size: int
    origin: str
    producer: Optional[str] = None
    blocked: List[Barrier] = dataclasses.field(default_factory=list)
    index: int = 0
    blocks: List[int] = dataclasses.field(default_factory=list)


def _shape(tensor: Any) -> Tuple[Optional[int], ...]:
    shape = tensor.shape  # a TensorShape in tf_keras, a tuple in Keras 3
    if getattr(shape, "rank", 0) is None:
        return ()
    return tuple(None if d is None else int(d) for d in shape)


def _channels(shape: Tuple[Optional[int], ...]) -> int:
    return shape[-1] if len(shape) > 1 and shape[-1] is not None else 1


def strict_default() -> bool:
    """Whether traces are strict when the caller does not say (see :data:`STRICT_ENV`)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def trace(model: Any, strict: Optional[bool] = None) -> Trace:
    """Traces a built Functional or Sequential model (validated by the caller).

    Args:
      model: the model.
      strict: raise exceptions from handlers instead of making their layer a barrier (with a
        logged warning); None reads :data:`STRICT_ENV`.
    """
    return _Tracer(model, strict_default() if strict is None else strict).run()


class _Tracer:
    """Implements the handlers' ``Tracer`` protocol (:mod:`tfcompress.pruning.handlers.base`)
    over a union-find of channel spaces."""

    def __init__(self, model: Any, strict: bool) -> None:
        self.model = model
        self.strict = strict
        self._spaces: List[_Space] = []
        self._parent: List[int] = []
        self._fresh: Dict[Tuple[str, int], int] = {}
        self.records: Dict[str, _Record] = {}
        self.nested_inputs: Dict[str, Layout] = {}

    def run(self) -> Trace:
        model = self.model
        inputs = []
        for tensor, name in zip(model.inputs, input_names(model)):
            size = _channels(_shape(tensor))
            space = self._new_space(size, name, blocked=[(name, "model input")])
            inputs.append(Layout((Segment(space, size),)))
        outputs = self._trace_model(model, "", inputs)
        for name, layout in zip(output_names(model), outputs):
            self._block_layout(layout, (name, "reaches a model output"))
        groups, space_group = self._build_groups()
        records = {key: LayerRecord(key, r.layer, r.handler, tuple(r.calls), r.barrier,
                                    r.probe) for key, r in self.records.items()}
        return Trace(types.MappingProxyType(groups), types.MappingProxyType(records),
                     types.MappingProxyType(space_group),
                     types.MappingProxyType(dict(self.nested_inputs)))

    # ----- Tracer protocol (called by handlers) ----------------------------------------
    def fresh(self, call: Call, size: int, *, clean: bool = True, index: int = 0) -> Layout:
        key = (call.key, index)
        if key not in self._fresh:
            origin = call.key if index == 0 else f"{call.key}:{index}"
            self._fresh[key] = self._new_space(size, origin, producer=call.key, index=index)
        return Layout((Segment(self._fresh[key], size, 1, clean),))

    def unify(self, call: Call, layouts: Sequence[Layout]) -> bool:
        first = layouts[0]
        if not all(first.aligned_with(other) for other in layouts[1:]):
            for layout in layouts:
                self._block_layout(layout, (call.key, "inputs with different channel layouts"))
            return False
        for other in layouts[1:]:
            for a, b in zip(first.segments, other.segments):
                self._union(a.space, b.space)
        return True

    def block(self, call: Call, layout: Layout, reason: str) -> None:
        self._block_layout(layout, (call.key, reason))

    def opaque(self, call: Call, reason: str) -> List[Layout]:
        record = self.records[call.key]
        if record.barrier is None:
            record.barrier = reason
            for earlier in record.calls:  # a shared layer that turns out to be a barrier
                for layout in earlier.inputs + earlier.outputs:
                    self._block_layout(layout, (call.key, reason))
        for layout in call.inputs:
            self._block_layout(layout, (call.key, reason))
        outputs = []
        for i, shape in enumerate(call.output_shapes):
            size = _channels(shape)
            key = (call.key, -1 - i)
            if key not in self._fresh:
                origin = call.key if i == 0 else f"{call.key}:{i}"
                self._fresh[key] = self._new_space(size, origin, blocked=[(call.key, reason)])
            outputs.append(Layout((Segment(self._fresh[key], size, 1, False),)))
        return outputs

    def constrain(self, call: Call, layout: Layout, blocks: int) -> bool:
        if (len(layout.segments) == 1 and layout.tile == 1 and layout.segments[0].repeat == 1
                and layout.segments[0].size % blocks == 0):
            self._spaces[layout.segments[0].space].blocks.append(blocks)
            return True
        self._block_layout(layout, (call.key, f"grouped convolution ({blocks} groups) over "
                                              "channels that are concatenated or repeated"))
        return False

    def note(self, call: Call, text: str) -> None:
        record = self.records[call.key]  # a shared layer: a barrier verdict wins
        if record.probe is None or text.endswith("barrier"):
            record.probe = text

    # ----- tracing --------------------------------------------------------------------------
    def _trace_model(self, model: Any, prefix: str, inputs: List[Layout]) -> List[Layout]:
        if not is_graph_network(model):
            raise ValueError(f"Model {model.name!r} has no layer graph (a Sequential model "
                             "without an input shape, or a subclassed model). Give its first "
                             "layer an `input_shape` or start it with `keras.Input(shape)`.")
        tensors = {id(t): layout for t, layout in zip(model.inputs, inputs)}
        if prefix:
            for tensor, layout in zip(model.inputs, inputs):
                self.nested_inputs[prefix + history_layer(tensor).name] = layout
        # Keras 3 lists keras.ops nodes in `operations`, not in `layers`
        layers = getattr(model, "operations", None) or model.layers
        order = {id(layer): i for i, layer in enumerate(layers)}
        by_depth = graph_nodes(model)
        for depth in sorted(by_depth, reverse=True):
            # within a depth, follow the model's layer order so group ids are reproducible
            nodes = sorted(by_depth[depth], key=lambda n: order.get(id(n.layer), -1))
            for node in nodes:
                if node.is_input:
                    continue
                ins = [tensors[id(t)] for t in node.inputs]
                outs = self._trace_call(node, prefix, ins)
                for tensor, layout in zip(node.outputs, outs):
                    tensors[id(tensor)] = layout
        return [tensors[id(t)] for t in model.outputs]

    def _trace_call(self, node: Any, prefix: str, ins: List[Layout]) -> List[Layout]:
        layer = node.layer
        key = prefix + layer.name
        out_tensors = node.outputs
        nested = is_model(layer)
        if nested and is_graph_network(layer) and len(layer.inputs) == len(ins):
            return self._trace_model(layer, key + "/", ins)
        call = Call(layer, key, ins, [_shape(t) for t in node.inputs],
                    [_shape(t) for t in out_tensors], node.args, node.kwargs,
                    [id(t) for t in node.inputs])
        record = self.records.get(key)
        if record is None:
            handler = handler_for(layer) if not nested else BarrierHandler(
                "nested model without a layer graph")
            record = self.records[key] = _Record(key, layer, handler, [call])
            reason = handler.barrier_reason(layer)
            if reason:
                record.barrier = reason
        else:  # a shared layer: every call must see the same channels
            first = record.calls[0]
            for a, b in zip(first.inputs, ins):
                if a.aligned_with(b):
                    for sa, sb in zip(a.segments, b.segments):
                        self._union(sa.space, sb.space)
                else:
                    self._block_layout(a, (key, "shared layer called on different layouts"))
                    self._block_layout(b, (key, "shared layer called on different layouts"))
            record.calls.append(call)
        outs = (self.opaque(call, record.barrier) if record.barrier is not None
                else self._propagate(record.handler, call))
        call.outputs = outs
        return outs

    def _propagate(self, handler: ChannelHandler, call: Call) -> List[Layout]:
        """The handler's output layouts, checked against the output shapes; a handler error
        or a wrong answer makes the layer a barrier (or raises, when strict)."""
        try:
            outs = list(handler.propagate(call, self))
            problem = None
            if len(outs) != len(call.output_shapes):
                problem = "handler returned the wrong number of outputs"
            for layout, shape in zip(outs, call.output_shapes):
                if len(shape) > 1 and shape[-1] is not None and layout.length != shape[-1]:
                    problem = (f"handler produced {layout.length} channels for an output "
                               f"with {shape[-1]}")
            if problem is not None:
                raise ValueError(problem)
            return outs
        except Exception as error:  # never crash on a layer we misjudged: block it
            if self.strict:
                raise
            reason = f"tracing failed ({type(error).__name__}: {error})"
            _LOG.warning("Layer %r (%s) is a barrier: %s. Please report this as a bug of "
                         "%s.", call.key, type(call.layer).__name__, reason,
                         type(handler).__name__)
            return self.opaque(call, reason)

    # ----- spaces and groups ----------------------------------------------------------------
    def _new_space(self, size: int, origin: str, producer: Optional[str] = None,
                   blocked: Optional[List[Barrier]] = None, index: int = 0) -> int:
        self._spaces.append(_Space(size, origin, producer, list(blocked or []), index))
        self._parent.append(len(self._parent))
        return len(self._spaces) - 1

    def _find(self, space: int) -> int:
        root = space
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[space] != root:
            self._parent[space], space = root, self._parent[space]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if self._spaces[ra].size != self._spaces[rb].size:  # cannot happen for aligned layouts
            self._spaces[ra].blocked.append((self._spaces[rb].origin, "channel count mismatch"))
            self._spaces[rb].blocked.append((self._spaces[ra].origin, "channel count mismatch"))
            return
        self._parent[max(ra, rb)] = min(ra, rb)

    def _block_layout(self, layout: Layout, barrier: Barrier) -> None:
        for segment in layout.segments:
            blocked = self._spaces[segment.space].blocked
            if barrier not in blocked:
                blocked.append(barrier)

    def _build_groups(self) -> Tuple[Dict[str, Group], Dict[int, str]]:
        members: Dict[int, List[int]] = {}
        for space in range(len(self._spaces)):
            members.setdefault(self._find(space), []).append(space)
        layers: Dict[int, List[str]] = {root: [] for root in members}
        for record in self.records.values():
            for call in record.calls:
                for layout in call.inputs + call.outputs:
                    for segment in layout.segments:
                        names = layers[self._find(segment.space)]
                        if record.key not in names:
                            names.append(record.key)
        groups: Dict[str, Group] = {}
        space_group: Dict[int, str] = {}
        for root in sorted(members):
            spaces = [self._spaces[s] for s in members[root]]
            made = [s for s in spaces if s.producer is not None]
            producers = tuple(s.producer for s in made)
            barriers = list(dict.fromkeys(b for s in spaces for b in s.blocked))
            size = spaces[0].size
            blocks = math.lcm(*[b for s in spaces for b in s.blocks]) if any(
                s.blocks for s in spaces) else 1
            if size % blocks:
                barriers.append((producers[0] if producers else spaces[0].origin,
                                 f"grouped convolutions need {blocks} equal blocks of {size}"))
            if not producers and not barriers:
                barriers.append((spaces[0].origin, "no layer produces these channels"))
            gid = _unique_id(groups, (made or spaces)[0].origin)
            indices = tuple(s.index for s in made) if any(s.index for s in made) else ()
            groups[gid] = Group(gid, tuple(layers[root]), size, not barriers, producers,
                                blocks, tuple(barriers), indices)
            for space in members[root]:
                space_group[space] = gid
        return groups, space_group


def _unique_id(taken: Mapping[str, Any], base: str) -> str:
    gid, n = base, 1
    while gid in taken:
        n += 1
        gid = f"{base}#{n}"
    return gid
