"""Per-layer ratio allocation from a sensitivity scan (PaddleSlim's ``get_ratios_by_loss``).

Reads a :class:`~tfcompress.pruning.sensitivity_result.SensitivityResult` (it never calls
back into the scan): :func:`predict` estimates the metric drop and the MACs kept by any
combination of scanned per-group ratios, and :func:`ratios_for` greedily picks the per-layer
ratios that reach a MACs target for the least predicted drop. :func:`interaction_terms` is
the one piece the scan itself calls, to measure what :func:`predict` needs from the graph.
``Sensitivity.predict`` / ``Sensitivity.ratios_for`` (in :mod:`tfcompress.pruning.sensitivity`)
are these functions as methods.

The MACs are predicted exactly: every counted layer costs ``c * n_in * n_out`` (or ``c * n``
for depthwise kernels), which is bilinear in the kept counts of at most two groups, so the
per-group savings plus the scan's pairwise interaction terms account for every layer. A
``per_layer`` name prunes the groups the scan saw it select (``GroupSensitivity.selects``),
each group at the largest ratio that reaches it, as ``fpgm_masks`` does. Accuracy drops are
assumed additive.

Example:
  >>> from tfcompress.pruning.sensitivity_result import GroupSensitivity, SensitivityResult
  >>> cheap = GroupSensitivity("a", "a", 4, ("a",), ("a",), kept=(2,), drops=(0.01,),
  ...                          macs_saved=(50,))
  >>> costly = GroupSensitivity("b", "b", 4, ("b",), ("b",), kept=(2,), drops=(0.2,),
  ...                           macs_saved=(50,))
  >>> scan = SensitivityResult(0.9, (0.5,), [cheap, costly], total_macs=200)
  >>> predict(scan, {"a": 0.5, "b": 0.0})
  (0.01, 0.75)
  >>> ratios_for(scan, 0.75)
  {'a': 0.5, 'b': 0.0}
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress._validate import check_number
from tfcompress.pruning.counting import graph_macs
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.sensitivity_result import GroupSensitivity, SensitivityResult

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.graph import ChannelGraph

__all__ = ["predict", "ratios_for", "interaction_terms"]


@dataclasses.dataclass(frozen=True)
class _Prediction:
    loss: float
    macs: float


def _levels(scan: SensitivityResult, per_layer: Mapping[str, float]) -> List[int]:
    """Scan level (0: unpruned, i: ratios[i - 1]) of each group's own name."""
    if not isinstance(per_layer, Mapping):
        raise TypeError(f"`per_layer` must map layer names to ratios, got {per_layer!r}; "
                        "pass e.g. the result of `ratios_for`.")
    index = {name: i for i, name in enumerate(scan.names)}
    levels = [0] * len(scan.groups)
    for name, ratio in per_layer.items():
        if name not in index:
            raise ValueError(f"Layer {name!r} names no scanned group; use the keys of "
                             f"`ratios_for` ({list(scan.names)}).")
        check_number(ratio, f"per_layer[{name!r}]", "a ratio (float)")
        matches = [i for i, r in enumerate(scan.ratios) if math.isclose(r, ratio)]
        if ratio and not matches:
            raise ValueError(f"Ratio {ratio!r} for {name!r} was not scanned; predictions "
                             f"exist for 0 and {list(scan.ratios)}.")
        levels[index[name]] = matches[0] + 1 if ratio else 0
    return levels


def _hits(scan: SensitivityResult) -> List[List[int]]:
    """``hits[g]``: indices of the groups whose per_layer name also prunes group ``g``."""
    return [[j for j, h in enumerate(scan.groups) if g.name in h.selects] for g in scan.groups]


def _predict(scan: SensitivityResult, levels: Sequence[int],
             hits: Sequence[Sequence[int]]) -> _Prediction:
    effective = [max((levels[j] for j in group_hits), default=0) for group_hits in hits]
    loss, macs = 0.0, float(scan.total_macs)
    pruned: Dict[str, int] = {}
    for group, level in zip(scan.groups, effective):
        if level:
            loss += group.drops[level - 1]
            macs -= group.macs_saved[level - 1]
            pruned[group.name] = group.size - group.kept[level - 1]
    for (a, b), w in scan.interactions.items():
        macs += w * pruned.get(a, 0) * pruned.get(b, 0)
    return _Prediction(loss, macs)


def predict(scan: SensitivityResult, per_layer: Mapping[str, float]) -> Tuple[float, float]:
    """Predicted ``(metric drop, fraction of MACs kept)`` of pruning with ``per_layer``.

    The MACs are exact for masks computed with the scan's ``round_to``; the drop adds
    the groups' individual drops.

    Args:
      scan: the scan to predict from.
      per_layer: ``{name: ratio}`` as returned by :func:`ratios_for`; ratios must be 0 or
        scanned ones; names left out are not pruned.

    Returns:
      ``(predicted metric drop, predicted fraction of the MACs kept)``.

    Raises:
      TypeError: if ``per_layer`` is not a mapping or a ratio is not a number.
      ValueError: for a name that is no scanned group or an unscanned ratio.

    Example:
      >>> from tfcompress.pruning.sensitivity_result import GroupSensitivity, SensitivityResult
      >>> group = GroupSensitivity("c", "c", 4, ("c",), ("c",), (3, 2), (0.1, 0.3), (25, 50))
      >>> predict(SensitivityResult(1.0, (0.25, 0.5), [group], total_macs=100), {"c": 0.25})
      (0.1, 0.75)
    """
    prediction = _predict(scan, _levels(scan, per_layer), _hits(scan))
    return prediction.loss, prediction.macs / scan.total_macs


