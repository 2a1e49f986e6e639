"""The one zeroing implementation: a 0/1 mask per variable, read from the handlers' tables.

:func:`variable_masks` turns :class:`~tfcompress.pruning.Masks` into ``{variable: 0/1 mask}``
of everything that makes a pruned channel contribute:

* the *output* slice of producers (kernel and bias) and of per-channel layers (BatchNorm
  gamma and beta, depthwise kernels), so a pruned channel leaves them as exactly 0;
* the *input* slice of consumers (Conv/Dense kernels) only where the pruned channel arrives
  non-zero, e.g. after a sigmoid (sigmoid(0) = 0.5) or a Rescaling with an offset.

Then the masked model computes what the rebuilt model computes: a removed channel
contributes nothing in either. BatchNorm moving statistics are left alone (gamma = beta = 0
already silences the channel), so the masked model can keep training.

:func:`tfcompress.pruning.apply_masks` multiplies once; :class:`Zeroing` keeps the masks in
variables and multiplies in one compiled call, cheap enough for
:class:`~tfcompress.pruning.FPGMPruning` to run after every batch.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> from tfcompress.pruning import ChannelGraph, select_masks
  >>> graph = ChannelGraph(residual_cnn(width=8))
  >>> table = variable_masks(graph, select_masks(graph, 0.5))
  >>> sorted(v.name for v, _ in table.values())[:3]
  ['block1a_bn/beta:0', 'block1a_bn/gamma:0', 'block1a_conv/kernel:0']
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.handlers.base import IN
from tfcompress.pruning.masks import Masks

__all__ = ["Zeroing", "BatchZeroing", "variable_masks", "zero_filters_first"]


def zero_filters_first(score):
    """Wraps a criterion so that all-zero filters are pruned first and the others are scored
    among themselves.

    Filters zeroed by an earlier update (all of them in hard mode, those that did not regrow
    in soft mode) are not candidates worth keeping, yet FPGM would rank them far from the
    geometric median, i.e. keep them, and let their distances skew the other filters' scores.
    """

    def criterion(filters: np.ndarray) -> np.ndarray:
        alive = np.any(filters != 0, axis=1)
        scores = np.full(len(filters), -np.inf)
        if alive.any():
            scores[alive] = np.asarray(score(filters[alive]), np.float64).reshape(-1)
        return scores

    return criterion


def variable_masks(graph: ChannelGraph, masks: Masks,
                   layers: Optional[set] = None) -> Dict[int, Tuple[tf.Variable, np.ndarray]]:
    """``{id(variable): (variable, 0/1 mask)}`` for the variables ``masks`` zeroes (in trace
    order), restricted to the layer keys in ``layers`` (None: every layer).

    Raises:
      TypeError, ValueError: if ``masks`` does not match ``graph`` (see ``check_masks``).
    """
    kept = graph.kept_fn(masks)
    result = {}
    for key, record in graph.records.items():
        handler, layer = record.handler, record.layer
        if record.barrier is not None or (layers is not None and key not in layers):
            continue
        for attr in handler.weight_index(layer):
            spec, variable = handler.weights[attr], handler.variable(layer, attr)
            jobs = []
            for role in spec.zero_roles:
                layout = handler.role_layout(layer, role, record.calls[0])
                jobs.append((role, layout.pruned_positions(kept)))
            if spec.consumes:
                dirty = [handler.role_layout(layer, IN, call).positions(kept, only_dirty=True)
                         for call in record.calls]
                jobs.append((IN, np.unique(np.concatenate(dirty))))
            mask = result.get(id(variable), (variable, np.ones(variable.shape, np.float32)))[1]
            for role, positions in jobs:
                if len(positions):
                    mask = handler.zero_weight(layer, attr, mask, role, positions)
            if not mask.all():
                result[id(variable)] = (variable, mask)
    return result


class Zeroing:
    """Multiplies model variables by 0/1 masks in one compiled call, cheap enough to run
    after every batch.

    The masks live in variables of their own, so a mask update is an ``assign`` and the
    ``tf.function`` is traced once (again only if the set of masked variables changes).
    """

    def __init__(self) -> None:
        self._key: Tuple[int, ...] = ()
        self._variables: List[tf.Variable] = []
        self._masks: List[tf.Variable] = []
        self._function = None

    def set_masks(self, masks: Dict[int, Tuple[tf.Variable, np.ndarray]]) -> None:
        """Sets the 0/1 mask of each variable (others are left alone)."""
        # Trace order, never id() order: under MultiWorkerMirroredStrategy every worker
        # must create (and broadcast) the mask variables in the same order.
        key = tuple(masks)
        if key != self._key:
            self._key = key
            self._variables = [masks[i][0] for i in key]
            self._masks = [tf.Variable(masks[i][1], trainable=False, dtype=masks[i][0].dtype)
                           for i in key]
            self._function = tf.function(self._multiply) if key else None
        else:
            for mask, i in zip(self._masks, key):
                mask.assign(masks[i][1])

    def _multiply(self) -> None:
        for variable, mask in zip(self._variables, self._masks):
            variable.assign(variable * mask)

    def __call__(self) -> None:
        if self._function is not None:
            self._function()


class BatchZeroing:
    """The per-batch work in one TF call (a concrete function): :class:`Zeroing`'s compiled
    multiply, returning the optimizer step read after it, so that the next batch needs no
    second call. Traced again only when the set of masked variables changes (as ``Zeroing``
    is); equal masks are not re-assigned."""

    def __init__(self, graph: ChannelGraph, step: Optional[Any]) -> None:
        self.graph, self.step, self._zeroing = graph, step, Zeroing()
        self.masks: Optional[Masks] = None  # the masks the zeroing holds
        self._key, self._function = None, None

    def set_masks(self, masks: Masks) -> None:
        if self.masks is not None and (masks is self.masks or masks == self.masks):
            return
        table = variable_masks(self.graph, masks)  # trace order: same order on every worker
        self._zeroing.set_masks(table)
        if tuple(table) != self._key:
            self._key = tuple(table)
            self._function = tf.function(self._zero_and_read_step).get_concrete_function()
        self.masks = masks

    def _zero_and_read_step(self) -> tf.Tensor:
        self._zeroing()
        return tf.constant(-1, tf.int64) if self.step is None else tf.cast(self.step, tf.int64)

    def __call__(self) -> Optional[int]:
        """Zeroes the pruned channels; returns the optimizer step (None without one)."""
        step = int(self._function())
        return None if step < 0 else step
