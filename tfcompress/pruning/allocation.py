"""Per-layer ratio allocation from a sensitivity scan (PaddleSlim's ``get_ratios_by_loss``).

Given a :class:`~tfcompress.pruning.sensitivity.Sensitivity`, :func:`predict` estimates the
metric drop and the MACs kept by any combination of scanned per-group ratios, and
:func:`ratios_for` greedily picks the per-layer ratios that reach a MACs target for the least
predicted drop. The MACs are predicted exactly: every counted layer costs
``c * n_in * n_out`` (or ``c * n`` for depthwise kernels), which is bilinear in the kept counts
of at most two groups, so the per-group savings plus the scan's pairwise interaction terms
account for every layer. Accuracy drops are assumed additive.

:class:`~tfcompress.pruning.sensitivity.Sensitivity` exposes both as methods
(:meth:`~tfcompress.pruning.sensitivity.Sensitivity.predict` and
:meth:`~tfcompress.pruning.sensitivity.Sensitivity.ratios_for`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.sensitivity import GroupSensitivity, Sensitivity

__all__ = ["predict", "ratios_for", "interaction_terms"]


@dataclasses.dataclass(frozen=True)
class _Prediction:
    loss: float
    macs: float


def _levels(scan: "Sensitivity", per_layer: Mapping[str, float]) -> List[int]:
    """Scan level (0: unpruned, i: ratios[i - 1]) of each group's own name."""
    names = {g.name: i for i, g in enumerate(scan.groups)}
    levels = [0] * len(scan.groups)
    for name, ratio in per_layer.items():
        if name not in names:
            raise ValueError(f"Layer {name!r} names no scanned group; use the keys of "
                             f"`ratios_for` or `layer_names` ({sorted(names)}).")
        matches = [i for i, r in enumerate(scan.ratios) if math.isclose(r, ratio)]
        if ratio and not matches:
            raise ValueError(f"Ratio {ratio!r} for {name!r} was not scanned; predictions "
                             f"exist for 0 and {list(scan.ratios)}.")
        levels[names[name]] = matches[0] + 1 if ratio else 0
    return levels


def _hits(scan: "Sensitivity") -> List[List[int]]:
    """``hits[g]``: indices of the groups whose per_layer name also selects group ``g``."""
    return [[j for j, h in enumerate(scan.groups) if h.name in g.layers] for g in scan.groups]


def _predict(scan: "Sensitivity", levels: Sequence[int],
             hits: Sequence[Sequence[int]]) -> _Prediction:
    effective = [max(levels[j] for j in group_hits) for group_hits in hits]
    loss, macs = 0.0, float(scan.total_macs)
    pruned: Dict[str, int] = {}
    for group, level in zip(scan.groups, effective):
        if level:
            loss += group.drops[level - 1]
            macs -= group.macs_saved[level - 1]
            pruned[group.id] = group.size - group.kept[level - 1]
    for (a, b), w in scan.interactions.items():
        macs += w * pruned.get(a, 0) * pruned.get(b, 0)
    return _Prediction(loss, macs)


def predict(scan: "Sensitivity", per_layer: Mapping[str, float]) -> Tuple[float, float]:
    """Predicted ``(metric drop, fraction of MACs kept)`` of pruning with ``per_layer``.

    The MACs are exact for masks computed with the scan's ``round_to``; the drop adds
    the groups' individual drops.

    Args:
      scan: the :class:`~tfcompress.pruning.sensitivity.Sensitivity` to predict from.
      per_layer: ``{layer name: ratio}`` as returned by :func:`ratios_for`; ratios must
        be 0 or scanned ones.

    Returns:
      ``(predicted metric drop, predicted fraction of the MACs kept)``.

    Raises:
      ValueError: for a name that selects no scanned group or an unscanned ratio.
    """
    prediction = _predict(scan, _levels(scan, per_layer), _hits(scan))
    return prediction.loss, prediction.macs / scan.total_macs


def ratios_for(scan: "Sensitivity", macs_target: float) -> Dict[str, float]:
    """Per-layer ratios that keep at most ``macs_target`` of the MACs, losing the least.

    Greedy on the marginal predicted loss per MAC saved (like PaddleSlim): starting from
    no pruning, repeatedly raise the one group's ratio (to any larger scanned ratio)
    whose extra drop per extra MAC saved is smallest, until the target is reached; then
    lower every ratio that the target does not need. Drops are assumed additive; MACs
    are predicted exactly (see the module docstring).

    Args:
      scan: the :class:`~tfcompress.pruning.sensitivity.Sensitivity` to allocate from.
      macs_target: fraction of the model's MACs to KEEP, in (0, 1], e.g. 0.5.

    Returns:
      ``{layer name: ratio}`` for every scanned group (0.0: not pruned), to pass as
      ``fpgm_masks(model, 0.0, per_layer=..., round_to=scan.round_to)`` or
      ``FPGMPruning(schedule, per_layer=..., round_to=scan.round_to)`` (every scanned
      group is named, so the schedule's own ratio only reaches unscanned groups).

    Raises:
      ValueError: if ``macs_target`` is not in (0, 1], or is below what the largest
        scanned ratio of every group reaches.
    """
    if (isinstance(macs_target, bool) or not isinstance(macs_target, numbers.Real)
            or not 0 < macs_target <= 1):
        raise ValueError(f"`macs_target` must be the fraction of MACs to keep, in (0, 1], "
                         f"got {macs_target!r}; e.g. 0.5 to halve the MACs.")
    groups, ratios, hits = scan.groups, scan.ratios, _hits(scan)
    budget = macs_target * scan.total_macs * (1 + 1e-12)
    levels = [0] * len(groups)
    current = _predict(scan, levels, hits)
    while current.macs > budget:
        best: Optional[Tuple[float, int, int, _Prediction]] = None
        for i in range(len(groups)):
            for level in range(levels[i] + 1, len(ratios) + 1):
                trial = _predict(scan, levels[:i] + [level] + levels[i + 1:], hits)
                saved = current.macs - trial.macs
                if saved <= 0:
                    continue
                cost = (trial.loss - current.loss) / saved
                if best is None or cost < best[0]:
                    best = (cost, i, level, trial)
        if best is None:
            floor = _predict(scan, [len(ratios)] * len(groups), hits).macs
            raise ValueError(
                f"A MACs target of {macs_target:g} cannot be reached with the scanned "
                f"ratios: pruning every scanned group at {ratios[-1]:g} keeps "
                f"{floor / scan.total_macs:.3f} of the MACs. Raise `macs_target`, or scan "
                "larger ratios or more groups with `sensitivity(...)`.")
        _, i, levels[i], current = best

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


def interaction_terms(graph: Any, results: Sequence["GroupSensitivity"],
                      sizes: Mapping[str, int], total: int) -> Dict[Tuple[str, str], float]:
    """Bilinear MAC terms of the scanned groups that share a layer, from one joint count."""
    from tfcompress.pruning.masks import Masks

    terms = {}
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            pa, pb = a.size - a.kept[-1], b.size - b.kept[-1]
            if not pa or not pb or not set(a.layers) & set(b.layers):
                continue
            joint = Masks({a.id: np.arange(a.kept[-1]), b.id: np.arange(b.kept[-1])}, sizes=sizes)
            excess = graph.macs(joint) - (total - a.macs_saved[-1] - b.macs_saved[-1])
            if excess:
                terms[(a.id, b.id)] = excess / (pa * pb)
    return terms