def _cheapest_step(scan: SensitivityResult, levels: List[int], hits: Sequence[Sequence[int]],
                   current: _Prediction) -> Optional[Tuple[int, int, _Prediction]]:
    """The one raise of one group's level with the least extra drop per extra MAC saved."""
    best: Optional[Tuple[float, int, int, _Prediction]] = None
    for i in range(len(scan.groups)):
        for level in range(levels[i] + 1, len(scan.ratios) + 1):
            trial = _predict(scan, levels[:i] + [level] + levels[i + 1:], hits)
            saved = current.macs - trial.macs
            if saved <= 0:
                continue
            cost = (trial.loss - current.loss) / saved
            if best is None or cost < best[0]:
                best = (cost, i, level, trial)
    return None if best is None else best[1:]


def _check_target(macs_target: Any) -> float:
    return check_number(macs_target, "macs_target", "the fraction of MACs to keep, in (0, 1]",
                        valid=lambda v: 0 < v <= 1, example=0.5)


def ratios_for(scan: SensitivityResult, macs_target: float) -> Dict[str, float]:
    """Per-layer ratios that keep at most ``macs_target`` of the MACs, losing the least.

    Greedy on the marginal predicted loss per MAC saved (like PaddleSlim): starting from
    no pruning, repeatedly raise the one group's ratio (to any larger scanned ratio)
    whose extra drop per extra MAC saved is smallest, until the target is reached; then
    lower every ratio that the target does not need. Drops are assumed additive; MACs
    are predicted exactly (see the module docstring).

    Args:
      scan: the scan to allocate from.
      macs_target: fraction of the model's MACs to KEEP, in (0, 1], e.g. 0.5.

    Returns:
      ``{name: ratio}`` for every scanned group (0.0: not pruned), keyed by producer layer
      (see :func:`~tfcompress.pruning.sensitivity_result.group_label`), to pass as
      ``fpgm_masks(model, 0.0, per_layer=..., round_to=scan.round_to)`` or
      ``FPGMPruning(schedule, per_layer=..., round_to=scan.round_to)`` (every scanned
      group is named, so the schedule's own ratio only reaches unscanned groups).

    Raises:
      TypeError: if ``macs_target`` is not a number.
      ValueError: if ``macs_target`` is not in (0, 1], or is below what the largest
        scanned ratio of every group reaches.

    Example:
      >>> from tfcompress.pruning.sensitivity_result import GroupSensitivity, SensitivityResult
      >>> group = GroupSensitivity("c", "c", 4, ("c",), ("c",), (3, 2), (0.1, 0.3), (25, 50))
      >>> ratios_for(SensitivityResult(1.0, (0.25, 0.5), [group], total_macs=100), 0.6)
      {'c': 0.5}
    """
    budget = _check_target(macs_target) * scan.total_macs * (1 + 1e-12)
    groups, ratios, hits = scan.groups, scan.ratios, _hits(scan)
    levels = [0] * len(groups)
    current = _predict(scan, levels, hits)
    while current.macs > budget:
        step = _cheapest_step(scan, levels, hits, current)
        if step is None:
            floor = _predict(scan, [len(ratios)] * len(groups), hits).macs
            raise ValueError(
                f"A MACs target of {macs_target:g} cannot be reached with the scanned "
                f"ratios: pruning every scanned group at {ratios[-1]:g} keeps "
                f"{floor / scan.total_macs:.3f} of the MACs. Raise `macs_target`, or scan "
                "larger ratios or more groups with `sensitivity(...)`.")
        i, levels[i], current = step

    def drop(index: int) -> float:
        level = levels[index]
        return groups[index].drops[level - 1] if level else 0.0

    # Undo what the target does not need, the most costly groups first.
    for i in sorted(range(len(groups)), key=lambda k: -drop(k)):
        for level in range(levels[i]):
            trial = _predict(scan, levels[:i] + [level] + levels[i + 1:], hits)
            if trial.macs <= budget and trial.loss <= current.loss:
                levels[i], current = level, trial
                break
    return {g.name: (ratios[level - 1] if level else 0.0) for g, level in zip(groups, levels)}


def interaction_terms(graph: "ChannelGraph", results: Sequence[GroupSensitivity],
                      total: int) -> Dict[Tuple[str, str], float]:
    """``{(name a, name b): w}``: the bilinear MAC term of each pair of scanned groups that
    share a layer, from one joint count at the largest scanned ratio.

    ``w * da * db`` is what pruning ``da`` channels of ``a`` and ``db`` of ``b`` together
    saves less than the two single-group savings added (the layer between them counted once).
    """
    sizes = {g.id: g.size for g in graph.groups}
    terms = {}
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            pa, pb = a.size - a.kept[-1], b.size - b.kept[-1]
            if not pa or not pb or not set(a.layers) & set(b.layers):
                continue
            joint = Masks({a.id: np.arange(a.kept[-1]), b.id: np.arange(b.kept[-1])}, sizes=sizes)
            excess = graph_macs(graph, joint) - (total - a.macs_saved[-1] - b.macs_saved[-1])
            if excess:
                terms[(a.name, b.name)] = excess / (pa * pb)
    return terms
