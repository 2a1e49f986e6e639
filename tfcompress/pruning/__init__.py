"""FPGM structured filter pruning that produces genuinely smaller tf_keras models.

* :class:`ChannelGraph` traces a model into channel groups (channels pruned together).
* :func:`fpgm_masks` scores the groups (``"fpgm"``, ``"l1"``, ``"l2"``) into :class:`Masks`.
* :func:`apply_masks` zeroes the pruned channels in place (what training with masks sees).
* :func:`rebuild` removes them: a dense, smaller model with exactly the same outputs.
* :func:`count_macs` / :func:`count_params` measure the result.
* :class:`FPGMPruning` prunes during ``fit`` on a schedule; :func:`sensitivity` scans groups.
* ``fpgm_masks(model, target_latency=0.5, runtime="litert-int8")`` prunes for a measured
  latency instead of a ratio (:func:`latency_plan` gives the predicted/measured numbers).
* :func:`removable_branches`: groups a ``per_layer`` ratio of 1.0 may cut, removing their
  residual branch in the rebuild (depth pruning, :mod:`tfcompress.pruning.depth`).

One trace serves every algorithm: ``graph = ChannelGraph(model)``, then
``select_masks(graph, ...)``, ``zero_pruned(graph, masks)``, ``graph_macs(graph, masks)``.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> from tfcompress.pruning import fpgm_masks, rebuild, count_macs
  >>> model = residual_cnn(width=8)
  >>> slim = rebuild(model, fpgm_masks(model, 0.5))
  >>> count_macs(slim) < count_macs(model)
  True
"""

from tfcompress.pruning.apply import apply_masks, zero_pruned
from tfcompress.pruning.budget import LatencyPlan
from tfcompress.pruning.callback import FPGMPruning
from tfcompress.pruning.counting import (
    count_macs,
    count_params,
    graph_macs,
    graph_params,
    uncounted_layers,
)
from tfcompress.pruning.criteria import (
    CRITERIA,
    fpgm_masks,
    keep_count,
    latency_plan,
    resolve_criterion,
    select_masks,
)
from tfcompress.pruning.depth import Branch, removable_branches
from tfcompress.pruning.graph import ChannelGraph, Group
from tfcompress.pruning.handlers import HANDLERS, ChannelHandler, handler_for, register_handler
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.rebuild import rebuild
from tfcompress.pruning.schedules import ConstantRatio, PolynomialRatio, PruningSchedule
from tfcompress.pruning.sensitivity import Sensitivity, sensitivity

__all__ = [
    "ChannelGraph", "Group", "Masks", "fpgm_masks", "select_masks", "apply_masks",
    "zero_pruned", "rebuild", "count_macs", "count_params", "graph_macs", "graph_params",
    "uncounted_layers", "CRITERIA", "resolve_criterion", "keep_count", "HANDLERS",
    "ChannelHandler", "handler_for", "register_handler", "FPGMPruning", "PruningSchedule",
    "ConstantRatio", "PolynomialRatio", "Sensitivity", "sensitivity", "LatencyPlan",
    "latency_plan", "Branch", "removable_branches",
]
