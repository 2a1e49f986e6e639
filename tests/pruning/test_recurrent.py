"""Recurrent layers: the channels feeding them and their own units are pruned exactly.

Expected shapes and counts are derived by hand from the layers' equations (LSTM: 4 gate
blocks, GRU: 3, SimpleRNN: 1) and from ``keep_count`` (ceil(0.7 * n) channels survive 0.3).
"""

import numpy as np
import pytest
from _exactness import check_pruned

from tfcompress.pruning import (
    ChannelGraph,
    Masks,
    apply_masks,
    count_macs,
    count_params,
    graph_macs,
    graph_params,
    rebuild,
    select_masks,
)
from tfcompress.pruning.handlers import handler_for


def conv_lstm(K):
    """Conv1D(8) -> LSTM(6) -> Dense: both groups feed or are the LSTM."""
    x = K.Input((6, 2))
    h = K.layers.Conv1D(8, 3, padding="same", name="conv")(x)
    return K.Model(x, K.layers.Dense(3)(K.layers.LSTM(6, name="rnn")(h)))


def embedding_gru(K, reset_after=True):
    """Embedding(mask_zero) -> GRU -> Dense (token ids as inputs, 0 = padding)."""
    x = K.Input((7,), dtype="int32")
    h = K.layers.Embedding(20, 8, mask_zero=True, name="conv")(x)
    h = K.layers.GRU(6, reset_after=reset_after, name="rnn")(h)
    return K.Model(x, K.layers.Dense(3)(h))


def simple_rnn_text(K):
    """A text classifier: Embedding -> SimpleRNN(relu, sequences, backwards) -> pooling."""
    x = K.Input((7,), dtype="int32")
    h = K.layers.Embedding(20, 8, name="conv")(x)
    h = K.layers.SimpleRNN(6, activation="relu", return_sequences=True, go_backwards=True,
                           name="rnn")(h)
    return K.Model(x, K.layers.Dense(3)(K.layers.GlobalMaxPooling1D()(h)))


def crnn(K):
    """Conv2D -> Reshape(columns, rows * channels) -> Bidirectional(LSTM, concat) -> Dense."""
    x = K.Input((6, 8, 1))
    h = K.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    h = K.layers.Reshape((6, 64))(h)  # rows become time, channel c at position p * 8 + c
    h = K.layers.Bidirectional(K.layers.LSTM(6), name="rnn")(h)
    return K.Model(x, K.layers.Dense(3)(h))


def bidirectional(K, merge_mode="sum", return_state=False):
    """Conv1D(8) -> Bidirectional(GRU(6)) -> Dense over every output."""
    x = K.Input((6, 2))
    h = K.layers.Conv1D(8, 3, padding="same", name="conv")(x)
    outs = K.layers.Bidirectional(K.layers.GRU(6, return_state=return_state),
                                  merge_mode=merge_mode, name="rnn")(h)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    h = K.layers.Concatenate()(outs) if len(outs) > 1 else outs[0]
    return K.Model(x, K.layers.Dense(3, name="head")(h))


def _tokens(model):
    """Token ids 1..19 with trailing padding (0), or None for float inputs."""
    if "int" not in str(model.inputs[0].dtype):
        return None
    x = np.random.default_rng(0).integers(1, 20, (3,) + tuple(model.input_shape[1:]))
    x[1, 4:] = 0
    return x


#: model factory -> (units of each direction's slim layer, its kernel rows) at ratio 0.3.
#: 8 input channels keep ceil(5.6) = 6 (64 Reshape features: 6 at each of 8 positions = 48),
#: 6 units keep ceil(4.2) = 5.
CASES = {
    "conv_lstm": (conv_lstm, 5, 6),
    "embedding_gru_reset_after": (embedding_gru, 5, 6),
    "embedding_gru_reset_before": (lambda K: embedding_gru(K, reset_after=False), 5, 6),
    "simple_rnn_text": (simple_rnn_text, 5, 6),
    "crnn": (crnn, 5, 48),
    "bidirectional_sum": (bidirectional, 5, 6),
    "bidirectional_return_state": (lambda K: bidirectional(K, "concat", True), 5, 6),
}
#: Cases whose layer configuration a row of test_handlers.py already checks for exactness
#: (GRU with reset_after=False, SimpleRNN with relu, Bidirectional with sum).
SLOW = {"embedding_gru_reset_before", "simple_rnn_text", "bidirectional_sum"}


def _cells(layer):
    """The cells of a recurrent layer (both directions of a Bidirectional)."""
    if hasattr(layer, "forward_layer"):
        return [layer.forward_layer.cell, layer.backward_layer.cell]
    return [layer.cell]


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.slow] * (case in SLOW))
                                  for case in CASES])
