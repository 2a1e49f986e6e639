"""Fuzzing: generated architectures through fpgm_masks -> rebuild -> to_tflite stay exact;
malformed masks documents are rejected with ValueError only."""

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcompress import export, pruning
from tfcompress._keras import keras

L = keras.layers
BLOCKS = ("conv", "bn_relu", "depthwise", "residual", "concat", "pool", "separable", "dense_head")


@st.composite
def architectures(draw):
    blocks = draw(st.lists(st.sampled_from(BLOCKS[:-1]), min_size=1, max_size=5))
    widths = draw(st.lists(st.sampled_from([3, 4, 6]), min_size=len(blocks) + 1,
                           max_size=len(blocks) + 1))
    head = draw(st.sampled_from(["gap", "flatten", "dense_head"]))
    ratio = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    criterion = draw(st.sampled_from(sorted(pruning.CRITERIA)))
    return blocks, widths, head, ratio, criterion


def build(blocks, widths, head):
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(widths[0], 3, padding="same", activation="relu")(inputs)
    for block, width in zip(blocks, widths[1:]):
        if block == "conv":
            h = L.Conv2D(width, 3, padding="same")(h)
        elif block == "bn_relu":
            h = L.ReLU()(L.BatchNormalization()(h))
        elif block == "depthwise":
            h = L.DepthwiseConv2D(3, padding="same")(h)
        elif block == "residual":
            h = L.Add()([h, L.Conv2D(h.shape[-1], 1)(h)])
        elif block == "concat":
            h = L.Concatenate()([h, L.Conv2D(width, 1, activation="relu")(h)])
        elif block == "pool" and h.shape[1] > 2:
            h = L.MaxPooling2D()(h)
        elif block == "separable":
            h = L.SeparableConv2D(width, 3, padding="same")(h)
    if head == "flatten":
        h = L.Flatten()(h)
    else:
        h = L.GlobalAveragePooling2D()(h)
    if head == "dense_head":
        h = L.Dense(5, activation="relu")(h)
    return keras.Model(inputs, L.Dense(3)(h))


def _randomize(model, rng):
    """Random weights everywhere (BatchNorm statistics too), so no channel is trivially zero."""
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in v.name
                       else rng.normal(0.0, 0.5, w.shape)
                       for v, w in zip(model.weights, model.get_weights())])


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(architectures())
def test_generated_models_prune_rebuild_and_export_exactly(tmp_path, arch):
    blocks, widths, head, ratio, criterion = arch
    rng = np.random.default_rng(len(blocks))
    model = build(blocks, widths, head)
    _randomize(model, rng)
    x = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)

    masks = pruning.fpgm_masks(model, ratio, criterion=criterion)
    assert pruning.Masks.from_json(masks.to_json()) == masks
    pruning.apply_masks(model, masks)
    slim = pruning.rebuild(model, masks)
    expected = model.predict(x, verbose=0)
    rebuilt = slim.predict(x, verbose=0)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(rebuilt, expected, atol=1e-4 * scale)
    assert pruning.count_params(slim) <= pruning.count_params(model)
    if ratio >= 0.5 and masks.kept:
        assert pruning.count_macs(slim) < pruning.count_macs(model)

    path = export.to_tflite(slim, tmp_path / "slim.tflite", quantize=None)
    np.testing.assert_allclose(export.litert.run(path, x), rebuilt, atol=1e-4 * scale)
    keras.backend.clear_session()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children,
                                                                      max_size=4),
    max_leaves=12)
_FIELDS = ("id", "size", "kept", "layers", "barriers")


@st.composite
def damaged_documents(draw):
    """A valid masks document with one field of one group replaced by arbitrary JSON."""
    groups = [{"id": "a", "size": 4, "layers": ["c1"], "kept": [0, 2]},
              {"id": "b", "size": 3, "layers": ["c2"], "barriers": [["c2", "model output"]]}]
    group = groups[draw(st.integers(0, 1))]
    field = draw(st.sampled_from(_FIELDS + ("groups", "format", "version")))
    value = draw(_JSON)
    document = {"format": "tfcompress.pruning.Masks", "version": 1, "groups": groups}
    if field in ("groups", "format", "version"):
        document[field] = value
    elif draw(st.booleans()):
        group[field] = value
    else:
        group.pop(field, None)
    return json.dumps(document)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(damaged_documents(), _JSON.map(json.dumps), st.text(max_size=30)))
def test_masks_documents_load_or_raise_value_error(text):
    try:
        masks = pruning.Masks.from_json(text)
    except ValueError as error:
        assert str(error)  # a message, never a bare KeyError/TypeError from the parser
        return
    assert pruning.Masks.from_json(masks.to_json()) == masks  # what loads round-trips
