"""Depth pruning: a residual branch whose channels are all pruned is removed from the graph.

Some groups may be pruned to zero channels ("cut"): those inside a residual branch that
ends in a two-input ``Add`` whose other input stays live (:func:`removable_branches`, e.g.
both inner groups of a ResNet bottleneck, the expanded channels of a MobileNetV2 block with
a residual). A ``per_layer`` ratio of exactly 1.0 cuts one (``select_masks``,
``fpgm_masks``, ``FPGMPruning``); in :class:`~tfcompress.pruning.Masks` its kept indices are
empty.

* Masked model: zeroing the group (``apply_masks``) makes the branch output a per-channel
  constant ``c``: the biases and BatchNorm betas that follow the cut, carried through the
  rest of the branch.
* Rebuilt model (:func:`~tfcompress.pruning.rebuild`): every layer of the branch is gone
  and the ``Add`` becomes a :class:`~tfcompress.layers.ChannelBias` of the same name
  computing ``x + c``. ``c`` is computed numerically: the model is first rebuilt with the
  cut group at one zeroed channel, the branch output is evaluated on a random batch, and it
  must be the same at every position (else the rebuild raises a ValueError).

Exactness is the contract, as for channel pruning: masked == rebuilt.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> from tfcompress.pruning import ChannelGraph, rebuild, select_masks
  >>> model = residual_cnn(width=8)
  >>> graph = ChannelGraph(model)
  >>> sorted(removable_branches(graph))
  ['block1a_conv']
  >>> slim = rebuild(model, select_masks(graph, per_layer={"block1a_conv": 1.0}))
  >>> type(slim.get_layer("block1_add")).__name__, "block1a_conv" in [x.name for x in slim.layers]
  ('ChannelBias', False)
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import numpy as np

from tfcompress._keras import flavour_of, keep_one_input, model_from_config, serialize_layer
from tfcompress.layers import channel_bias_class
from tfcompress.pruning.branches import Branch
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.masks import Masks

__all__ = ["Branch", "removable_branches", "cut_branches", "one_channel", "cut_only",
           "remove_branches"]

#: How far (relative to its size) a branch output may vary over positions and still count as
#: one constant (float32 rounding of identical computations).
CONSTANT_TOLERANCE = 1e-5


def removable_branches(graph: ChannelGraph) -> Dict[str, Branch]:
    """``{group id: Branch}`` of the groups of ``graph`` that may be cut to zero channels.

    Structural and conservative (see :mod:`tfcompress.pruning.branches`); computed once per
    graph (``ChannelGraph.branches``).

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> branch = removable_branches(ChannelGraph(residual_cnn(width=8)))["block1a_conv"]
      >>> branch.merge, branch.branch_input, len(branch.layers)
      ('block1_add', 0, 5)
    """
    return dict(graph.branches)


def cut_branches(graph: ChannelGraph, masks: Optional[Masks]) -> Dict[str, Branch]:
    """``{merge key: Branch}`` of the branches ``masks`` remove (validated first): one per
    ``Add``; a branch inside another removed branch goes with it and is not listed.

    Raises:
      TypeError, ValueError: if ``masks`` do not match ``graph``.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> graph = ChannelGraph(residual_cnn(width=8))
      >>> masks = Masks({"block1a_conv": []}, sizes={"block1a_conv": 8})
      >>> list(cut_branches(graph, masks))
      ['block1_add']
    """
    if masks is None:
        return {}
    graph.check_masks(masks)
    cut = [graph.branches[gid] for gid in masks.cut]
    inside = {key for branch in cut for key in branch.layers}
    active: Dict[str, Branch] = {}
    for branch in cut:
        if branch.merge not in inside:
            active.setdefault(branch.merge, branch)
    return active


def one_channel(graph: ChannelGraph, masks: Masks) -> Masks:
    """``masks`` with every cut group keeping one channel (one per block of a grouped
    convolution), which the rebuild zeroes: the intermediate model whose branch outputs
    give the constants."""
    kept = dict(masks.kept)
    for gid in masks.cut:
        group = graph.group(gid)
        kept[gid] = np.arange(group.blocks) * (group.size // group.blocks)
    return Masks(kept, masks.sizes, masks.layers, masks.barriers, masks.probed)


def cut_only(masks: Masks) -> Masks:
    """The cut groups of ``masks`` alone (what the rebuild zeroes before slicing)."""
    return Masks({gid: [] for gid in masks.cut}, masks.sizes)


def remove_branches(model: Any, branches: Mapping[str, Branch],
                    custom_objects: Mapping[str, type]) -> Any:
    """A copy of ``model`` without the layers of ``branches`` (``{merge: Branch}``, whose
    outputs are constant in ``model``), each merge replaced by a ``ChannelBias``.

    Raises:
      ValueError: if a branch output is not the same at every position and in every
        example (so no per-channel constant can replace it).
    """
    constants = _branch_constants(model, branches)
    config = copy.deepcopy(model.get_config())
    removed = {key for branch in branches.values() for key in branch.layers if "/" not in key}
    cls = channel_bias_class(flavour_of(model))
    layers = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name in removed:
            continue
        if name in branches:
            merged = serialize_layer(cls(name=name))
            for key in ("dtype", "trainable"):
                if key in entry["config"]:
                    merged["config"][key] = entry["config"][key]
            merged.update(name=entry.get("name", name), inbound_nodes=entry["inbound_nodes"])
            entry = keep_one_input(merged, 1 - branches[name].branch_input)
        layers.append(entry)
    config["layers"] = layers
    slim = model_from_config(model, config, dict(custom_objects))
    pairs = []
    for layer in slim.layers:
        if layer.name in branches:
            layer.bias.assign(constants[layer.name].astype(np.float32))
        else:
            pairs.extend(zip(layer.weights, model.get_layer(layer.name).weights))
    for variable, value in pairs:
        variable.assign(value)
    return slim


def _branch_constants(model: Any, branches: Mapping[str, Branch]) -> Dict[str, np.ndarray]:
    """``{merge: c}``: each branch output of ``model`` on a random batch of 2, checked to be
    the same everywhere but along the channels."""
    tensors = [model.get_layer(merge).input[branch.branch_input]
               for merge, branch in branches.items()]
    probe = flavour_of(model).module.Model(model.inputs, tensors)
    rng = np.random.default_rng(0)
    batch = [rng.uniform(-1, 1, (2,) + tuple(d or 8 for d in tuple(t.shape)[1:])).astype(
        _dtype(t)) for t in model.inputs]
    outputs = probe(batch, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    constants = {}
    for (merge, branch), output in zip(branches.items(), outputs):
        value = np.asarray(output, np.float64)
        value = value.reshape(-1, value.shape[-1])
        c = value.mean(axis=0)
        spread = float(np.abs(value - c).max())
        if spread > CONSTANT_TOLERANCE * max(1.0, float(np.abs(c).max())):
            raise ValueError(
                f"Cannot remove the branch of group {branch.group!r} into {merge!r}: with the "
                f"group cut, its output still varies over positions (by {spread:.2g}), e.g. "
                "a 'same'-padded convolution after the cut. Keep at least one channel of "
                f"{branch.group!r}.")
        constants[merge] = c
    return constants


def _dtype(tensor: Any) -> str:
    dtype = getattr(tensor.dtype, "name", tensor.dtype)
    return str(dtype)
