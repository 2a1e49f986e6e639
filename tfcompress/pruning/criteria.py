"""Filter-importance criteria and the selection of kept channels.

A criterion maps a group's filters ``(n, n_features)`` to ``n`` scores; the **lowest scores
are pruned first**. Filters are the signed weights of every producer of the group (each
producer's output-channel axis first, see ``ChannelHandler.filters``), concatenated along
features, so coupled layers (a residual Add of two convolutions) are judged together.

Scores are computed among *all* filters of the group, zeroed ones included, so repeated
scoring during training (the FPGM "soft" mode) can bring a pruned filter back when it has
regrown: selection never freezes on filters that are already zero.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np

from tfcompress._validate import check_int, check_names, check_ratio, check_ratio_map
from tfcompress.pruning.budget import LatencyPlan, plan_latency, removable_layers
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.masks import Masks, preview_names

__all__ = [
    "CRITERIA", "fpgm", "l1_norm", "l2_norm", "resolve_criterion", "keep_count", "select_masks",
    "fpgm_masks", "latency_plan", "check_cuts",
]

Criterion = Callable[[np.ndarray], np.ndarray]
_LOG = logging.getLogger("tfcompress.pruning")


def fpgm(filters: np.ndarray) -> np.ndarray:
    """Filter Pruning via Geometric Median (He et al., CVPR 2019).

    Each filter's score is the sum of its Euclidean distances to the other filters of the
    group: filters close to the geometric median are the most replaceable, so the smallest
    sums are pruned first. Vectorised through the Gram matrix (``O(n^2 f)``) in float32, the
    precision of the weights (sums agree with a float64 computation to about 1e-5 relative).

    Example:
      >>> fpgm(np.array([[0.0], [1.0], [3.0]])).tolist()
      [4.0, 3.0, 5.0]
    """
    f = np.asarray(filters, np.float32).reshape(len(filters), -1)
    squared = np.einsum("ij,ij->i", f, f, dtype=np.float64).astype(np.float32)
    d2 = f @ f.T  # float32 n x n, then in place: n reaches 6144 (ConvNeXt's MLP groups)
    d2 *= -2.0
    d2 += squared[:, None]
    d2 += squared[None, :]
    np.fill_diagonal(d2, 0.0)
    np.maximum(d2, 0.0, out=d2)
    np.sqrt(d2, out=d2)
    return d2.sum(axis=1, dtype=np.float64)


def l1_norm(filters: np.ndarray) -> np.ndarray:
    """Sum of absolute weights of each filter (smallest pruned first).

    Example:
      >>> l1_norm(np.array([[1.0, -2.0], [0.5, 0.0]])).tolist()
      [3.0, 0.5]
    """
    return np.abs(np.asarray(filters, np.float64).reshape(len(filters), -1)).sum(axis=1)


def l2_norm(filters: np.ndarray) -> np.ndarray:
    """Euclidean norm of each filter (smallest pruned first).

    Example:
      >>> l2_norm(np.array([[3.0, 4.0], [0.0, 1.0]])).tolist()
      [5.0, 1.0]
    """
    return np.linalg.norm(np.asarray(filters, np.float64).reshape(len(filters), -1), axis=1)


#: The criteria by name; add a row to make a new one available everywhere.
CRITERIA: Dict[str, Criterion] = {"fpgm": fpgm, "l1": l1_norm, "l2": l2_norm}


def resolve_criterion(criterion: Union[str, Criterion]) -> Criterion:
    """The scoring function for ``criterion``: a name in :data:`CRITERIA` or a callable.

    This is the one place criterion names are resolved (``fpgm_masks``, ``FPGMPruning`` and
    ``sensitivity`` all call it).

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything that is neither a string nor callable.

    Example:
      >>> resolve_criterion("l1") is l1_norm
      True
    """
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"Unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)} "
                             "or pass a function filters -> scores.")
        return CRITERIA[criterion]
    if callable(criterion):
        return criterion
    raise TypeError(f"`criterion` must be one of {sorted(CRITERIA)} or a function filters -> "
                    f"scores, got {criterion!r} ({type(criterion).__name__}).")


def keep_count(size: int, ratio: float, round_to: int = 1, min_channels: int = 1,
               blocks: int = 1) -> int:
    """How many of ``size`` channels survive pruning ``ratio`` of them.

    ``ceil((1 - ratio) * size)`` rounded up to a multiple of ``round_to``, at least
    ``min_channels``, at most ``size``; then rounded up to a multiple of ``blocks`` so every
    block of a grouped convolution keeps the same count (this takes precedence over
    ``round_to``).

    Example:
      >>> keep_count(10, 0.3), keep_count(10, 0.3, round_to=4), keep_count(10, 0.99)
      (7, 8, 1)
    """
    keep = math.ceil(round((1.0 - ratio) * size, 9))
    keep = math.ceil(keep / round_to) * round_to
    keep = min(max(keep, min_channels), size)
    per_block = math.ceil(keep / blocks)
    return per_block * blocks


def _resolve_groups(graph: ChannelGraph, names: Iterable[str], argument: str,
                    touched: bool) -> Dict[str, List[str]]:
    """Maps each user-given name (a layer name, ``outer/inner`` for nested layers, or a
    group id) to the ids of the groups it designates: every group the layer touches (its
    input channels too) if ``touched``, else the groups it produces (the groups it belongs
    to for layers that produce none, e.g. a BatchNormalization)."""
    by_layer: Dict[str, List[str]] = {}
    produced: Dict[str, List[str]] = {}
    for group in graph.groups:
        for key in group.layers:
            by_layer.setdefault(key, []).append(group.id)
        for key in group.producers:
            produced.setdefault(key, []).append(group.id)
    if not touched:
        by_layer = {key: produced.get(key, ids) for key, ids in by_layer.items()}
    group_ids = {group.id for group in graph.groups}
    resolved = {}
    for name in names:
        layers = [k for k in graph.records if k == name or k.startswith(name + "/")]
        ids = [gid for key in layers for gid in by_layer.get(key, [])]
        if name in group_ids:
            ids.append(name)
        if not layers and name not in group_ids:
            keys = list(graph.records)
            raise ValueError(f"`{argument}` names layer {name!r}, which model "
                             f"{graph.model.name!r} does not have. Valid names include "
                             f"{preview_names(keys, 10)} (nested layers as 'outer/inner'; "
                             "group ids are accepted too).")
        resolved[name] = list(dict.fromkeys(ids))
    return resolved


def _excluded_groups(graph: ChannelGraph, exclude: Optional[Iterable[str]]) -> set:
    """Ids of every group the ``exclude`` names touch (input channels included)."""
    return {gid for ids in _resolve_groups(
        graph, check_names(exclude, "exclude") or (), "exclude", True).values() for gid in ids}


def _group_ratios(graph: ChannelGraph, ratio: Optional[float],
                  per_layer: Optional[Dict[str, float]]) -> Dict[str, float]:
    """The ratio of every prunable group: the largest ``per_layer`` ratio among the names
    that designate it, else ``ratio`` (groups without either are not pruned)."""
    named: Dict[str, float] = {}
    for name, ids in _resolve_groups(graph, per_layer or {}, "per_layer", False).items():
        for gid in ids:
            named[gid] = max(per_layer[name], named.get(gid, 0.0))
    default = 0.0 if ratio is None else ratio
    return {g.id: named.get(g.id, default) for g in graph.groups if g.prunable}


def _keep_best(scores: np.ndarray, keep: int, blocks: int) -> np.ndarray:
    """Sorted indices of the ``keep`` highest scores, the same number in every block."""
    per_block = keep // blocks
    by_block = scores.reshape(blocks, -1)
    best = np.argsort(-by_block, axis=1, kind="stable")[:, :per_block]
    return np.sort((best + (np.arange(blocks) * by_block.shape[1])[:, None]).ravel())


def select_masks(
    graph: ChannelGraph,
    ratio: Optional[float] = None,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    per_layer: Optional[Mapping[str, float]] = None,
    exclude: Optional[Iterable[str]] = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> Masks:
    """Scores each prunable group of ``graph`` and keeps its best channels.

    See :func:`fpgm_masks` for the arguments; this variant reuses an existing trace.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> graph = ChannelGraph(residual_cnn(width=8))
      >>> masks = select_masks(graph, per_layer={"block2a_conv": 0.5})
      >>> {gid: len(idx) for gid, idx in masks.kept.items() if len(idx) < masks.sizes[gid]}
      {'block2a_conv': 8}
    """
    if ratio is None and per_layer is None:
        raise TypeError("Give `ratio` (the fraction of channels to prune in every group) or "
                        "`per_layer` ({layer or group: ratio}), e.g. `fpgm_masks(model, 0.5)`.")
    ratio = None if ratio is None else check_ratio(ratio, "ratio")
    score = resolve_criterion(criterion)
    round_to = check_int(round_to, "round_to", minimum=1)
    min_channels = check_int(min_channels, "min_channels", minimum=1)
    per_layer = check_ratio_map(per_layer, "per_layer")
    excluded = _excluded_groups(graph, exclude)
    kept: Dict[str, np.ndarray] = {}
    for gid, group_ratio in _group_ratios(graph, ratio, per_layer).items():
        group = graph.group(gid)
        keep = keep_count(group.size, group_ratio, round_to, min_channels, group.blocks)
        if group_ratio >= 1.0 and gid not in excluded:
            kept[gid] = _cut(graph, gid)
        elif gid in excluded or keep >= group.size:
            kept[gid] = np.arange(group.size)
        else:
            scores = np.asarray(score(graph.filters(group)), np.float64).reshape(group.size)
            kept[gid] = _keep_best(scores, keep, group.blocks)
    masks = Masks(kept, sizes={g.id: g.size for g in graph.groups},
                  layers={g.id: g.layers for g in graph.groups}, barriers=graph.barriers,
                  probed=graph.probed)
    if masks.cut:
        graph.check_masks(masks)  # e.g. both inputs of one Add cut
    return masks


def check_cuts(graph: ChannelGraph, per_layer: Optional[Mapping[str, float]],
               exclude: Optional[Iterable[str]] = None) -> None:
    """Raises the ValueError ``select_masks`` would raise for the ``per_layer`` ratios of 1.0
    that name a group no residual branch removal allows (``FPGMPruning`` checks them when
    training begins, before its schedule ramps them up to 1.0).

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> check_cuts(ChannelGraph(residual_cnn(width=8)), {"block1a_conv": 1.0})
    """
    cuts = {name: 1.0 for name, value in (per_layer or {}).items() if value == 1.0}
    if cuts:
        select_masks(graph, per_layer=cuts, exclude=exclude)


def _cut(graph: ChannelGraph, gid: str) -> np.ndarray:
    """No kept channel: ``gid``'s residual branch goes (a ``per_layer`` ratio of 1)."""
    if gid not in graph.branches:
        raise ValueError(
            f"`per_layer` asks to prune all channels (ratio 1.0) of group {gid!r}, which is "
            "not inside a residual branch; only residual branch groups can be removed "
            f"(this model's: {preview_names(graph.branches, 4)}). Use a ratio below 1.")
    return np.zeros(0, np.int64)


