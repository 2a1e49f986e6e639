"""Which channel groups can be cut to zero channels: the residual branches depth pruning removes.

A group is *removable* when zeroing all of its channels makes a residual branch independent
of the input, and that branch ends in a two-input ``Add`` whose other input stays live: the
``Add`` then computes ``x + c`` with a per-channel constant ``c`` (biases and BatchNorm betas
carried through the rest of the branch), and the whole branch can go
(:mod:`tfcompress.pruning.depth` does the rebuild).

:func:`find_branches` reads a traced model (called once per :class:`ChannelGraph`, cached
there). It is structural and conservative:

* a *branch* is every top-level layer, called once, whose outputs reach the model's outputs
  only through one input of an ``Add`` (called once, on two different tensors);
* cutting group ``g`` must make that input constant: a tensor whose channels are all ``g``'s
  is zero, a layer whose inputs are all constant gives a constant;
* and constant over positions: a constant that is not zero must not pass through a layer
  that mixes positions unevenly ('same'-padded convolutions with a kernel larger than 1,
  zero padding, transposed and recurrent layers, layers without a handler, nested models).

Layers inside nested models and shared layers are never part of a branch.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> from tfcompress.pruning import ChannelGraph
  >>> branches = ChannelGraph(residual_cnn(width=8)).branches
  >>> branches["block1a_conv"].merge, branches["block1a_conv"].layers[:3]
  ('block1_add', ('block1a_conv', 'block1a_bn', 'block1a_relu'))
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from tfcompress._keras import graph_nodes, is_model, layer_classes
from tfcompress.pruning.handlers import BarrierHandler
from tfcompress.pruning.handlers.conv import ConvTransposeHandler
from tfcompress.pruning.handlers.recurrent import BidirectionalHandler, RecurrentHandler
from tfcompress.pruning.layout import Layout

__all__ = ["Branch", "find_branches"]

_ADD = tuple(layer_classes("Add"))
_PADDING = tuple(layer_classes("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D"))
_UNEVEN_HANDLERS = (BarrierHandler, ConvTransposeHandler, RecurrentHandler, BidirectionalHandler)

ZERO, CONSTANT = "zero", "constant"


@dataclasses.dataclass(frozen=True)
class Branch:
    """A residual branch that cutting one group removes.

    Attributes:
      group: the group whose zero channels make the branch constant.
      layers: the keys of the layers removed with it (every layer of the branch, in
        topological order; layers of a nested model inside it as ``outer/inner``).
      merge: the key of the ``Add`` that becomes a ``ChannelBias``.
      branch_input: which input of the ``Add`` (0 or 1) the branch feeds; the other stays.
    """

    group: str
    layers: Tuple[str, ...]
    merge: str
    branch_input: int = 1


@dataclasses.dataclass
class _Node:
    layer: Any
    depth: int
    inputs: List[int]  # tensor ids
    outputs: List[int]


class _Network:
    """The top-level calls of a model: producers and consumers of each tensor."""

    def __init__(self, model: Any) -> None:
        self.nodes: List[_Node] = []
        self.producer: Dict[int, int] = {}
        self.consumers: Dict[int, List[Tuple[int, int]]] = {}  # tensor -> [(node, position)]
        self.calls: Dict[str, int] = {}
        for depth, nodes in graph_nodes(model).items():
            for node in nodes:
                if node.is_input:
                    continue
                index = len(self.nodes)
                self.nodes.append(_Node(node.layer, depth, [id(t) for t in node.inputs],
                                        [id(t) for t in node.outputs]))
                self.calls[node.layer.name] = self.calls.get(node.layer.name, 0) + 1
                for tensor in self.nodes[-1].outputs:
                    self.producer[tensor] = index
                for position, tensor in enumerate(self.nodes[-1].inputs):
                    self.consumers.setdefault(tensor, []).append((index, position))
        self.model_outputs = {id(t) for t in model.outputs}

    def merges(self) -> List[int]:
        """The ``Add`` calls a branch can end in."""
        return [i for i, node in enumerate(self.nodes)
                if isinstance(node.layer, _ADD) and self.calls[node.layer.name] == 1
                and len(node.inputs) == 2 and node.inputs[0] != node.inputs[1]]

    def branch(self, merge: int, side: int) -> List[int]:
        """The nodes whose outputs reach the model only through input ``side`` of ``merge``,
        inputs first (deepest first)."""
        target = self.nodes[merge].inputs[side]
        members: Set[int] = set()
        decided: Set[int] = set()
        heap = [(self.nodes[self.producer[target]].depth, self.producer[target])] \
            if target in self.producer else []
        while heap:  # consumers are shallower than producers: decided before them
            _, index = heapq.heappop(heap)
            node = self.nodes[index]
            if index in decided or self.calls[node.layer.name] != 1:
                continue
            decided.add(index)
            if all(self._feeds(tensor, members, merge, target) for tensor in node.outputs):
                members.add(index)
                for tensor in node.inputs:
                    if tensor in self.producer:
                        producer = self.producer[tensor]
                        heapq.heappush(heap, (self.nodes[producer].depth, producer))
        return sorted(members, key=lambda i: -self.nodes[i].depth)

    def _feeds(self, tensor: int, members: Set[int], merge: int, target: int) -> bool:
        if tensor in self.model_outputs:
            return False
        return all(node in members or (node == merge and tensor == target)
                   for node, _ in self.consumers.get(tensor, []))


def _keeps_constant(layer: Any, records: Mapping[str, Any]) -> bool:
    """Whether a layer maps an input that is the same at every position (and in every
    example) to an output that is, too (not when it pads or mixes positions unevenly)."""
    record = records.get(layer.name)
    if record is None or is_model(layer) or isinstance(layer, _PADDING):
        return False
    if record.barrier is not None or record.probe is not None:
        return False
    if isinstance(record.handler, _UNEVEN_HANDLERS):
        return False
    kernel = getattr(layer, "kernel_size", None) or ()
    return getattr(layer, "padding", "valid") == "valid" or all(k == 1 for k in kernel)


def _all_in(layout: Layout, spaces: Set[int]) -> bool:
    return bool(layout.segments) and all(s.space in spaces for s in layout.segments)


def _constant_after_cut(network: _Network, members: List[int], target: int, spaces: Set[int],
                        records: Mapping[str, Any]) -> bool:
    """Whether zeroing ``spaces`` makes tensor ``target`` a constant, the same at every
    position (walks the branch's nodes, inputs first)."""
    state: Dict[int, Optional[str]] = {}
    for index in members:
        node = network.nodes[index]
        record = records.get(node.layer.name)
        layouts = record.calls[0].outputs if record is not None else []
        ins = [state.get(tensor) for tensor in node.inputs]
        for j, tensor in enumerate(node.outputs):
            if j < len(layouts) and _all_in(layouts[j], spaces):
                state[tensor] = ZERO if layouts[j].clean else CONSTANT
            elif ins and all(ins) and (all(s == ZERO for s in ins)
                                       or _keeps_constant(node.layer, records)):
                state[tensor] = CONSTANT  # e.g. a convolution of zeros: its bias
            else:
                state[tensor] = None
    return state.get(target) is not None


def find_branches(model: Any, groups: Mapping[str, Any], records: Mapping[str, Any],
                  space_group: Mapping[int, str]) -> Dict[str, Branch]:
    """``{group id: Branch}`` of every removable group of a traced model (see the module
    docstring); a group removable from several nested branches gets the smallest."""
    network = _Network(model)
    spaces_of: Dict[str, Set[int]] = {}
    for space, gid in space_group.items():
        spaces_of.setdefault(gid, set()).add(space)
    by_layer: Dict[str, List[Any]] = {}
    for group in groups.values():
        for key in group.layers if group.prunable else ():
            by_layer.setdefault(key, []).append(group)
    found: Dict[str, Branch] = {}
    for merge in network.merges():
        for side in (0, 1):
            members = network.branch(merge, side)
            keys = _keys(network, members, records)
            names = set(keys)
            candidates = {g.id: g for key in keys for g in by_layer.get(key, ())}
            for group in candidates.values():
                if not set(group.layers) <= names:
                    continue
                if group.id in found and len(found[group.id].layers) <= len(keys):
                    continue
                target = network.nodes[merge].inputs[side]
                if _constant_after_cut(network, members, target, spaces_of[group.id], records):
                    found[group.id] = Branch(group.id, keys, network.nodes[merge].layer.name,
                                             side)
    return {gid: found[gid] for gid in groups if gid in found}


def _keys(network: _Network, members: List[int], records: Mapping[str, Any]
          ) -> Tuple[str, ...]:
    """The record keys of the branch's layers (a nested model: all of its layers)."""
    keys: List[str] = []
    for index in members:
        name = network.nodes[index].layer.name
        keys.append(name)
        if is_model(network.nodes[index].layer):
            keys.extend(k for k in records if k.startswith(name + "/"))
    return tuple(keys)
