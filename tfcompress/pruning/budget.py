"""Keep counts under a latency budget: NetAdapt/HALP-style allocation on measured tables.

:func:`plan_latency` measures the model on the runtime (once; cached), builds its latency
model (:class:`~tfcompress.pruning.latency_cost.LatencyCost`), and allocates per-group kept
counts greedily: starting from the full model, it repeatedly takes the one step down a
group's ladder of counts that saves the most predicted milliseconds per unit of predicted
loss, until the predicted latency is at most ``target * full``; then it gives back the steps
the budget does not need. A ladder holds multiples of the channel count the runtime's
kernels prefer (learned by :func:`~tfcompress.latency.tiles.preferred_multiples`) and, for a
group heading a removable residual branch, 0: the whole branch goes (depth pruning).

The predicted loss of keeping ``k`` of a group's channels is, by default, the square of the
share of the group's criterion scores that the pruned channels hold (so redundant groups
go first and no group is emptied lightly); with a sensitivity scan, the scan's measured
metric drop at that ratio (interpolated, extrapolated linearly to 1.0). A scan zeroes
channels without fine-tuning, which says little about a whole branch's removal (the
shortcut still carries the signal), so with a scan no branch is cut unless it measured one.

Example:
  >>> plan = LatencyPlan({"conv": 8, "head": 16}, {"conv": 32, "head": 16}, "litert-int8", 1,
  ...                    target=0.5, full_ms=2.0, predicted_ms=0.9)
  >>> plan.ratios(), plan.predicted_kept
  ({'conv': 0.75}, 0.45)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import numpy as np

from tfcompress.latency.table import LatencyTable
from tfcompress.latency.whole import export_for, measure_models
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.latency_cost import LatencyCost
from tfcompress.pruning.latency_model import Calibration, LatencyModel, latency_model
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.rebuild import rebuild

__all__ = ["LatencyPlan", "plan_latency", "allocate", "removable_layers"]

_LOG = logging.getLogger("tfcompress.pruning")
Loss = Callable[[int], float]


@dataclasses.dataclass(frozen=True)
class LatencyPlan:
    """Kept counts chosen for a latency target, with the predicted (and, if checked,
    measured) latency of the slim model.

    Attributes:
      counts: ``{group id: kept channels}`` of every prunable group (0: branch removed).
      sizes: ``{group id: channels}``.
      runtime, threads: what was measured.
      target: the latency kept asked for.
      full_ms: measured latency of the unpruned model.
      predicted_ms: the latency model's prediction for the slim model.
      measured_ms, measured_full_ms: the slim and full models timed together (None if
        not checked).
      removed: the layers of removed residual branches.
    """

    counts: Dict[str, int]
    sizes: Dict[str, int]
    runtime: str
    threads: int
    target: float
    full_ms: float
    predicted_ms: float
    measured_ms: Optional[float] = None
    measured_full_ms: Optional[float] = None
    removed: Tuple[str, ...] = ()

    @property
    def predicted_kept(self) -> float:
        """Predicted slim / full latency."""
        return self.predicted_ms / self.full_ms

    @property
    def measured_kept(self) -> Optional[float]:
        """Measured slim / full latency (timed together), or None."""
        if self.measured_ms is None or not self.measured_full_ms:
            return None
        return self.measured_ms / self.measured_full_ms

    @property
    def prediction_error(self) -> Optional[float]:
        """``predicted_kept / measured_kept - 1`` (None if not measured)."""
        measured = self.measured_kept
        return None if measured is None else self.predicted_kept / measured - 1.0

    def ratios(self) -> Dict[str, float]:
        """``{group id: ratio}`` for ``fpgm_masks(per_layer=...)`` (1.0: branch removed)."""
        return {g: 1.0 - c / self.sizes[g] for g, c in self.counts.items()
                if c < self.sizes[g]}

    def summary(self) -> str:
        """One line: target, predicted and measured latency kept."""
        text = (f"{self.runtime} x{self.threads}: target {self.target:.3f}, predicted "
                f"{self.predicted_kept:.3f} ({self.predicted_ms:.3f} of {self.full_ms:.3f} ms)")
        if self.measured_kept is not None:
            text += (f", measured {self.measured_kept:.3f} ({self.measured_ms:.3f} of "
                     f"{self.measured_full_ms:.3f} ms), prediction error "
                     f"{self.prediction_error:+.1%}")
        return text


def _ladder(size: int, step: int, minimum: int, removable: bool) -> List[int]:
    """Kept counts a group may take: multiples of ``step`` from ``minimum`` up, ``size``,
    and 0 when its residual branch can be removed."""
    start = max(step, math.ceil(minimum / step) * step)
    ladder = list(range(start, size, step)) + [size]
    return ([0] if removable else []) + ladder


def _score_loss(scores: np.ndarray) -> Loss:
    s = np.sort(np.clip(np.nan_to_num(np.asarray(scores, np.float64)), 0, None))
    total = s.sum()
    mass = np.concatenate([[0.0], np.cumsum(s) / total]) if total > 0 else \
        np.linspace(0.0, 1.0, len(s) + 1)
    size = len(s)
    return lambda k: float(mass[size - k] ** 2)


def _scan_loss(size: int, kept: Iterable[int], drops: Iterable[float]) -> Loss:
    ratios = [0.0] + [1.0 - k / size for k in kept]
    values = [0.0] + [max(0.0, float(d)) for d in drops]
    if ratios[-1] < 1.0 and len(ratios) > 1:
        slope = (values[-1] - values[-2]) / max(ratios[-1] - ratios[-2], 1e-9)
        ratios.append(1.0)
        values.append(max(values[-1], values[-1] + slope * (1.0 - ratios[-2])))
    return lambda k: float(np.interp(1.0 - k / size, ratios, values)) + 1e-6 * (1 - k / size) ** 2


@dataclasses.dataclass
class _State:
    counts: Dict[str, int]
    position: Dict[str, int]
    removed: Set[str]


def allocate(cost: LatencyCost, full_ms: float, kept: float, ladders: Mapping[str, List[int]],
             losses: Mapping[str, Loss], branches: Mapping[str, Tuple[str, ...]],
             calibration: Calibration = Calibration()) -> Tuple[Dict[str, int], Set[str]]:
    """Greedy kept counts whose predicted latency (``full_ms - calibration(cost.saving)``)
    is at most ``kept * full_ms``; returns the counts and the removed layers.

    Raises:
      ValueError: if every ladder's bottom together does not get there.
    """
    budget_ms = calibration.inverse(full_ms * (1.0 - kept))
    state = _State({g: l[-1] for g, l in ladders.items()},
                   {g: len(l) - 1 for g, l in ladders.items()}, set())
    saved = 0.0

    def trial(gid: str, position: int) -> Tuple[float, float, Dict[str, int], Set[str]]:
        count = ladders[gid][position]
        counts = dict(state.counts, **{gid: count})
        removed = state.removed - set(branches.get(gid, ()))
        if count == 0:
            removed = state.removed | set(branches.get(gid, ()))
        units = cost.units_of([gid])
        gain = cost.saving(counts, removed, units) - cost.saving(state.counts, state.removed,
                                                                 units)
        return gain, losses[gid](count) - losses[gid](state.counts[gid]), counts, removed

    while saved < budget_ms - 1e-12:
        best = None
        for gid in ladders:
            if state.position[gid] == 0 or any(k in state.removed for k in branches.get(gid, ())):
                continue
            gain, dloss, counts, removed = trial(gid, state.position[gid] - 1)
            if gain <= 0:
                continue
            value = gain / max(dloss, 1e-12)
            if best is None or value > best[0]:
                best = (value, gid, gain, counts, removed)
        if best is None:
            reached = full_ms - calibration(saved)
            raise ValueError(
                f"A latency target of {kept:.3f} cannot be reached: pruning every group as far "
                f"as allowed is predicted to keep {reached / full_ms:.3f} of the "
                f"latency ({reached:.4f} of {full_ms:.4f} ms); the rest is work "
                "pruning cannot shrink. Raise `target_latency`, or lower `min_channels` / "
                "`exclude`.")
        _, gid, gain, state.counts, state.removed = best
        state.position[gid] -= 1
        saved += gain
    _give_back(state, ladders, trial, saved - budget_ms)
    return state.counts, state.removed


def _give_back(state: _State, ladders: Mapping[str, List[int]], trial: Callable,
               slack_ms: float) -> None:
    """Steps back up the ladders while the budget allows (a step down can save more than
    the budget needed): each time the step that recovers the most predicted loss."""
    while True:
        best = None
        for gid, ladder in ladders.items():
            if state.position[gid] == len(ladder) - 1:
                continue
            gain, dloss, counts, removed = trial(gid, state.position[gid] + 1)
            if -gain <= slack_ms + 1e-12 and dloss < 0 and (best is None or dloss < best[0]):
                best = (dloss, gid, gain, counts, removed)
        if best is None:
            return
        _, gid, gain, state.counts, state.removed = best
        state.position[gid] += 1
        slack_ms += gain


def _losses(graph: ChannelGraph, groups: Iterable[Any], score: Callable, scan: Any
            ) -> Dict[str, Loss]:
    losses = {}
    for group in groups:
        if scan is not None:
            entry = next((g for g in scan.groups if g.id == group.id), None)
            if entry is None:
                continue
            losses[group.id] = _scan_loss(group.size, entry.kept, entry.drops)
        else:
            losses[group.id] = _score_loss(score(graph.filters(group)))
    return losses


def removable_layers(graph: ChannelGraph) -> Dict[str, Tuple[str, ...]]:
    """``{group id: layers removed with it}`` for the groups whose whole residual branch
    may be removed (see :mod:`tfcompress.pruning.depth`)."""
    return {gid: branch.layers for gid, branch in graph.branches.items()}


def _ladders(graph: ChannelGraph, losses: Mapping[str, Loss], steps: Mapping[str, int],
             min_channels: int, branches: Mapping[str, Any]) -> Dict[str, List[int]]:
    return {g.id: _ladder(g.size, steps[g.id], min_channels, g.id in branches)
            for g in graph.groups if g.id in losses}


def plan_latency(
    graph: ChannelGraph,
    target_latency: float,
    runtime: Any = "litert-int8",
    threads: int = 1,
    *,
    score: Callable[[np.ndarray], np.ndarray],
    scan: Any = None,
    exclude: Iterable[str] = (),
    round_to: int = 1,
    min_channels: int = 1,
    branches: Optional[Mapping[str, Tuple[str, ...]]] = None,
    table: Optional[LatencyTable] = None,
    select: Optional[Callable[[Dict[str, float]], Masks]] = None,
    progress: bool = False,
) -> LatencyPlan:
    """Kept counts whose predicted latency kept is at most ``target_latency``.

    Args:
      graph: the traced model (fixed input shape).
      target_latency: latency of the slim model / latency of the model, in (0, 1].
      runtime, threads: the runtime measured (see :class:`~tfcompress.latency.Runtime`).
      score: the criterion (scores the default loss).
      scan: a sensitivity scan whose drops are the loss (unscanned groups stay whole, and
        a residual branch is removed only if the scan measured its removal).
      exclude: group ids left whole.
      round_to: allocate in multiples of this instead of the learned multiple (if > 1).
      min_channels: fewest channels a group keeps unless its branch is removed.
      branches: ``{group id: layers removed}`` of the removable residual branches.
      table: the latency table (default: the runtime's cached one).
      select: ``ratios -> Masks``; when given, the plan is checked: the slim model
        (rebuilt from those masks) and the model are exported and timed together and, if
        the slim one measures above the target, the plan is allocated again for a
        proportionally lower predicted target (at most twice; the last plan is returned,
        with its measurement).
      progress: show progress bars while measuring.

    Raises:
      ValueError: for a target outside (0, 1], a model without a fixed input shape, or a
        target the ladders cannot reach.
    """
    if isinstance(target_latency, bool) or not isinstance(target_latency, (int, float)) or \
            not 0 < target_latency <= 1:
        raise ValueError(f"`target_latency` must be the fraction of the latency to keep, in "
                         f"(0, 1], e.g. 0.5; got {target_latency!r}.")
    model = latency_model(graph, runtime, threads, round_to=round_to, table=table,
                          progress=progress)
    branches = dict(branches or {})
    excluded = set(exclude)
    groups = [g for g in graph.groups if g.prunable and g.id not in excluded]
    losses = _losses(graph, groups, score, scan)
    if scan is not None:  # a cut's loss is known only where the scan measured one
        measured_cuts = {g.id for g in scan.groups if 0 in g.kept}
        branches = {g: layers for g, layers in branches.items() if g in measured_cuts}
    ladders = _ladders(graph, losses, model.steps, min_channels, branches)
    with tempfile.TemporaryDirectory() as folder:
        measure = None if select is None else _slim_timer(graph, model.table, select, folder)
        return _allocate_checked(model, float(target_latency), ladders, losses, branches,
                                 {g.id: g.size for g in groups}, measure)


def _slim_timer(graph: ChannelGraph, table: LatencyTable, select: Callable, folder: str
                ) -> Callable[[Dict[str, float]], Tuple[float, float]]:
    """``ratios -> (slim ms, full ms)``: the rebuilt slim model and the model timed together."""
    full_path = export_for(graph.model, table.runtime, f"{folder}/full.tflite")

    def measure(ratios: Dict[str, float]) -> Tuple[float, float]:
        slim = rebuild(graph.model, select(ratios))
        slim_ms, full_ms = measure_models([slim, full_path], table.runtime)
        return slim_ms, full_ms

    return measure


def _allocate_checked(model: LatencyModel, target: float, ladders, losses, branches,
                      sizes: Dict[str, int], measure) -> LatencyPlan:
    goal, plan, runtime = target, None, model.table.runtime
    for _ in range(3):
        counts, removed = allocate(model.cost, model.full_ms, goal, ladders, losses, branches,
                                   model.calibration)
        plan = LatencyPlan(counts, sizes, runtime.name, runtime.threads, target, model.full_ms,
                           model.predict_ms(counts, removed), removed=tuple(sorted(removed)))
        if measure is None:
            return plan
        slim_ms, full_ms = measure(plan.ratios())
        plan = dataclasses.replace(plan, measured_ms=slim_ms, measured_full_ms=full_ms)
        _LOG.info("Latency plan: %s", plan.summary())
        if plan.measured_kept <= target:
            break
        goal *= target / plan.measured_kept
    return plan