def test_recurrent_models_prune_exactly(flavour, case):
    factory, units, rows = CASES[case]
    model = factory(flavour.module)
    graph = ChannelGraph(model)
    assert graph.group("conv").prunable and graph.group("rnn").prunable, graph.barriers
    masks = select_masks(graph, 0.3)
    assert Masks.from_json(masks.to_json()) == masks

    kept = {}
    stats = check_pruned(model, 0.3, tflite=False, x=_tokens(model), keep=kept)
    assert stats["macs_kept"] < 1 and stats["params_kept"] < 1
    slim = kept["slim"]
    for old, new in zip(_cells(model.get_layer("rnn")), _cells(slim.get_layer("rnn"))):
        k = old.kernel.shape[1] // old.units  # gate blocks: 4, 3 or 1
        assert new.units == units
        assert new.kernel.shape == (rows, k * units)
        assert new.recurrent_kernel.shape == (units, k * units)


def test_pruned_units_of_a_tanh_lstm_are_exactly_zero(flavour):
    """tanh(0) = 0: a pruned unit's state never leaves 0 (see the handler's docstring)."""
    K = flavour.module
    model = conv_lstm(K)
    probe = K.Model(model.inputs, model.get_layer("rnn").output)
    graph = ChannelGraph(model)
    assert graph.records["rnn"].calls[0].outputs[0].clean
    masks = Masks({"rnn": [0, 2, 3]}, sizes={g.id: g.size for g in graph.groups})
    apply_masks(model, masks)
    h = np.asarray(probe(np.random.default_rng(0).normal(size=(2, 6, 2)).astype("f")))
    assert np.all(h[:, [1, 4, 5]] == 0) and np.all(h[:, [0, 2, 3]] != 0)


def test_sigmoid_units_are_not_clean_and_consumers_zero_them(flavour):
    """sigmoid(0) = 0.5: the pruned units are not 0, so the next Dense drops their rows."""
    K = flavour.module
    x = K.Input((6, 2))
    h = K.layers.LSTM(6, activation="sigmoid", name="rnn")(K.layers.Dense(4)(x))
    model = K.Model(x, K.layers.Dense(3, name="head")(h))
    probe = K.Model(x, h)
    graph = ChannelGraph(model)
    assert not graph.records["rnn"].calls[0].outputs[0].clean
    apply_masks(model, Masks({"rnn": [0, 1, 2]}, sizes={g.id: g.size for g in graph.groups}))
    h = np.asarray(probe(np.ones((1, 6, 2), "f")))
    assert np.all(h[:, 3:] != 0)  # o * sigmoid(c): not 0
    head = model.get_layer("head").kernel.numpy()
    assert np.all(head[3:] == 0) and np.all(head[:3] != 0)
    check_pruned(model, 0.3, tflite=False)


def test_bidirectional_directions_with_concat(flavour):
    """tf_keras: forward and backward units are two groups, and the rebuilt config sets both
    units. Keras 3 derives the output shape from the forward layer (``concat``: twice its
    units), so there the directions are one group, pruned alike."""
    model = bidirectional(flavour.module, merge_mode="concat")
    graph = ChannelGraph(model)
    sizes = {g.id: g.size for g in graph.groups}
    if flavour.is_keras3:
        assert graph.group("rnn").producer_indices == (0, 1) and "rnn:1" not in sizes
        masks, units = Masks({"rnn": [1, 4]}, sizes=sizes), (2, 2)
    else:
        assert graph.group("rnn").producers == ("rnn",)
        assert graph.group("rnn:1").producer_indices == (1,)
        masks, units = Masks({"rnn": [1, 4], "rnn:1": [0, 2, 3, 5]}, sizes=sizes), (2, 4)
    slim = rebuild(model, masks)
    layer = slim.get_layer("rnn")
    assert (layer.forward_layer.cell.units, layer.backward_layer.cell.units) == units
    assert slim.get_layer("head").kernel.shape == (sum(units), 3)  # concatenated
    x = np.random.default_rng(0).normal(size=(2, 6, 2)).astype("f")
    apply_masks(model, masks)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(slim(x)), rtol=1e-5, atol=1e-6)


def test_bidirectional_sum_couples_the_directions(flavour):
    graph = ChannelGraph(bidirectional(flavour.module, merge_mode="sum"))
    group = graph.group("rnn")
    assert group.producers == ("rnn", "rnn") and group.producer_indices == (0, 1)
    # filters of both directions side by side: 3 gates x (8 inputs + 6 units + 2 biases)
    assert graph.filters(group).shape == (6, 2 * 3 * (8 + 6 + 2))
    # MACs: Conv1D 6 steps x 3 taps x 2 x 8, two GRUs of 6 steps x 3 gates x 6 x (8 + 6)
    assert graph_macs(graph) == 6 * 3 * 2 * 8 + 2 * 6 * 3 * 6 * (8 + 6) + 6 * 3
    masks = Masks({"conv": [0, 1, 2, 3, 7], "rnn": [0, 1, 2, 5]},
                  sizes={g.id: g.size for g in graph.groups})
    assert graph_macs(graph, masks) == 6 * 3 * 2 * 5 + 2 * 6 * 3 * 4 * (5 + 4) + 4 * 3


