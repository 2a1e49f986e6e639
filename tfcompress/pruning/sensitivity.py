"""Sensitivity analysis: how much each channel group costs to prune (PaddleSlim's
``sensitivity``, for tf_keras).

:func:`sensitivity` prunes one group at a time (masks applied to the weights, restored
afterwards) at each ratio and records ``baseline - evaluate(model)``, what each group saves in
MACs and, for pairs of groups that meet in a layer, the exact interaction term. It returns a
:class:`Sensitivity`: the measured data (:class:`~.sensitivity_result.SensitivityResult`:
tables, JSON, plot) plus :meth:`~Sensitivity.predict` and :meth:`~Sensitivity.ratios_for`,
thin methods over :mod:`tfcompress.pruning.allocation`.

Imports point one way: ``sensitivity_result`` (data) <- ``allocation`` (reads the data) <-
this module (the scan, and the class that joins the two). Groups are named by their producer
layer everywhere (see :func:`~.sensitivity_result.group_label`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfcompress._keras import keras, require_graph_model
from tfcompress._validate import check_int, check_names
from tfcompress.pruning.allocation import interaction_terms, predict, ratios_for
from tfcompress.pruning.apply import zero_pruned
from tfcompress.pruning.counting import graph_macs
from tfcompress.pruning.criteria import Criterion, select_masks
from tfcompress.pruning.graph import ChannelGraph, Group
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.sensitivity_result import (
    GroupSensitivity,
    SensitivityResult,
    group_label,
)

__all__ = ["Sensitivity", "GroupSensitivity", "sensitivity", "DEFAULT_RATIOS"]

Evaluate = Callable[[Any], float]

#: Ratios scanned by default: 10 % to 90 % of each group's channels.
DEFAULT_RATIOS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class Sensitivity(SensitivityResult):
    """A scan's results (see :class:`~.sensitivity_result.SensitivityResult` for the data,
    JSON and plot) with the allocation functions as methods.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> from tfcompress.pruning import count_macs, fpgm_masks, rebuild
      >>> model = residual_cnn(width=8)
      >>> x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
      >>> y = model.predict(x, verbose=0)
      >>> scan = sensitivity(model, lambda m: -float(np.abs(m.predict(x, verbose=0) - y).mean()),
      ...                    ratios=(0.25, 0.5), progress=False)
      >>> scan.names
      ('stem_conv', 'block1a_conv', 'block2a_conv', 'block2b_conv')
      >>> Sensitivity.from_json(scan.to_json()).table == scan.table
      True
      >>> per_layer = scan.ratios_for(0.6)
      >>> masks = fpgm_masks(model, 0.0, per_layer=per_layer, round_to=scan.round_to)
      >>> count_macs(rebuild(model, masks)) <= 0.6 * count_macs(model)
      True
    """

    def predict(self, per_layer: Mapping[str, float]) -> Tuple[float, float]:
        """Predicted ``(metric drop, fraction of MACs kept)`` of pruning with ``per_layer``.

        :func:`tfcompress.pruning.allocation.predict` with this scan.
        """
        return predict(self, per_layer)  # the module-level function

    def ratios_for(self, macs_target: float) -> Dict[str, float]:
        """``{producer layer: ratio}`` keeping at most ``macs_target`` of the MACs, losing the
        least: :func:`tfcompress.pruning.allocation.ratios_for` with this scan.

        Apply it with ``fpgm_masks(model, 0.0, per_layer=..., round_to=scan.round_to)``.
        """
        return ratios_for(self, macs_target)  # the module-level function


# ----- argument checks ---------------------------------------------------------------------
def _check_ratios(ratios: Any) -> Tuple[float, ...]:
    if isinstance(ratios, (str, Mapping)) or not isinstance(ratios, Iterable):
        raise TypeError(f"`ratios` must be a sequence of floats in (0, 1), got {ratios!r}; "
                        "e.g. (0.1, 0.2, ..., 0.9).")
    ratios = list(ratios)
    bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, numbers.Real)]
    if bad:
        raise TypeError(f"`ratios` must hold floats in (0, 1), got {bad[0]!r} "
                        f"({type(bad[0]).__name__}) in {ratios!r}.")
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise ValueError(f"`ratios` must be a non-empty sequence of numbers in (0, 1), got "
                         f"{ratios!r}; e.g. (0.1, 0.2, ..., 0.9).")
    return tuple(sorted({float(r) for r in ratios}))


def _score(evaluate: Evaluate, model: Any) -> float:
    value = evaluate(model)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"`evaluate(model)` must return one number where higher is better "
                        f"(e.g. accuracy), got {value!r:.80}. For a loss, return its negative.")
    if not math.isfinite(float(value)):
        raise ValueError(f"`evaluate(model)` returned {value!r}; it must be finite.")
    return float(value)


def _select_groups(graph: ChannelGraph, groups: Optional[Iterable[str]]) -> List[Group]:
    prunable = [g for g in graph.groups if g.prunable]
    keys = check_names(groups, "groups")
    if keys is None:
        return prunable
    chosen: List[Group] = []
    by_id = {g.id: g for g in graph.groups}
    for key in keys:
        matches = ([by_id[key]] if key in by_id else
                   [g for g in graph.groups if key in g.producers]
                   or [g for g in graph.groups if key in g.layers])
        if len(matches) != 1:
            raise ValueError(f"`groups` entry {key!r} must be a group id or a layer that "
                             f"produces one group; prunable groups: {[g.id for g in prunable]}.")
        group = matches[0]
        if not group.prunable:
            raise ValueError(f"Group {group.id!r} (from {key!r}) cannot be pruned: blocked by "
                             f"{list(group.barriers)}. Leave it out of `groups`.")
        if group not in chosen:
            chosen.append(group)
    return chosen


# ----- the scan ----------------------------------------------------------------------------
def _selected(graph: ChannelGraph, label: str, ratio: float, round_to: int,
              criterion: Union[str, Criterion]) -> List[str]:
    """Ids of the groups that ``per_layer={label: ratio}`` prunes (whatever rule
    ``select_masks`` applies to names), found by asking it."""
    masks = select_masks(graph, 0.0, per_layer={label: ratio}, round_to=round_to,
                         criterion=criterion)
    return [gid for gid, kept in masks.kept.items() if len(kept) < masks.sizes[gid]]


def _scan_group(graph: ChannelGraph, group: Group, all_masks: Sequence[Masks],
                measure: Callable[[], float], total: int) -> Tuple[list, list, list]:
    """``(kept, drops, macs saved)`` of pruning ``group`` alone with each of ``all_masks``;
    the group's weights are restored after each measurement."""
    sizes = {g.id: g.size for g in graph.groups}
    layers = {id(graph.records[k].layer): graph.records[k].layer
              for k in group.layers if k in graph.records}
    snapshot = [(layer, layer.get_weights()) for layer in layers.values() if layer.weights]
    kept, drops, saved = [], [], []
    for masks in all_masks:
        only = Masks({group.id: masks.kept[group.id]}, sizes=sizes)
        try:
            zero_pruned(graph, only)
            drops.append(measure())
        finally:
            for layer, weights in snapshot:
                layer.set_weights(weights)
        kept.append(len(masks.kept[group.id]))
        saved.append(total - graph_macs(graph, only))
    return kept, drops, saved


