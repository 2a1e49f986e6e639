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

import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Mapping, Optional, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.graph import ChannelGraph
    from tfcompress.pruning.masks import Masks

__all__ = ["CRITERIA", "fpgm", "l1_norm", "l2_norm", "keep_count", "select_masks", "fpgm_masks"]

Criterion = Callable[[np.ndarray], np.ndarray]


def fpgm(filters: np.ndarray) -> np.ndarray:
    """Filter Pruning via Geometric Median (He et al., CVPR 2019).

    Each filter's score is the sum of its Euclidean distances to the other filters of the
    group: filters close to the geometric median are the most replaceable, so the smallest
    sums are pruned first. Vectorised through the Gram matrix (``O(n^2 f)``).

    Example:
      >>> fpgm(np.array([[0.0], [1.0], [3.0]])).tolist()
      [4.0, 3.0, 5.0]
    """
    f = np.asarray(filters, np.float64).reshape(len(filters), -1)
    squared = np.einsum("ij,ij->i", f, f)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (f @ f.T)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0)).sum(axis=1)


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


def _check_ratio(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{what} must be a number in [0, 1) (the fraction of channels to "
                         f"prune), got {value!r}.")
    return float(value)


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{what}` must be a positive integer, got {value!r}.")
    return int(value)


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


def _resolve_names(graph: "ChannelGraph", names: Iterable[str], argument: str) -> Dict[str, list]:
    """Maps each user-given layer name to the traced layer keys it designates."""
    keys = list(graph.records)
    resolved = {}
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"`{argument}` must name layers by their string names, got {name!r}.")
        matches = [k for k in keys if k == name or k.startswith(name + "/")]
        if not matches:
            shown = ", ".join(repr(k) for k in keys[:10])
            raise ValueError(f"`{argument}` names layer {name!r}, which model "
                             f"{graph.model.name!r} does not have. Valid names include "
                             f"{shown}{', ...' if len(keys) > 10 else ''} "
                             "(nested layers as 'outer/inner').")
        resolved[name] = matches
    return resolved


def select_masks(
    graph: "ChannelGraph",
    ratio: float,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    per_layer: Optional[Mapping[str, float]] = None,
    exclude: Optional[Iterable[str]] = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> "Masks":
    """Scores each prunable group of ``graph`` and keeps its best channels.

    See :func:`fpgm_masks` for the arguments; this variant reuses an existing trace.
    """
    from tfcompress.pruning.masks import Masks

    ratio = _check_ratio(ratio, "`ratio`")
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"Unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)} "
                             "or pass a function filters -> scores.")
        score = CRITERIA[criterion]
    elif callable(criterion):
        score = criterion
    else:
        raise ValueError(f"`criterion` must be one of {sorted(CRITERIA)} or a callable, "
                         f"got {criterion!r}.")
    round_to = _check_positive_int(round_to, "round_to")
    min_channels = _check_positive_int(min_channels, "min_channels")
    if per_layer is not None and not isinstance(per_layer, Mapping):
        raise ValueError(f"`per_layer` must map layer names to ratios, got {per_layer!r}.")
    if isinstance(exclude, str):
        exclude = [exclude]
    layer_ratio: Dict[str, float] = {}
    for name, keys in _resolve_names(graph, (per_layer or {}), "per_layer").items():
        value = _check_ratio(per_layer[name], f"per_layer[{name!r}]")
        for key in keys:
            layer_ratio[key] = max(value, layer_ratio.get(key, 0.0))
    excluded = {key for keys in _resolve_names(graph, exclude or (), "exclude").values()
                for key in keys}

    kept: Dict[str, np.ndarray] = {}
    for group in graph.groups:
        if not group.prunable:
            continue
        ratios = [layer_ratio[k] for k in group.layers if k in layer_ratio]
        group_ratio = max(ratios) if ratios else ratio
        keep = keep_count(group.size, group_ratio, round_to, min_channels, group.blocks)
        if excluded.intersection(group.layers) or keep >= group.size:
            kept[group.id] = np.arange(group.size)
            continue
        scores = np.asarray(score(graph.filters(group)), np.float64).reshape(group.size)
        per_block = keep // group.blocks
        blocks = scores.reshape(group.blocks, -1)
        best = np.argsort(-blocks, axis=1, kind="stable")[:, :per_block]
        best = best + (np.arange(group.blocks) * blocks.shape[1])[:, None]
        kept[group.id] = np.sort(best.ravel())
    return Masks(
        kept,
        sizes={g.id: g.size for g in graph.groups},
        layers={g.id: g.layers for g in graph.groups},
        barriers=graph.barriers,
    )


def fpgm_masks(
    model: Any,
    ratio: float,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    per_layer: Optional[Mapping[str, float]] = None,
    exclude: Optional[Iterable[str]] = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> "Masks":
    """One-shot structured pruning masks for a tf_keras model.

    Traces ``model`` into channel groups, scores each prunable group with ``criterion`` and
    keeps its best ``ceil((1 - ratio) * size)`` channels (see :func:`keep_count`).

    Args:
      model: a built Functional or Sequential tf_keras model.
      ratio: fraction of each group's channels to prune, in [0, 1).
      criterion: ``"fpgm"`` (distance to the other filters), ``"l1"``, ``"l2"``, or a
        function ``filters (n, features) -> scores (n,)`` (lowest pruned first).
      per_layer: ``{layer name: ratio}`` overriding ``ratio`` for the groups of those
        layers (a group touched by several takes the largest).
      exclude: layer names whose groups are never pruned.
      round_to: kept counts are rounded up to a multiple of this (hardware-friendly widths).
      min_channels: every group keeps at least this many channels.

    Returns:
      :class:`~tfcompress.pruning.Masks`.

    Raises:
      TypeError: if ``model`` is not a tf_keras model.
      ValueError: for a ratio outside [0, 1), an unknown criterion, unknown layer names in
        ``per_layer``/``exclude``, or a non-positive ``round_to``/``min_channels``.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> masks = fpgm_masks(residual_cnn(width=8), 0.5)
      >>> round(masks.pruned_ratio, 2)
      0.5
    """
    from tfcompress.pruning.graph import ChannelGraph

    return ChannelGraph(model).compute_masks(
        ratio, criterion=criterion, per_layer=per_layer, exclude=exclude, round_to=round_to,
        min_channels=min_channels)
