"""Recurrent layers: LSTM, GRU, SimpleRNN, ``RNN`` over their cells, and Bidirectional.

A recurrent layer consumes its input channels through the rows of ``kernel`` (IN) and
produces ``units`` channels. Its gate axis holds ``k`` contiguous copies of the units space
(LSTM: 4 gates i, f, c, o; GRU: 3 gates z, r, h; SimpleRNN: 1), the role :data:`GATES`,
whose layout is the output layout tiled ``k`` times. ``recurrent_kernel`` is
``(units, k * units)``: its rows carry the units (OUT), its columns the gates.

Exactness. ``apply_masks`` zeroes a pruned unit's gate columns (kernel, recurrent kernel,
bias) and its recurrent kernel rows. Its gate pre-activations are then 0 at every step, so
starting from a zero state:

* LSTM: ``c = f * c + i * act(0)`` and ``h = o * act(c)`` stay 0 when ``act(0) = 0``,
  whatever ``recurrent_activation`` is (``f``, ``i``, ``o`` multiply zeros);
* GRU: ``h = z * h + (1 - z) * act(...)``, with ``act(0 + r * 0) = act(0)`` (``reset_after``
  both ways), stays 0 when ``act(0) = 0``;
* SimpleRNN: ``h = act(0)``.

So the units are *clean* when ``activation(0) == 0`` (tanh, relu) and every initial state is
clean; otherwise (``activation="sigmoid"``) the pruned units are not 0 and consumers zero
their input rows, as after any unclean producer. The zeroed recurrent rows keep a pruned
unit from reaching the kept ones either way. Masking (``Embedding(mask_zero=True)``) carries
or zeroes states per step, dropout scales per unit: both keep 0 at 0. ``return_state``
outputs and ``initial_state`` inputs share the units space (an encoder's states feeding a
decoder couple both layers' units into one group).

MACs of one call: ``timesteps * k * units * (features + units)`` (the input and recurrent
matrix products of each step; element-wise gate work is not counted, like activations).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress._keras import bidirectional_shares_units, layer_classes
from tfcompress.pruning.handlers.base import (
    IN,
    OUT,
    Call,
    ChannelHandler,
    Tracer,
    WeightSpec,
    maps_zero_to_zero,
    mixes_channels,
)
from tfcompress.pruning.handlers.registry import handler_for, register_handler
from tfcompress.pruning.layout import KeptFn, Layout, combine_clean, concat

__all__ = ["GATES", "RecurrentHandler", "BidirectionalHandler", "cell_weights", "gate_blocks"]

#: The role of a gate axis: ``k`` contiguous blocks, each the layer's units.
GATES = "gates"

#: Cell classes traced: ``{class: (gate blocks, number of states)}`` (MRO lookup).
_CELLS: Dict[type, Tuple[int, int]] = {
    cls: spec for names, spec in ((("LSTMCell",), (4, 2)), (("GRUCell",), (3, 1)),
                                  (("SimpleRNNCell",), (1, 1)))
    for cls in layer_classes(*names)}


def cell_weights(prefix: str, units: str, gates: str) -> Dict[str, WeightSpec]:
    """The weight table of a recurrent cell at attribute path ``prefix`` whose units have
    role ``units`` and whose gate axes have role ``gates``.

    Example:
      >>> sorted(cell_weights("cell.", OUT, GATES))
      ['cell.bias', 'cell.kernel', 'cell.recurrent_kernel']
    """
    return {
        prefix + "kernel": WeightSpec({0: IN, 1: gates}, zero=gates, consumes=True),
        prefix + "recurrent_kernel": WeightSpec({0: units, 1: gates}, zero=(gates, units)),
        prefix + "bias": WeightSpec({-1: gates}, zero=gates),  # GRU reset_after: (2, 3 * units)
    }


def _cell_spec(layer: Any) -> Optional[Tuple[int, int]]:
    for cls in type(getattr(layer, "cell", None)).__mro__:
        if cls in _CELLS:
            return _CELLS[cls]
    return None


def gate_blocks(layer: Any) -> int:
    """``k``: the gate blocks of a recurrent layer's cell (LSTM 4, GRU 3, SimpleRNN 1)."""
    return _cell_spec(layer)[0]