def sensitivity(
    model: Any,
    evaluate: Evaluate,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    groups: Optional[Iterable[str]] = None,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    round_to: int = 1,
    progress: bool = True,
) -> Sensitivity:
    """Measures how much ``evaluate`` drops when each channel group alone is pruned.

    For every group and ratio the group's lowest-scored channels are zeroed in ``model``
    (what :func:`~tfcompress.pruning.apply_masks` does), ``evaluate(model)`` is called, and
    the group's weights are restored, so ``model`` is unchanged afterwards.

    Args:
      model: a built Functional or Sequential tf_keras model.
      evaluate: ``model -> float``, higher is better (accuracy, or minus a loss); called
        ``1 + len(groups) * len(ratios)`` times.
      ratios: fractions of each group's channels to prune, each in (0, 1).
      groups: group ids or producing layer names to scan (default: every prunable group).
        Predictions are exact when every group a ``per_layer`` name reaches is scanned.
      criterion: ``"fpgm"``, ``"l1"``, ``"l2"`` or a function ``filters -> scores``.
      round_to: kept counts are rounded up to a multiple of this, as in ``fpgm_masks``;
        use the same value when applying :meth:`Sensitivity.ratios_for`.
      progress: show a progress bar.

    Returns:
      A :class:`Sensitivity`, its groups named by their producer layer.

    Raises:
      TypeError: if ``model`` is not a tf_keras model, ``evaluate`` is not callable or
        returns something other than a number, or ``ratios``/``groups``/``round_to`` have
        the wrong type.
      ValueError: for an unbuilt or subclassed model, ratios outside (0, 1), a group that
        does not exist or cannot be pruned, an unknown criterion, or a non-finite metric.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> model = residual_cnn(width=8)
      >>> x = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32")
      >>> y = model.predict(x, verbose=0)
      >>> scan = sensitivity(model, lambda m: -float(np.abs(m.predict(x, verbose=0) - y).mean()),
      ...                    ratios=(0.5,), groups=["stem_conv"], progress=False)
      >>> scan.table["stem_conv"][0.5] > 0
      True
    """
    require_graph_model(model)
    if not callable(evaluate):
        raise TypeError(f"`evaluate` must be a function model -> float (higher is better), "
                        f"got {evaluate!r:.80}.")
    ratios = _check_ratios(ratios)
    round_to = check_int(round_to, "round_to", minimum=1)
    graph = ChannelGraph(model)
    scanned = _select_groups(graph, groups)
    # One scoring pass per ratio; each group's kept channels do not depend on the others.
    all_masks = [select_masks(graph, r, criterion=criterion, round_to=round_to) for r in ratios]
    total = graph_macs(graph)
    baseline = _score(evaluate, model)
    bar = keras.utils.Progbar(len(scanned) * len(ratios), unit_name="evaluation") \
        if progress else None

    def measure() -> float:
        drop = baseline - _score(evaluate, model)
        if bar is not None:
            bar.add(1)
        return drop

    labels = {g.id: group_label(g, graph.groups) for g in graph.groups}
    results = []
    for group in scanned:
        kept, drops, saved = _scan_group(graph, group, all_masks, measure, total)
        reached = _selected(graph, labels[group.id], ratios[-1], round_to, criterion)
        selects = tuple(labels[g.id] for g in scanned if g.id in reached)
        results.append(GroupSensitivity(labels[group.id], group.id, group.size,
                                        tuple(group.layers), selects, tuple(kept),
                                        tuple(drops), tuple(saved)))
    interactions = interaction_terms(graph, results, total)
    name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    return Sensitivity(baseline, ratios, results, total, interactions, criterion=name,
                       round_to=round_to, model_name=model.name)