def test_encoder_states_couple_the_decoder_units(flavour):
    """An encoder's [h, c] as the decoder's initial state: one group over both layers;
    dropout and unrolling do not change what inference computes."""
    K = flavour.module
    x = K.Input((6, 2))
    h = K.layers.Conv1D(8, 3, padding="same", name="conv")(x)
    _, *states = K.layers.LSTM(6, return_state=True, name="enc")(h)
    h = K.layers.LSTM(6, dropout=0.2, recurrent_dropout=0.2, unroll=True, name="dec")(
        h, initial_state=states)
    model = K.Model(x, K.layers.Dense(3)(h))
    graph = ChannelGraph(model)
    assert graph.group("enc").producers == ("enc", "dec") and graph.group("enc").prunable
    check_pruned(model, 0.3, tflite=False)


def test_macs_and_params_by_hand(flavour):
    """Dense(5) -> LSTM(3) -> Dense(2) over 7 steps: per step an LSTM does x @ W (5 x 12)
    and h @ U (3 x 12), i.e. 4 * 3 * (5 + 3) = 96 MACs."""
    K = flavour.module
    x = K.Input((7, 2))
    h = K.layers.LSTM(3, name="rnn")(K.layers.Dense(5, name="d")(x))
    model = K.Model(x, K.layers.Dense(2, name="head")(h))
    assert count_macs(model) == 7 * 2 * 5 + 7 * 96 + 3 * 2
    graph = ChannelGraph(model)
    masks = Masks({"d": [0, 1, 2, 4], "rnn": [0, 2]}, sizes={g.id: g.size for g in graph.groups})
    assert graph_macs(graph, masks) == 7 * 2 * 4 + 7 * 4 * 2 * (4 + 2) + 2 * 2
    rnn_params = (4 + 2) * 4 * 2 + 4 * 2  # kernel and recurrent kernel rows, bias
    assert graph_params(graph, masks) == (2 * 4 + 4) + rnn_params + (2 * 2 + 2)
    assert count_params(rebuild(model, masks)) == graph_params(graph, masks)


def test_filters_hold_each_units_gate_columns(flavour):
    """FPGM's view of unit u: every weight in a column u + g * units (g = gate), found here
    by strided slicing instead of the handler's reshape."""
    model = embedding_gru(flavour.module)
    layer = model.get_layer("rnn")
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=w.shape).astype("f") for w in layer.get_weights()])
    filters = handler_for(layer).filters(layer)
    cell, units = layer.cell, 6
    for u in range(units):
        expected = np.concatenate([np.asarray(w)[..., u::units].ravel() for w in
                                   (cell.kernel, cell.recurrent_kernel, cell.bias)])
        np.testing.assert_array_equal(np.sort(filters[u]), np.sort(expected))


def test_unsupported_recurrent_configurations_are_named_barriers(flavour):
    K = flavour.module
    L = K.layers

    class Cell(L.Layer):
        state_size = output_size = 4

        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1], 4), name="kernel")

        def call(self, x, states):
            h = x @ self.kernel + states[0]
            return h, [h]

    x = K.Input((6, 2), batch_size=2)
    h = L.Dense(8, name="d")(x)
    layers = {
        "stateful": L.LSTM(4, stateful=True),
        "custom": L.RNN(Cell()),
        "stacked": L.RNN([L.GRUCell(4), L.GRUCell(4)]),
        "softmax": L.SimpleRNN(4, activation="softmax"),
        "bidi": L.Bidirectional(L.GRU(4, stateful=True)),
    }
    outs = [L.Dense(2)(layer(h)) for layer in layers.values()]
    graph = ChannelGraph(K.Model(x, outs))
    reasons = {name: graph.records[layer.name].barrier for name, layer in layers.items()}
    assert reasons == {
        "stateful": "stateful=True (its state variables carry every unit between batches)",
        "custom": "recurrent cell Cell (only LSTM, GRU and SimpleRNN cells are traced)",
        "stacked": "recurrent cell StackedRNNCells (only LSTM, GRU and SimpleRNN cells are "
                   "traced)",
        "softmax": "activation 'softmax' mixes units",
        "bidi": "forward_layer: stateful=True (its state variables carry every unit between "
                "batches)",
    }
    assert not graph.group("d").prunable
