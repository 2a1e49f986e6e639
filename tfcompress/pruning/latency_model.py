"""A model's latency on a runtime, predicted for any kept counts and calibrated once.

:func:`latency_model` gathers what a prediction needs, measuring what the cache lacks: the
runtime's channel tiles, the micro-benchmark grid of every cost unit
(:class:`~tfcompress.pruning.latency_cost.LatencyCost`), the model's own latency, and a
**calibration**: two slim models (every group at about a half and a quarter of its
channels) are rebuilt, exported and timed together with the model, and their measured
savings against the predicted ones define a piecewise-linear map (:class:`Calibration`)
that corrects every later prediction. Isolated micro-benchmarks miss what a whole graph
shares (cache reuse, per-op setup), and how much they miss grows as the model shrinks,
which a single factor cannot follow. The calibration is cached with the table, like the
model's latency.

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
from typing import Any, Dict, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from tfcompress.latency.runtime import Runtime
from tfcompress.latency.table import LatencyTable
from tfcompress.latency.tiles import preferred_multiples
from tfcompress.latency.whole import export_for, measure_models, static_input_shape
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.latency_cost import LatencyCost, group_multiple, group_steps
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.rebuild import rebuild

__all__ = ["Calibration", "LatencyModel", "latency_model"]

_FRACTIONS = (0.5, 0.25)  # channels kept by the calibration models
_SLOPES = (0.5, 2.0)  # measured / predicted saving, per segment, is clipped to this


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A monotone piecewise-linear map from predicted to measured milliseconds saved.

    It passes through ``(0, 0)`` and bends at each measured point; beyond the last point it
    continues with the last segment's slope. Each slope is clipped to [0.5, 2], so one
    noisy measurement cannot fold the map.

    Attributes:
      points: ``((predicted saving ms, measured saving ms), ...)`` by predicted saving.

    Example:
      >>> calibration = Calibration(((1.0, 1.2), (2.0, 2.0)))
      >>> calibration(0.5), calibration(1.5), calibration(3.0), round(calibration.inverse(1.6), 6)
      (0.6, 1.6, 2.8, 1.5)
    """

    points: Tuple[Tuple[float, float], ...] = ()

    def _knots(self) -> Tuple[np.ndarray, np.ndarray]:
        xs, ys = [0.0], [0.0]
        for x, y in sorted(p for p in self.points if p[0] > 0):
            if x <= xs[-1] + 1e-9:
                continue
            slope = float(np.clip((y - ys[-1]) / (x - xs[-1]), *_SLOPES))
            xs.append(float(x))
            ys.append(ys[-1] + slope * (x - xs[-2]))
        return np.array(xs), np.array(ys)

    def _slope_beyond(self, xs: np.ndarray, ys: np.ndarray) -> float:
        return float((ys[-1] - ys[-2]) / (xs[-1] - xs[-2])) if len(xs) > 1 else 1.0

    def __call__(self, saving: float) -> float:
        xs, ys = self._knots()
        if saving <= xs[-1]:
            return float(np.interp(saving, xs, ys))
        return float(ys[-1] + self._slope_beyond(xs, ys) * (saving - xs[-1]))

    def inverse(self, saving: float) -> float:
        """The predicted saving that this map turns into ``saving``."""
        xs, ys = self._knots()
        if saving <= ys[-1]:
            return float(np.interp(saving, ys, xs))
        return float(xs[-1] + (saving - ys[-1]) / self._slope_beyond(xs, ys))


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """A model's measured latency and its latency model on one runtime.

    Attributes:
      cost: the measured, interpolated units.
      full_ms: the unpruned model, measured whole.
      steps: ``{group id: channel step}`` the model was measured for.
      table: the latency table it reads.
      calibration: predicted -> measured saving (see the module docstring).
    """

    cost: LatencyCost
    full_ms: float
    steps: Dict[str, int]
    table: LatencyTable
    calibration: Calibration = Calibration()

    def predict_ms(self, counts: Mapping[str, int], removed: Set[str] = frozenset()) -> float:
        """Predicted milliseconds with ``counts`` kept channels and ``removed`` layers gone."""
        return self.full_ms - self.calibration(self.cost.saving(counts, removed))


def _model_key(model: Any) -> str:
    return hashlib.sha256(model.to_json().encode()).hexdigest()[:24]


def _calibration_counts(graph: ChannelGraph, tiles: Mapping[str, int],
                        fraction: float) -> Dict[str, int]:
    return {g.id: min(g.size, -(-max(1, round(g.size * fraction)) // tiles[g.id]) * tiles[g.id])
            for g in graph.groups if g.prunable}


def _measure(graph: ChannelGraph, table: LatencyTable, cost: LatencyCost,
             tiles: Mapping[str, int]) -> Dict[str, Any]:
    """The model's latency and the calibration points (see the module docstring)."""
    sizes = {g.id: g.size for g in graph.groups}
    plans = []
    for fraction in _FRACTIONS:
        counts = _calibration_counts(graph, tiles, fraction)
        if any(c < sizes[g] for g, c in counts.items()) and counts not in plans:
            plans.append(counts)
    with tempfile.TemporaryDirectory() as folder:
        paths = [export_for(graph.model, table.runtime, f"{folder}/full.tflite")]
        for i, counts in enumerate(plans):
            slim = rebuild(graph.model, Masks({g: np.arange(c) for g, c in counts.items()
                                               if c < sizes[g]}, sizes=sizes))
            paths.append(export_for(slim, table.runtime, f"{folder}/slim{i}.tflite"))
        full_ms, *slim_ms = measure_models(paths, table.runtime, rounds=31)
    points = [[cost.saving(counts), full_ms - ms] for counts, ms in zip(plans, slim_ms)]
    return {"full_ms": full_ms, "points": points}


def _calibration(points: Sequence[Sequence[float]]) -> Calibration:
    return Calibration(tuple((float(x), float(y)) for x, y in points))


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
    if not isinstance(measured, dict) or "points" not in measured:
        measured = _measure(graph, table, cost, tiles)
        table.set_extra(key, measured)
    return LatencyModel(cost, measured["full_ms"], steps, table,
                        _calibration(measured["points"]))
