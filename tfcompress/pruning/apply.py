"""Masking in place: zero everything that makes a pruned channel contribute.

For every traced layer, the handler's weight table says which weights to zero:

* the *output* slice of producers (kernel and bias) and of per-channel layers (BatchNorm
  gamma and beta, depthwise kernels), so a pruned channel leaves them as exactly 0;
* the *input* slice of consumers (Conv/Dense kernels) only where the pruned channel arrives
  non-zero, e.g. after a sigmoid (sigmoid(0) = 0.5) or a Rescaling with an offset.

Then the masked model computes what the rebuilt model computes: a removed channel
contributes nothing in either. BatchNorm moving statistics are left alone (gamma = beta = 0
already silences the channel), so the masked model can keep training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable

import numpy as np

from tfcompress._keras import require_graph_model
from tfcompress.pruning.handlers.base import IN

if TYPE_CHECKING:  # pragma: no cover
    from tfcompress.pruning.graph import ChannelGraph, LayerRecord
    from tfcompress.pruning.masks import Masks

__all__ = ["apply_masks", "zero_pruned", "weight_index"]


def weight_index(layer: Any, attrs: Iterable[str]) -> Dict[str, int]:
    """``{attribute: index in layer.get_weights()}`` for those of ``attrs`` the layer has
    (``bias`` is absent when ``use_bias=False``, ``gamma`` when ``scale=False``)."""
    ids = {id(w): i for i, w in enumerate(layer.weights)}
    return {attr: ids[id(getattr(layer, attr))] for attr in attrs
            if getattr(layer, attr, None) is not None and id(getattr(layer, attr)) in ids}


def _zero_record(record: "LayerRecord", kept) -> None:
    handler, layer = record.handler, record.layer
    if record.barrier is not None or not handler.weights:
        return
    index = weight_index(layer, handler.weights)
    weights = None
    for attr, spec in handler.weights.items():
        if attr not in index:
            continue
        jobs = []
        if spec.zero is not None:
            pruned = handler.role_layout(layer, spec.zero, record.calls[0]).pruned_positions(kept)
            jobs.append((spec.zero, pruned))
        if spec.consumes:  # inputs that arrive non-zero, over every call of a shared layer
            dirty = [handler.role_layout(layer, IN, call).positions(kept, only_dirty=True)
                     for call in record.calls]
            jobs.append((IN, np.unique(np.concatenate(dirty))))
        for role, positions in jobs:
            if len(positions):
                weights = layer.get_weights() if weights is None else weights
                i = index[attr]
                weights[i] = handler.zero_weight(layer, attr, weights[i], role, positions)
    if weights is not None:
        layer.set_weights(weights)


def zero_pruned(graph: "ChannelGraph", masks: "Masks") -> None:
    """Zeroes the pruned channels of ``masks`` in ``graph.model`` (in place)."""
    kept = graph.kept_fn(masks)
    for record in graph.records.values():
        _zero_record(record, kept)


def apply_masks(model: Any, masks: "Masks") -> None:
    """Zeroes, in place, everything that belongs to the pruned channels of ``masks``.

    Kernels' and biases' output slices, BatchNorm gamma and beta, depthwise kernels, and the
    input slices of consumers that would otherwise see a non-zero pruned channel. Afterwards
    the model's outputs equal those of ``rebuild(model, masks)`` (to float rounding).

    Args:
      model: the tf_keras model the masks were computed on (or one with the same layers).
      masks: :class:`~tfcompress.pruning.Masks`.

    Raises:
      TypeError: if ``model`` is not a tf_keras model or ``masks`` not a ``Masks``.
      ValueError: if the masks do not match the model (unknown group, wrong size, index out
        of range), naming the mismatch.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> from tfcompress.pruning import fpgm_masks
      >>> model = residual_cnn(width=8)
      >>> apply_masks(model, fpgm_masks(model, 0.5))
      >>> int((abs(model.get_layer("stem_conv").kernel.numpy()).sum(axis=(0, 1, 2)) == 0).sum())
      4
    """
    from tfcompress.pruning.graph import ChannelGraph

    require_graph_model(model)
    ChannelGraph(model).apply(masks)
