"""Property tests: random small architectures stay exact after masking and rebuilding."""

from _exactness import check_pruned
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcompress._keras import FLAVOURS

BLOCKS = ["conv", "bn_relu", "depthwise", "grouped", "residual", "concat", "se", "pool",
          "hard_swish", "sigmoid"]


@st.composite
def architectures(draw):
    """A random channels-last CNN: a list of blocks and a head."""
    blocks = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=7))
    widths = draw(st.lists(st.sampled_from([4, 6, 8]), min_size=len(blocks) + 1,
                           max_size=len(blocks) + 1))
    multipliers = draw(st.lists(st.sampled_from([1, 2]), min_size=len(blocks),
                                max_size=len(blocks)))
    head = draw(st.sampled_from(["gap", "flatten", "conv"]))
    return blocks, widths, multipliers, head


def build(K, blocks, widths, multipliers, head):
    """The architecture in the Keras module ``K`` (``x * y`` is a TFOpLambda in tf_keras, a
    keras.ops node in Keras 3)."""
    L = K.layers
    inputs = K.Input((8, 8, 3))
    h = L.Conv2D(widths[0], 3, padding="same")(inputs)
    for block, width, multiplier in zip(blocks, widths[1:], multipliers):
        channels = h.shape[-1]
        if block == "conv":
            h = L.Conv2D(width, 3, padding="same", activation="relu")(h)
        elif block == "bn_relu":
            h = L.ReLU()(L.BatchNormalization()(h))
        elif block == "depthwise":
            h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier)(h)
        elif block == "grouped" and channels % 2 == 0:
            h = L.Conv2D(width, 3, padding="same", groups=2)(h)
        elif block == "residual":
            h = L.Add()([h, L.Conv2D(channels, 1)(h)])
        elif block == "concat":
            h = L.Concatenate()([h, L.Conv2D(width, 1, activation="relu")(h)])
        elif block == "se":
            s = L.GlobalAveragePooling2D(keepdims=True)(h)
            s = L.Conv2D(2, 1, activation="relu")(s)
            h = L.Multiply()([h, L.Conv2D(channels, 1, activation="sigmoid")(s)])
        elif block == "pool" and h.shape[1] > 2:
            h = L.MaxPooling2D()(h)
        elif block == "hard_swish":
            h = h * L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)
        elif block == "sigmoid":
            h = L.Activation("sigmoid")(h)
    if head == "gap":
        h = L.GlobalAveragePooling2D()(h)
    elif head == "flatten":
        h = L.Flatten()(h)
    else:
        return K.Model(inputs, L.Conv2D(2, 1)(h))
    return K.Model(inputs, L.Dense(3)(h))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(architectures(), st.sampled_from([0.2, 0.5, 0.7]), st.sampled_from(["fpgm", "l1"]),
       st.sampled_from(FLAVOURS))
def test_random_architectures_are_exact(arch, ratio, criterion, flavour):
    model = build(flavour.module, *arch)
    stats = check_pruned(model, ratio, tflite=False, expect_change=False, criterion=criterion)
    assert stats["params_kept"] <= 1.0 and stats["macs_kept"] <= 1.0
    assert stats["error"] <= 1e-4