def _flat(value: Any) -> List[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    return [] if value is None else [value]


def _initial_states(call: Call, tracer: Tracer) -> List[Layout]:
    """The call's initial-state inputs; a sequence mask among the inputs (Keras 3 records the
    mask as an input; tf_keras appends initial states) is blocked: its last axis is time."""
    mask_ids = {id(t) for t in _flat(call.kwargs.get("mask"))}
    ids = list(call.tensor_ids) or [None] * len(call.inputs)
    states = []
    for layout, tensor_id in zip(call.inputs[1:], ids[1:]):
        if tensor_id in mask_ids:
            tracer.block(call, layout, "sequence mask (its last axis is time)")
        else:
            states.append(layout)
    return states


def _clean(layer: Any) -> bool:
    return maps_zero_to_zero(layer.cell.activation)


def _unit_filters(layer: Any) -> np.ndarray:
    """``(units, features)``: each unit's gate columns of kernel, recurrent kernel and bias."""
    k, units = gate_blocks(layer), layer.cell.units
    parts = []
    for name in ("kernel", "recurrent_kernel", "bias"):
        weight = getattr(layer.cell, name, None)
        if weight is not None:
            value = np.asarray(weight).reshape(-1, k, units)  # (rows, gate, unit)
            parts.append(value.transpose(2, 1, 0).reshape(units, -1))
    return np.concatenate(parts, axis=1)


def _recurrent_macs(call: Call, k: int, n_in: int, units: int) -> int:
    steps = call.input_shapes[0][1] if len(call.input_shapes[0]) > 2 else None
    return (steps or 1) * k * units * (n_in + units)


@register_handler(*layer_classes("LSTM", "GRU", "SimpleRNN", "RNN"))
class RecurrentHandler(ChannelHandler):
    """``LSTM``, ``GRU``, ``SimpleRNN`` and ``RNN(LSTMCell | GRUCell | SimpleRNNCell)``.

    Barriers: ``stateful=True`` (state variables hold every unit between batches),
    ``time_major=True``, other cells (custom cells, ``StackedRNNCells``, ``ConvLSTM2D``'s)
    and activations that mix channels.

    Example:
      >>> import keras
      >>> lstm = keras.layers.LSTM(3)
      >>> lstm.build((None, 7, 5))
      >>> RecurrentHandler().filters(lstm).shape  # 4 gates x (5 inputs + 3 units + 1 bias)
      (3, 36)
    """

    weights = cell_weights("cell.", OUT, GATES)
    size_key = "units"
    roles = (IN, OUT, GATES)

    def barrier_reason(self, layer: Any) -> Optional[str]:
        cell = getattr(layer, "cell", None)
        if _cell_spec(layer) is None:
            return (f"recurrent cell {type(cell).__name__} (only LSTM, GRU and SimpleRNN "
                    "cells are traced)")
        if getattr(layer, "stateful", False):
            return "stateful=True (its state variables carry every unit between batches)"
        if getattr(layer, "time_major", False):
            return "time_major=True (only batch-major sequences are traced)"
        for name in ("activation", "recurrent_activation"):
            if mixes_channels(getattr(cell, name, None)):
                return f"{name} {getattr(cell, name).__name__!r} mixes units"
        return None

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        layer = call.layer
        states = _initial_states(call, tracer)
        if len(states) not in (0, _cell_spec(layer)[1]):
            return tracer.opaque(call, f"{len(states)} extra inputs (initial states?)")
        clean = _clean(layer) and all(state.clean for state in states)
        out = tracer.fresh(call, layer.cell.units, clean=clean)
        if states:
            tracer.unify(call, [out] + states)
        return [out] * len(call.output_shapes)

    def role_layout(self, layer: Any, role: str, call: Call) -> Layout:
        if role == GATES:
            return call.outputs[0].tiled(gate_blocks(layer))
        return super().role_layout(layer, role, call)

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        return _unit_filters(layer)

    def edit_config(self, config: Dict[str, Any], layer: Any,
                    positions: Mapping[str, Optional[np.ndarray]]) -> Dict[str, Any]:
        if positions.get(OUT) is None or "units" in config:
            return super().edit_config(config, layer, positions)
        cell = {k: v for k, v in config["cell"].items() if k != "build_config"}  # RNN(cell)
        cell["config"] = dict(cell["config"], units=int(len(positions[OUT])))
        return dict(config, cell=cell)

    def macs(self, call: Call, n_in: int, n_out: int) -> int:
        return _recurrent_macs(call, gate_blocks(call.layer), n_in, n_out)


FORWARD, BACKWARD = "forward", "backward"
_DIRECTIONS = ((FORWARD, "layer", "forward_layer"), (BACKWARD, "backward_layer", "backward_layer"))


def _gates(direction: str) -> str:
    return f"{direction}_{GATES}"


@register_handler(*layer_classes("Bidirectional"))
class BidirectionalHandler(ChannelHandler):
    """``Bidirectional`` over a recurrent layer: two producers of units, ``forward`` and
    ``backward`` (roles of their own, each with its gate role).

    ``merge_mode="concat"`` lays them side by side (two groups), ``None`` returns them as
    two outputs; ``sum``, ``ave`` and ``mul`` add or multiply them unit by unit, so both
    directions keep the same units (one group; ``mul`` is 0 when either is 0). Keras 3
    shapes a Bidirectional from its forward layer alone, so there both directions always
    form one group (``bidirectional_shares_units``).
    ``return_state`` outputs carry each direction's units; ``initial_state`` is a barrier.

    Example:
      >>> from tfcompress.pruning import ChannelGraph
      >>> import keras
      >>> x = keras.Input((6, 4))
      >>> h = keras.layers.Bidirectional(keras.layers.GRU(3), name="bi")(x)
      >>> import tf_keras
      >>> x = tf_keras.Input((6, 4))
      >>> h = tf_keras.layers.Bidirectional(tf_keras.layers.GRU(3), name="bi")(x)
      >>> model = tf_keras.Model(x, tf_keras.layers.Dense(2)(h))
      >>> [g.id for g in ChannelGraph(model).groups if g.prunable]  # forward, backward
      ['bi', 'bi:1']
    """

    weights = {**cell_weights("forward_layer.cell.", FORWARD, _gates(FORWARD)),
               **cell_weights("backward_layer.cell.", BACKWARD, _gates(BACKWARD))}
    roles = (IN, FORWARD, _gates(FORWARD), BACKWARD, _gates(BACKWARD))

    def barrier_reason(self, layer: Any) -> Optional[str]:
        for _, _, attr in _DIRECTIONS:
            sub = getattr(layer, attr)
            if not isinstance(handler_for(sub), RecurrentHandler):
                return f"Bidirectional over {type(sub).__name__} (not a recurrent layer)"
            reason = handler_for(sub).barrier_reason(sub)
            if reason:
                return f"{attr}: {reason}"
        return None

    def propagate(self, call: Call, tracer: Tracer) -> List[Layout]:
        layer = call.layer
        if _initial_states(call, tracer):
            return tracer.opaque(call, "initial_state of a Bidirectional layer")
        fwd, bwd = (tracer.fresh(call, sub.cell.units, clean=_clean(sub), index=i)
                    for i, sub in enumerate((layer.forward_layer, layer.backward_layer)))
        mode = layer.merge_mode
        if mode not in ("concat", None) or bidirectional_shares_units(layer):
            tracer.unify(call, [fwd, bwd])
        if mode == "concat":
            outs = [concat([fwd, bwd])]
        elif mode is None:
            outs = [fwd, bwd]
        else:
            outs = [combine_clean([fwd, bwd], any if mode == "mul" else all)]
        n_states = (len(call.output_shapes) - len(outs)) // 2
        return outs + [fwd] * n_states + [bwd] * n_states

    def _directions(self, call: Call) -> Sequence[Layout]:
        mode, outs = call.layer.merge_mode, call.outputs
        if mode == "concat":
            return [Layout(outs[0].segments[:1]), Layout(outs[0].segments[1:])]
        return [outs[0], outs[1]] if mode is None else [outs[0], outs[0]]

    def role_layout(self, layer: Any, role: str, call: Call) -> Layout:
        for i, (direction, _, attr) in enumerate(_DIRECTIONS):
            if role == direction:
                return self._directions(call)[i]
            if role == _gates(direction):
                return self._directions(call)[i].tiled(gate_blocks(getattr(layer, attr)))
        return super().role_layout(layer, role, call)

    def filters(self, layer: Any, index: int = 0) -> Optional[np.ndarray]:
        return _unit_filters(layer.forward_layer if index == 0 else layer.backward_layer)

    def edit_config(self, config: Dict[str, Any], layer: Any,
                    positions: Mapping[str, Optional[np.ndarray]]) -> Dict[str, Any]:
        config = dict(config)
        if config.get("backward_layer") is None:  # tf_keras: derived from `layer` unless given
            backward = copy.deepcopy(config["layer"])
            backward["config"]["go_backwards"] = not backward["config"].get("go_backwards")
            config["backward_layer"] = backward
        for direction, key, attr in _DIRECTIONS:
            entry = {k: v for k, v in config[key].items() if k != "build_config"}
            sub = getattr(layer, attr)
            entry["config"] = handler_for(sub).edit_config(dict(entry["config"]), sub,
                                                           {OUT: positions.get(direction)})
            config[key] = entry
        return config

    def call_macs(self, call: Call, kept: KeptFn) -> int:
        n_in = len(call.inputs[0].positions(kept))
        return sum(_recurrent_macs(call, gate_blocks(getattr(call.layer, attr)), n_in,
                                   len(layout.positions(kept)))
                   for (_, _, attr), layout in zip(_DIRECTIONS, self._directions(call)))
