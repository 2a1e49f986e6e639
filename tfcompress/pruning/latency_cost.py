"""The latency model of a traced model: measured cost of every unit pruning can change.

A *cost unit* is a chain of layers the runtime executes together: a layer, then the
single-input layers that only it feeds and that keep its channels (BatchNormalization,
activations, padding, pooling, a depthwise convolution), taking at most one layer that
changes the channel count (a Conv/Dense). Chains stop at merges and fan-outs, so a
residual branch is made of whole units. Only units touching a prunable group are modelled:
the others cost the same before and after pruning.

Each unit is measured as a micro-model (:mod:`tfcompress.latency.micro`) on a grid of kept
counts of the groups it touches (``levels``; the layers' configs are edited by the same
handlers the rebuild uses, so the micro-model is the slim layer), and interpolated
multilinearly in between. A whole model's latency for some kept counts is then its measured
latency minus the predicted savings of its units (:meth:`LatencyCost.saving`); a unit of a
removed residual branch saves all its time.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from tfcompress._keras import graph_nodes, is_input_layer
from tfcompress.latency.micro import Unit, make_unit
from tfcompress.latency.table import LatencyTable
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.handlers import BarrierHandler
from tfcompress.pruning.trace import LayerRecord

__all__ = [
    "CostUnit", "cost_units", "LatencyCost", "measurement_levels", "group_multiple",
    "group_steps",
]

_LOG = logging.getLogger("tfcompress.pruning")
_UNBUILDABLE = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
_SHAPE_KEYS = ("batch_input_shape", "batch_shape", "input_shape", "input_dim")


@dataclasses.dataclass(frozen=True)
class CostUnit:
    """Layers measured together (first the head) and the prunable groups they touch."""

    keys: Tuple[str, ...]
    groups: Tuple[str, ...]


def _tensor_links(graph: ChannelGraph) -> Tuple[Dict[int, List[str]], Dict[str, List[int]]]:
    """``({id(tensor): [consumer layer name, ...]}, {layer name: [id(output tensor), ...]})``
    of the top-level model, from one walk of its graph."""
    consumers: Dict[int, List[str]] = {}
    outputs: Dict[str, List[int]] = {}
    for nodes in graph_nodes(graph.model).values():
        for node in nodes:
            for tensor in node.inputs:
                consumers.setdefault(id(tensor), []).append(node.layer.name)
            outputs.setdefault(node.layer.name, []).extend(id(t) for t in node.outputs)
    return consumers, outputs


def _mixes(record: LayerRecord) -> bool:
    call = record.calls[0]
    return [lay.spaces for lay in call.inputs[:1]] != [lay.spaces for lay in call.outputs[:1]]


def _chain(graph: ChannelGraph, head: str, consumers, outputs, taken: Set[str]) -> List[str]:
    """``head`` and the followers it alone feeds (see the module docstring)."""
    records, chain = graph.records, [head]
    mixed = _mixes(records[head])
    while True:
        ids = outputs.get(chain[-1], [])
        users = consumers.get(ids[0], []) if len(ids) == 1 else []
        if len(users) != 1 or users[0] not in records or users[0] in taken:
            return chain
        follower = records[users[0]]
        if len(follower.calls) != 1 or len(follower.calls[0].inputs) != 1 or \
                follower.barrier is not None or (mixed and _mixes(follower)):
            return chain
        mixed = mixed or _mixes(follower)
        chain.append(follower.key)


def cost_units(graph: ChannelGraph) -> List[CostUnit]:
    """The units of ``graph`` that touch a prunable group, in trace order."""
    prunable = {g.id for g in graph.groups if g.prunable}
    consumers, outputs = _tensor_links(graph)
    taken: Set[str] = set()
    units = []
    for key, record in graph.records.items():
        if key in taken or is_input_layer(record.layer) or record.barrier is not None or \
                isinstance(record.handler, BarrierHandler):
            continue
        nested = "/" in key or len(record.calls) != 1
        keys = [key] if nested else _chain(graph, key, consumers, outputs, taken)
        taken.update(keys)
        groups: Dict[str, None] = {}
        for k in keys:
            for call in graph.records[k].calls:
                for layout in list(call.inputs) + list(call.outputs):
                    for space in layout.spaces:
                        gid = graph.group_of_space(space).id
                        if gid in prunable:
                            groups[gid] = None
        if groups:
            units.append(CostUnit(tuple(keys), tuple(groups)))
    return units


def measurement_levels(size: int, multiple: int, points: int = 6) -> List[int]:
    """Kept counts a group is measured at: ``multiple``, then about 1/8, 1/4, 1/2, 3/4 of
    ``size`` rounded up to ``multiple``, and ``size`` (fewer for ``points`` < 6).

    Example:
      >>> measurement_levels(64, 8)
      [8, 16, 32, 48, 64]
      >>> measurement_levels(64, 8, points=3)
      [8, 32, 64]
    """
    fractions = {6: (0.125, 0.25, 0.5, 0.75), 3: (0.5,), 2: ()}.get(points, (0.5,))
    levels = {min(size, multiple), size}
    for f in fractions:
        levels.add(min(size, max(multiple, -(-int(np.ceil(f * size)) // multiple) * multiple)))
    return sorted(levels)


def _kept_fn(graph: ChannelGraph, counts: Mapping[str, int]):
    def kept(space: int) -> Optional[np.ndarray]:
        group = graph.group_of_space(space)
        count = counts.get(group.id, group.size)
        return None if count >= group.size else np.arange(count)
    return kept


def _buildable(layer: Any) -> bool:
    return type(layer).__name__ not in _UNBUILDABLE and hasattr(type(layer), "from_config")


def micro_unit(graph: ChannelGraph, unit: CostUnit, counts: Mapping[str, int]) -> Unit:
    """The unit's layers as they are in the slim model with ``counts`` kept channels."""
    kept = _kept_fn(graph, counts)
    layers = []
    for key in unit.keys:
        record = graph.records[key]
        call, layer, handler = record.calls[0], record.layer, record.handler
        config = dict(layer.get_config())
        positions = handler.role_positions(layer, call, kept)
        if any(p is not None for p in positions.values()):
            config = handler.edit_config(config, layer, positions)
        layers.append((type(layer), {k: v for k, v in config.items() if k not in _SHAPE_KEYS}))
    head = graph.records[unit.keys[0]].calls[0]
    shapes = [tuple(shape[1:-1]) + (len(layout.positions(kept)),)
              for shape, layout in zip(head.input_shapes, head.inputs)]
    return make_unit(layers, shapes)