def fpgm_masks(
    model: Any,
    ratio: Optional[float] = None,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    per_layer: Optional[Mapping[str, float]] = None,
    exclude: Optional[Iterable[str]] = None,
    round_to: int = 1,
    min_channels: int = 1,
    target_latency: Optional[float] = None,
    runtime: str = "litert-int8",
    threads: int = 1,
    sensitivity: Any = None,
    check_latency: bool = False,
) -> Masks:
    """One-shot structured pruning masks, by ratio or for a latency target.

    Traces ``model`` into channel groups, scores each prunable group with ``criterion`` and
    keeps its best ``ceil((1 - ratio) * size)`` channels (see :func:`keep_count`). With
    ``target_latency``, the kept count of every group is chosen instead so that the slim
    model's latency on ``runtime``, predicted from measured latency tables, is at most
    ``target_latency`` times the model's (see :mod:`tfcompress.pruning.budget`); whole
    residual branches may be removed.

    Args:
      model: a built Functional or Sequential model (tf_keras or Keras 3).
      ratio: fraction of each group's channels to prune, in [0, 1). Optional when
        ``per_layer`` or ``target_latency`` is given: then only the groups ``per_layer``
        names (or the allocation chooses) are pruned.
      criterion: ``"fpgm"`` (distance to the other filters), ``"l1"``, ``"l2"``, or a
        function ``filters (n, features) -> scores (n,)`` (lowest pruned first).
      per_layer: ``{layer name or group id: ratio}`` overriding ``ratio`` for the groups
        those layers produce (a layer that produces none, e.g. a BatchNormalization, names
        its own group; a group named several times takes the largest ratio); the keys of
        ``Sensitivity.ratios_for`` work as they are. A ratio of exactly 1.0 cuts a group
        inside a residual branch (``ChannelGraph.branches``): ``rebuild`` removes the
        branch (see :mod:`tfcompress.pruning.depth`).
      exclude: layer names (or group ids) left exactly as they are: every group they touch,
        input channels included, is never pruned.
      round_to: kept counts are rounded up to a multiple of this (hardware-friendly widths;
        with ``target_latency``, the default 1 means the multiple the runtime prefers).
      min_channels: every group keeps at least this many channels.
      target_latency: fraction of the model's latency to keep, in (0, 1], e.g. 0.5 for a
        2x faster model; the model needs a fixed input shape. Tables are measured once per
        runtime and machine and cached (``$TFCOMPRESS_CACHE_DIR``, else
        ``~/.cache/tfcompress``).
      runtime: ``"litert-int8"`` or ``"litert-float32"`` (LiteRT with XNNPACK).
      threads: interpreter threads the latency is measured with.
      sensitivity: a :func:`~tfcompress.pruning.sensitivity` scan: with ``target_latency``,
        its measured metric drops are the loss the allocation minimises.
      check_latency: with ``target_latency``, also export and time the slim model and,
        if it measures above the target, allocate again (at most twice).

    Returns:
      :class:`~tfcompress.pruning.Masks`.

    Raises:
      TypeError: if ``model`` is not a Keras model, a ratio is not a number, none of
        ``ratio``/``per_layer``/``target_latency`` is given, or ``criterion`` is neither a
        name nor callable.
      ValueError: for a ratio outside [0, 1) (``per_layer``: [0, 1], 1 only for residual
        branch groups), an unknown criterion, unknown names in ``per_layer``/``exclude``,
        ``round_to``/``min_channels`` below 1, or a latency target outside (0, 1] or out
        of reach.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> masks = fpgm_masks(residual_cnn(width=8), 0.5)
      >>> round(masks.pruned_ratio, 2)
      0.5
    """
    graph = ChannelGraph(model)
    if target_latency is None:
        return select_masks(graph, ratio, criterion=criterion, per_layer=per_layer,
                            exclude=exclude, round_to=round_to, min_channels=min_channels)
    if ratio is not None or per_layer is not None:
        raise TypeError("`target_latency` chooses every group's kept channels; pass it without "
                        "`ratio` and `per_layer` (use `exclude` to keep layers whole).")
    plan = latency_plan(graph, target_latency, runtime, threads, criterion=criterion,
                        exclude=exclude, round_to=round_to, min_channels=min_channels,
                        sensitivity=sensitivity, check_latency=check_latency)
    _LOG.info("fpgm_masks(target_latency=%s): %s", target_latency, plan.summary())
    return select_masks(graph, per_layer=plan.ratios(), criterion=criterion,
                        min_channels=min_channels)


