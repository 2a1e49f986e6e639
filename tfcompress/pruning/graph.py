"""Tracing a tf_keras model into channel groups: the channels that must be pruned together.

:class:`ChannelGraph` walks a Functional or Sequential model call by call (nested models
included) and asks each layer's handler (:mod:`tfcompress.pruning.handlers`) how channels flow
through it. Channels created by one layer form a *space*; spaces coupled by element-wise
merges, shared layers or channel-wise layers are united into a :class:`Group`, the unit that
criteria score and masks prune. Spaces that touch a barrier, a model input or a model output
are blocked: their group is not prunable and :attr:`ChannelGraph.barriers` says why.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcompress._keras import keras, require_graph_model
from tfcompress.pruning.handlers.base import BarrierHandler, Call, ChannelHandler
from tfcompress.pruning.handlers.registry import handler_for
from tfcompress.pruning.layout import KeptFn, Layout, Segment
from tfcompress.pruning.masks import preview_names

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.masks import Masks

__all__ = ["ChannelGraph", "Group", "LayerRecord"]

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


@dataclasses.dataclass
class LayerRecord:
    """One traced layer: its handler and every call (shared layers have several)."""

    key: str
    layer: Any
    handler: ChannelHandler
    calls: List[Call]
    barrier: Optional[str] = None


@dataclasses.dataclass
class _Space:
    size: int
    origin: str
    producer: Optional[str] = None
    blocked: List[Barrier] = dataclasses.field(default_factory=list)
    blocks: List[int] = dataclasses.field(default_factory=list)


def _shape(tensor: Any) -> Tuple[Optional[int], ...]:
    shape = tensor.shape
    return tuple(shape.as_list()) if shape.rank is not None else ()


def _is_nested_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


class ChannelGraph:
    """The channel-dependency graph of a tf_keras model (see the module docstring).

    Tracing happens once, in the constructor; :meth:`compute_masks`, :meth:`apply`,
    :meth:`macs` and :meth:`params` read the model's current weights without re-tracing.

    Args:
      model: a built Functional or Sequential ``tf_keras`` model.

    Raises:
      TypeError: if ``model`` is not a tf_keras model (a Keras 3 model, say).
      ValueError: if it is subclassed or unbuilt.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> graph = ChannelGraph(residual_cnn(width=8))
      >>> [g.id for g in graph.groups if g.prunable]
      ['stem_conv', 'block1a_conv', 'block2a_conv', 'block2b_conv']
      >>> masks = graph.compute_masks(0.5)
      >>> graph.macs(masks) < graph.macs()
      True
    """

    def __init__(self, model: keras.Model) -> None:
        require_graph_model(model)
        self.model = model
        self._spaces: List[_Space] = []
        self._parent: List[int] = []
        self._fresh: Dict[Tuple[str, int], int] = {}
        self.records: Dict[str, LayerRecord] = {}
        #: layouts of the inputs of nested models, by qualified InputLayer name
        self.nested_inputs: Dict[str, Layout] = {}
        inputs = []
        for tensor, name in zip(model.inputs, model.input_names):
            shape = _shape(tensor)
            size = shape[-1] if len(shape) > 1 and shape[-1] is not None else 1
            space = self._new_space(size, name, blocked=[(name, "model input")])
            inputs.append(Layout((Segment(space, size),)))
        outputs = self._trace_model(model, "", inputs)
        for name, layout in zip(model.output_names, outputs):
            self._block_layout(layout, (name, "reaches a model output"))
        self._build_groups()

    # ----- public views -------------------------------------------------------------------
    @property
    def groups(self) -> List[Group]:
        """Every channel group, in trace order."""
        return list(self._groups.values())

    @property
    def barriers(self) -> Dict[str, List[Barrier]]:
        """``{group id: [(layer, reason), ...]}`` for the groups that cannot be pruned."""
        return {g.id: list(g.barriers) for g in self._groups.values() if g.barriers}

    def group(self, group_id: str) -> Group:
        """The group named ``group_id``.

        Raises:
          ValueError: if the model has no such group.
        """
        if group_id not in self._groups:
            raise ValueError(f"Model {self.model.name!r} has no channel group {group_id!r}; "
                             f"its groups are {preview_names(self._groups)}.")
        return self._groups[group_id]

    def group_of_space(self, space: int) -> Group:
        """The group a channel space belongs to."""
        return self._groups[self._space_group[self._find(space)]]

    def filters(self, group: Group) -> np.ndarray:
        """``(group.size, n_features)``: the current filters of all producers, concatenated."""
        parts = []
        for key in group.producers:
            record = self.records[key]
            filters = record.handler.filters(record.layer)
            if filters is not None:
                parts.append(np.asarray(filters, np.float64).reshape(group.size, -1))
        return np.concatenate(parts, axis=1) if parts else np.zeros((group.size, 0))

    def compute_masks(self, ratio: float, **kwargs: Any) -> "Masks":
        """Scores every prunable group on the current weights and keeps the best channels.

        See :func:`tfcompress.pruning.fpgm_masks` for the arguments.
        """
        from tfcompress.pruning.criteria import select_masks

        return select_masks(self, ratio, **kwargs)

    def apply(self, masks: "Masks") -> None:
        """Zeroes the pruned channels in place (see :func:`tfcompress.pruning.apply_masks`)."""
        from tfcompress.pruning.apply import zero_pruned

        zero_pruned(self, masks)

    def macs(self, masks: Optional["Masks"] = None) -> int:
        """Multiply-accumulates of one forward pass per example, optionally after pruning."""
        from tfcompress.pruning.counting import graph_macs

        return graph_macs(self, masks)

    def params(self, masks: Optional["Masks"] = None) -> int:
        """Number of weights (all of them), optionally of the model rebuilt with ``masks``."""
        from tfcompress.pruning.counting import graph_params

        return graph_params(self, masks)

    def kept_fn(self, masks: Optional["Masks"]) -> KeptFn:
        """Maps a space id to its kept channel indices (None: all kept) after validating
        ``masks`` against this model."""
        if masks is None:
            return lambda space: None
        self.check_masks(masks)
        cache: Dict[int, Optional[np.ndarray]] = {}

        def kept(space: int) -> Optional[np.ndarray]:
            if space not in cache:
                group = self._groups[self._space_group[self._find(space)]]
                idx = masks.kept.get(group.id)
                cache[space] = None if idx is None or len(idx) == group.size else idx
            return cache[space]

        return kept

    def check_masks(self, masks: "Masks") -> None:
        """Validates ``masks`` against this model (see :func:`masks.check_masks`).

        Raises:
          TypeError: if ``masks`` is not a :class:`Masks`.
          ValueError: naming the first mismatch (unknown group, wrong size, bad indices).
        """
        from tfcompress.pruning.masks import check_masks

        check_masks(masks, self.model.name, self._groups)

    # ----- Tracer protocol (called by handlers) --------------------------------------------
    def fresh(self, call: Call, size: int, *, clean: bool = True, index: int = 0) -> Layout:
        key = (call.key, index)
        if key not in self._fresh:
            origin = call.key if index == 0 else f"{call.key}:{index}"
            self._fresh[key] = self._new_space(size, origin, producer=call.key)
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
            size = shape[-1] if len(shape) > 1 and shape[-1] is not None else 1
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

    # ----- tracing --------------------------------------------------------------------------
    def _trace_model(self, model: Any, prefix: str, inputs: List[Layout]) -> List[Layout]:
        if not getattr(model, "_is_graph_network", False):
            raise ValueError(f"Model {model.name!r} has no layer graph (a Sequential model "
                             "without an input shape, or a subclassed model). Give its first "
                             "layer an `input_shape` or start it with `keras.Input(shape)`.")
        tensors = {id(t): layout for t, layout in zip(model.inputs, inputs)}
        if prefix:
            for tensor, layout in zip(model.inputs, inputs):
                self.nested_inputs[prefix + tensor._keras_history.layer.name] = layout
        order = {id(layer): i for i, layer in enumerate(model.layers)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            # within a depth, follow the model's layer order so group ids are reproducible
            nodes = sorted(model._nodes_by_depth[depth], key=lambda n: order.get(id(n.layer), -1))
            for node in nodes:
                if node.is_input:
                    continue
                ins = [tensors[id(t)] for t in node.keras_inputs]
                outs = self._trace_call(node, prefix, ins)
                for tensor, layout in zip(tf.nest.flatten(node.outputs), outs):
                    tensors[id(tensor)] = layout
        return [tensors[id(t)] for t in model.outputs]

    def _trace_call(self, node: Any, prefix: str, ins: List[Layout]) -> List[Layout]:
        layer = node.layer
        key = prefix + layer.name
        out_tensors = tf.nest.flatten(node.outputs)
        if _is_nested_model(layer) and getattr(layer, "_is_graph_network", False) \
                and len(layer.inputs) == len(ins):
            return self._trace_model(layer, key + "/", ins)
        call = Call(layer, key, ins, [_shape(t) for t in node.keras_inputs],
                    [_shape(t) for t in out_tensors], node.call_args, node.call_kwargs,
                    [id(t) for t in node.keras_inputs])
        record = self.records.get(key)
        if record is None:
            handler = handler_for(layer) if not _is_nested_model(layer) else BarrierHandler(
                "nested model without a layer graph")
            record = self.records[key] = LayerRecord(key, layer, handler, [call])
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
        if record.barrier is not None:
            outs = self.opaque(call, record.barrier)
        else:
            try:
                outs = list(record.handler.propagate(call, self))
            except Exception as error:  # never crash on a layer we misjudged: block it
                outs = self.opaque(call, f"tracing failed ({type(error).__name__}: {error})")
            for i, (layout, shape) in enumerate(zip(outs, call.output_shapes)):
                if len(shape) > 1 and shape[-1] is not None and layout.length != shape[-1]:
                    outs = self.opaque(call, f"handler produced {layout.length} channels for "
                                             f"an output with {shape[-1]}")
                    break
            if len(outs) != len(call.output_shapes):
                outs = self.opaque(call, "handler returned the wrong number of outputs")
        call.outputs = outs
        return outs

    # ----- spaces and groups ----------------------------------------------------------------
    def _new_space(self, size: int, origin: str, producer: Optional[str] = None,
                   blocked: Optional[List[Barrier]] = None) -> int:
        self._spaces.append(_Space(size, origin, producer, list(blocked or [])))
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

    def _build_groups(self) -> None:
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
        self._groups: Dict[str, Group] = {}
        self._space_group: Dict[int, str] = {}
        for root in sorted(members):
            spaces = [self._spaces[s] for s in members[root]]
            producers = tuple(s.producer for s in spaces if s.producer is not None)
            barriers = list(dict.fromkeys(b for s in spaces for b in s.blocked))
            size = spaces[0].size
            blocks = math.lcm(*[b for s in spaces for b in s.blocks]) if any(
                s.blocks for s in spaces) else 1
            if size % blocks:
                barriers.append((producers[0] if producers else spaces[0].origin,
                                 f"grouped convolutions need {blocks} equal blocks of {size}"))
            if not producers and not barriers:
                barriers.append((spaces[0].origin, "no layer produces these channels"))
            gid = self._unique_id(producers[0] if producers else spaces[0].origin)
            self._groups[gid] = Group(gid, tuple(layers[root]), size, not barriers, producers,
                                      blocks, tuple(barriers))
            self._space_group[root] = gid

    def _unique_id(self, base: str) -> str:
        gid, n = base, 1
        while gid in self._groups:
            n += 1
            gid = f"{base}#{n}"
        return gid

