"""The channel-dependency graph of a model: an immutable value the algorithms read.

:class:`ChannelGraph` holds what :func:`tfcompress.pruning.trace.trace` found: the channel
groups, one record per traced layer, and which group each channel space belongs to. It knows
nothing of criteria, masking, counting or rebuilding; those are free functions over it
(:func:`~tfcompress.pruning.criteria.select_masks`, :func:`~tfcompress.pruning.apply.zero_pruned`,
:func:`~tfcompress.pruning.counting.graph_macs`, :func:`~tfcompress.pruning.rebuild.rebuild`),
so one trace can serve all of them.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from tfcompress._keras import require_graph_model
from tfcompress.pruning.branches import Branch, find_branches
from tfcompress.pruning.layout import KeptFn, Layout
from tfcompress.pruning.masks import Masks, check_masks, preview_names
from tfcompress.pruning.trace import Barrier, Group, LayerRecord, trace

__all__ = ["ChannelGraph", "Group", "LayerRecord", "Branch"]


class ChannelGraph:
    """The channel groups of a Functional or Sequential model (traced once, read-only).

    Args:
      model: a built Functional or Sequential model.
      strict: raise an exception from a channel handler instead of turning its layer into a
        barrier with a logged warning (the default reads ``TFCOMPRESS_STRICT_TRACING``; the
        test suite runs strict, so a handler bug fails a test instead of pruning less).

    Raises:
      TypeError: if ``model`` is not a tf_keras model (a Keras 3 model, say).
      ValueError: if it is subclassed or unbuilt.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> from tfcompress.pruning import select_masks, graph_macs
      >>> graph = ChannelGraph(residual_cnn(width=8))
      >>> [g.id for g in graph.groups if g.prunable]
      ['stem_conv', 'block1a_conv', 'block2a_conv', 'block2b_conv']
      >>> masks = select_masks(graph, 0.5)
      >>> graph_macs(graph, masks) < graph_macs(graph)
      True
    """

    def __init__(self, model: Any, *, strict: Optional[bool] = None) -> None:
        require_graph_model(model)
        self._model = model
        self._trace = trace(model, strict)

    @property
    def model(self) -> Any:
        """The traced model (its weights are read live by ``filters``)."""
        return self._model

    @property
    def groups(self) -> List[Group]:
        """Every channel group, in trace order."""
        return list(self._trace.groups.values())

    @property
    def records(self) -> Mapping[str, LayerRecord]:
        """``{qualified layer name: LayerRecord}`` of every traced layer, in trace order."""
        return self._trace.records

    @property
    def nested_inputs(self) -> Mapping[str, Layout]:
        """Layouts of the inputs of nested models, by qualified InputLayer name."""
        return self._trace.nested_inputs

    @property
    def barriers(self) -> Dict[str, List[Barrier]]:
        """``{group id: [(layer, reason), ...]}`` for the groups that cannot be pruned."""
        return {g.id: list(g.barriers) for g in self._trace.groups.values() if g.barriers}

    @property
    def probed(self) -> Dict[str, str]:
        """``{layer: verdict}`` for the layers no handler knows that were probed (run on
        random inputs), e.g. ``"probed: channel-wise (clean)"`` or
        ``"probed: mixes channels -> barrier"`` (see ``handlers.probe``)."""
        return {key: r.probe for key, r in self._trace.records.items() if r.probe}

    @functools.cached_property
    def branches(self) -> Mapping[str, Branch]:
        """``{group id: Branch}`` of the groups that can be cut to zero channels: cutting one
        removes a residual branch (see :mod:`tfcompress.pruning.depth`). Computed once."""
        return types.MappingProxyType(find_branches(
            self._model, self._trace.groups, self._trace.records, self._trace.space_group))

    def group(self, group_id: str) -> Group:
        """The group named ``group_id``.

        Raises:
          ValueError: if the model has no such group.
        """
        if group_id not in self._trace.groups:
            raise ValueError(f"Model {self._model.name!r} has no channel group {group_id!r}; "
                             f"its groups are {preview_names(self._trace.groups)}.")
        return self._trace.groups[group_id]

    def group_of_space(self, space: int) -> Group:
        """The group a channel space belongs to."""
        return self._trace.groups[self._trace.space_group[space]]

    def filters(self, group: Group) -> np.ndarray:
        """``(group.size, n_features)`` float32: the current filters of all producers,
        concatenated along the features."""
        parts = []
        indices = group.producer_indices or (0,) * len(group.producers)
        for key, index in zip(group.producers, indices):
            record = self._trace.records[key]
            filters = record.handler.filters(record.layer, index)
            if filters is not None:
                parts.append(np.asarray(filters, np.float32).reshape(group.size, -1))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=1) if parts else np.zeros((group.size, 0), np.float32)

    def check_masks(self, masks: Masks) -> None:
        """Validates ``masks`` against this model.

        Raises:
          TypeError: if ``masks`` is not a :class:`Masks`.
          ValueError: naming the first mismatch (unknown group, wrong size, bad indices, a
            group cut to zero channels that is not in :attr:`branches`).
        """
        check_masks(masks, self._model.name, self._trace.groups, lambda: self.branches)

    def kept_fn(self, masks: Optional[Masks]) -> KeptFn:
        """Maps a space id to its kept channel indices (None: all kept), after validating
        ``masks`` against this model (None: nothing pruned)."""
        if masks is None:
            return lambda space: None
        self.check_masks(masks)
        groups, space_group = self._trace.groups, self._trace.space_group

        def kept(space: int) -> Optional[np.ndarray]:
            group = groups[space_group[space]]
            idx = masks.kept.get(group.id)
            return None if idx is None or len(idx) == group.size else idx

        return kept
