"""Masking in place: zero everything that makes a pruned channel contribute.

The zeroing itself (which slices of which weights) is :func:`tfcompress.pruning.zeroing.
variable_masks`, shared with :class:`~tfcompress.pruning.FPGMPruning`; here it is applied
once, as a multiply of each masked variable.
"""

from __future__ import annotations

from typing import Any

from tfcompress._keras import require_graph_model
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.zeroing import variable_masks

__all__ = ["apply_masks", "zero_pruned"]


def zero_pruned(graph: ChannelGraph, masks: Masks) -> None:
    """Zeroes the pruned channels of ``masks`` in ``graph.model`` (in place)."""
    for variable, mask in variable_masks(graph, masks).values():
        value = variable.numpy()
        variable.assign(value * mask.astype(value.dtype))


def apply_masks(model: Any, masks: Masks) -> None:
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
    require_graph_model(model)
    zero_pruned(ChannelGraph(model), masks)