class LatencyCost:
    """Measured, interpolated latency of the cost units of ``graph`` on ``table``'s runtime.

    Args:
      graph: the traced model.
      table: where micro-benchmarks are looked up (and measured when missing).
      multiples: ``{group id: channel multiple}`` the grid is rounded to (default 1).
      tiles: ``{group id: tile}``: a count is rounded up to a multiple of its group's tile
        before interpolating, since the runtime's kernels compute whole tiles (default 1).
      progress: show a progress bar while measuring.
    """

    def __init__(self, graph: ChannelGraph, table: LatencyTable,
                 multiples: Optional[Mapping[str, int]] = None, progress: bool = False,
                 tiles: Optional[Mapping[str, int]] = None):
        self.graph, self.table = graph, table
        multiples, self.tiles = multiples or {}, dict(tiles or {})
        self.units: List[CostUnit] = []
        self.unmeasured: List[Tuple[str, str]] = []
        self.levels = {g.id: measurement_levels(g.size, multiples.get(g.id, 1))
                       for g in graph.groups if g.prunable}
        candidates = [u for u in cost_units(graph) if self._check_buildable(u)]
        grids = [self._grid(u) for u in candidates]
        micro = [[micro_unit(graph, u, dict(zip(u.groups, point))) for point in grid]
                 for u, grid in zip(candidates, grids)]
        times = table.lookup([m for ms in micro for m in ms], progress=progress)
        overhead, start = table.overhead_ms, 0
        self._axes: List[List[np.ndarray]] = []
        self._values: List[np.ndarray] = []
        for unit, grid in zip(candidates, grids):
            values = times[start:start + len(grid)]
            start += len(grid)
            if any(v is None for v in values):
                self.unmeasured.append((unit.keys[0], "does not convert for this runtime"))
                continue
            axes = [np.asarray(self._unit_levels(unit)[g], np.float64) for g in unit.groups]
            shape = [len(a) for a in axes]
            self.units.append(unit)
            self._axes.append(axes)
            self._values.append(np.maximum(np.asarray(values) - overhead, 0.0).reshape(shape))
        self._full_ms: Optional[List[float]] = None
        self._by_group: Dict[str, List[int]] = {}
        for i, unit in enumerate(self.units):
            for gid in unit.groups:
                self._by_group.setdefault(gid, []).append(i)

    def _check_buildable(self, unit: CostUnit) -> bool:
        for key in unit.keys:
            if not _buildable(self.graph.records[key].layer):
                self.unmeasured.append((key, "cannot be rebuilt from its config alone"))
                return False
        return True

    def _unit_levels(self, unit: CostUnit) -> Dict[str, List[int]]:
        points = 6 if len(unit.groups) <= 2 else (3 if len(unit.groups) == 3 else 2)
        sizes = {g.id: g.size for g in self.graph.groups}
        return {g: (self.levels[g] if points == 6 else
                    measurement_levels(sizes[g], self.levels[g][0], points))
                for g in unit.groups}

    def _grid(self, unit: CostUnit) -> List[Tuple[int, ...]]:
        levels = self._unit_levels(unit)
        return list(itertools.product(*(levels[g] for g in unit.groups)))

    def unit_ms(self, index: int, counts: Mapping[str, int]) -> float:
        """Interpolated milliseconds of unit ``index`` with ``counts`` kept channels."""
        unit, axes, values = self.units[index], self._axes[index], self._values[index]
        corners = []
        for gid, axis in zip(unit.groups, axes):
            c = float(counts.get(gid, axis[-1]))
            tile = self.tiles.get(gid, 1)
            c = min(float(axis[-1]), math.ceil(c / tile) * tile)
            i = int(np.clip(np.searchsorted(axis, c) - 1, 0, max(len(axis) - 2, 0)))
            if len(axis) == 1:
                corners.append(((0, 1.0),))
                continue
            w = (c - axis[i]) / (axis[i + 1] - axis[i])
            corners.append(((i, 1.0 - w), (i + 1, w)))
        total = 0.0
        for combo in itertools.product(*corners):
            weight = float(np.prod([w for _, w in combo]))
            if weight:
                total += weight * float(values[tuple(i for i, _ in combo)])
        return max(total, 0.0)

    def units_of(self, group_ids: Sequence[str]) -> List[int]:
        """Indices of the units touching any of ``group_ids``."""
        return sorted({i for g in group_ids for i in self._by_group.get(g, ())})

    def saving(self, counts: Mapping[str, int], removed: Set[str] = frozenset(),
               indices: Optional[Sequence[int]] = None) -> float:
        """Predicted milliseconds saved by keeping ``counts`` channels (groups left out keep
        all), the layers in ``removed`` being gone, over units ``indices`` (default all)."""
        if self._full_ms is None:  # every unit at full width, computed once
            self._full_ms = [self.unit_ms(i, {}) for i in range(len(self.units))]
        total = 0.0
        for i in (range(len(self.units)) if indices is None else indices):
            gone = any(k in removed for k in self.units[i].keys)
            total += self._full_ms[i] - (0.0 if gone else self.unit_ms(i, counts))
        return total