def latency_plan(graph: ChannelGraph, target_latency: float, runtime: str = "litert-int8",
                 threads: int = 1, *, criterion: Union[str, Criterion] = "fpgm",
                 exclude: Optional[Iterable[str]] = None, round_to: int = 1,
                 min_channels: int = 1, sensitivity: Any = None, check_latency: bool = False,
                 progress: bool = False) -> LatencyPlan:
    """The :class:`~tfcompress.pruning.budget.LatencyPlan` behind
    ``fpgm_masks(target_latency=...)``: kept counts, predicted (and with
    ``check_latency``, measured) latency. ``select_masks(graph,
    per_layer=plan.ratios(), criterion=criterion)`` gives its masks.
    """
    score = resolve_criterion(criterion)
    round_to = check_int(round_to, "round_to", minimum=1)
    min_channels = check_int(min_channels, "min_channels", minimum=1)
    excluded = _excluded_groups(graph, exclude)

    def select(ratios: Dict[str, float]) -> Masks:
        return select_masks(graph, per_layer=ratios, criterion=score, min_channels=min_channels)

    return plan_latency(graph, target_latency, runtime, threads, score=score, scan=sensitivity,
                        exclude=excluded, round_to=round_to, min_channels=min_channels,
                        branches=removable_layers(graph),
                        select=select if check_latency else None, progress=progress)
