"""A model's latency on a runtime, predicted for any kept counts and calibrated once.

:func:`latency_model` gathers what a prediction needs, measuring what the cache lacks: the
runtime's channel tiles, the micro-benchmark grid of every cost unit
(:class:`~tfcompress.pruning.latency_cost.LatencyCost`), the model's own latency, and one
**calibration**: a slim model (every group at about half its channels) is rebuilt, exported
and timed together with the model, and the ratio of its measured to its predicted saving
scales every later prediction. Isolated micro-benchmarks miss what a whole graph shares
(cache reuse, per-op setup), which this one factor absorbs; the calibration point is
cached with the table, like the model's latency.

Example:
  >>> import tempfile
  >>> from tfcompress._keras import keras
  >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, name="hidden"),
  ...                           keras.layers.Dense(10)])
  >>> table = LatencyTable("litert-float32", path=tempfile.mkdtemp() + "/table.json")
  >>> table.set_extra("multiples", {"out": 8, "in": 8, "depthwise": 8})  # skips the sweeps
  >>> predictor = latency_model(ChannelGraph(model), table=table)
  >>> predictor.steps, predictor.predict_ms({"hidden": 64}) < predictor.full_ms
  ({'hidden': 8}, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from typing import Any, Dict, Mapping, Optional, Set

import numpy as np

from tfcompress.latency.runtime import Runtime
from tfcompress.latency.table import LatencyTable
from tfcompress.latency.tiles import preferred_multiples
from tfcompress.latency.whole import export_for, measure_models, static_input_shape
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.latency_cost import LatencyCost, group_multiple, group_steps
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.rebuild import rebuild

__all__ = ["LatencyModel", "latency_model"]


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """A model's measured latency and its latency model on one runtime.

    Attributes:
      cost: the measured, interpolated units.
      full_ms: the unpruned model, measured whole.
      steps: ``{group id: channel step}`` the model was measured for.
      table: the latency table it reads.
      scale: measured / predicted saving of the calibration model (see the module
        docstring); multiplies every predicted saving.
    """

    cost: LatencyCost
    full_ms: float
    steps: Dict[str, int]
    table: LatencyTable
    scale: float = 1.0

    def predict_ms(self, counts: Mapping[str, int], removed: Set[str] = frozenset()) -> float:
        """Predicted milliseconds with ``counts`` kept channels and ``removed`` layers gone."""
        return self.full_ms - self.scale * self.cost.saving(counts, removed)


def _model_key(model: Any) -> str:
    return hashlib.sha256(model.to_json().encode()).hexdigest()[:24]


def _calibration_counts(graph: ChannelGraph, tiles: Mapping[str, int]) -> Dict[str, int]:
    return {g.id: min(g.size, -(-((g.size + 1) // 2) // tiles[g.id]) * tiles[g.id])
            for g in graph.groups if g.prunable}


def _measure(graph: ChannelGraph, table: LatencyTable, cost: LatencyCost,
             tiles: Mapping[str, int]) -> Dict[str, float]:
    """The model's latency and the calibration scale (see the module docstring)."""
    counts = _calibration_counts(graph, tiles)
    sizes = {g.id: g.size for g in graph.groups}
    kept = {g: np.arange(c) for g, c in counts.items() if c < sizes[g]}
    with tempfile.TemporaryDirectory() as folder:
        full = export_for(graph.model, table.runtime, f"{folder}/full.tflite")
        if not kept:  # nothing to calibrate on
            [full_ms] = measure_models([full], table.runtime, rounds=31)
            return {"full_ms": full_ms, "scale": 1.0}
        slim = rebuild(graph.model, Masks(kept, sizes=sizes))
        full_ms, slim_ms = measure_models([full, slim], table.runtime, rounds=31)
    predicted = cost.saving(counts) / full_ms
    scale = (1.0 - slim_ms / full_ms) / predicted if predicted > 0 else 1.0
    return {"full_ms": full_ms, "scale": float(np.clip(scale, 0.5, 2.0))}


def latency_model(graph: ChannelGraph, runtime: Any = "litert-int8", threads: int = 1, *,
                  round_to: int = 1, table: Optional[LatencyTable] = None,
                  progress: bool = False) -> LatencyModel:
    """Measures (or reads from the cache) what predicting ``graph``'s latency needs.

    Raises:
      ValueError: for an unknown runtime or a model without a fixed input shape.
    """
    static_input_shape(graph.model)
    if table is None:
        table = LatencyTable(Runtime.resolve(runtime, threads))
    multiples = preferred_multiples(table, progress)
    steps = group_steps(graph, multiples, round_to)
    tiles = {g.id: group_multiple(g.size, multiples) for g in graph.groups if g.prunable}
    cost = LatencyCost(graph, table, steps, progress, tiles)
    key = f"model:{_model_key(graph.model)}"
    measured = table.get_extra(key)
    if not isinstance(measured, dict):
        measured = _measure(graph, table, cost, tiles)
        table.set_extra(key, measured)
    return LatencyModel(cost, measured["full_ms"], steps, table, measured["scale"])