def group_multiple(size: int, multiples: Mapping[str, int]) -> int:
    """The channel multiple a group of ``size`` channels is allocated in: the largest tile
    the runtime's kernels prefer, at most a quarter of the group (a power of two).

    Example:
      >>> [group_multiple(n, {"out": 16, "in": 8}) for n in (8, 32, 64, 1024)]
      [2, 8, 16, 16]
    """
    tile = max(multiples.values(), default=1)
    cap = 2 ** int(math.log2(max(1, size // 4))) if size >= 4 else 1
    return max(1, min(tile, cap))


def group_steps(graph: ChannelGraph, multiples: Mapping[str, int], round_to: int = 1,
                steps: int = 32) -> Dict[str, int]:
    """``{group id: step}``: kept counts are allocated (and measured) in multiples of the
    step: ``round_to`` if > 1, else the learned tile, made a multiple of the group's blocks
    and coarse enough that a group has at most ``steps`` of them."""
    result = {}
    for group in graph.groups:
        if group.prunable:
            multiple = round_to if round_to > 1 else group_multiple(group.size, multiples)
            multiple = min(multiple * group.blocks // math.gcd(multiple, group.blocks),
                           group.size)
            result[group.id] = multiple * max(1, math.ceil(group.size / multiple / steps))
    return result
