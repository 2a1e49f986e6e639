"""tfcompress.convert: tf_keras <-> Keras 3 models with equal outputs, names and classes.

Every check runs the source and the converted model on the same random input and compares
their outputs (relative difference: max |a - b| / max |a|); every source weight is random (the
initializers' zeros and ones replaced too), so an uncopied or misordered weight shows.
"""

import numpy as np
import pytest

from tfcompress import models
from tfcompress._keras import keras, keras3
from tfcompress.convert import to_keras3, to_tf_keras

TOLERANCE = 1e-6
FLAVOURS = {"tf_keras": keras, "keras3": keras3}
CONVERT = {"tf_keras": to_keras3, "keras3": to_tf_keras}  # source flavour -> converter
TARGET = {"tf_keras": keras3, "keras3": keras}


@pytest.fixture(autouse=True)
def _seed():
    """Replaces conftest's ``_seed`` for this module: seeding per test, but clearing both
    Kerases' sessions once per module (clearing takes 0.6 s, and this module builds some
    two hundred small models; converted names are compared with their sources', so the
    counters that clearing resets do not matter)."""
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(autouse=True, scope="module")
def _clear_sessions_once():
    yield
    keras.backend.clear_session()
    keras3.backend.clear_session()


def _merge(name, **kwargs):
    def build(L, x):
        a, b = L.Dense(4, name="left")(x), L.Dense(4, name="right")(x)
        return getattr(L, name)(**kwargs)([a, b])
    return (6,), build


def _one(factory, shape):
    return shape, lambda L, x: factory(L)(x)


#: name -> (input shape, build(layers module, input tensor) -> output tensor)
LAYERS = {
    "Conv1D": _one(lambda L: L.Conv1D(4, 3, padding="same", dilation_rate=2), (9, 3)),
    "Conv2D": _one(lambda L: L.Conv2D(4, 3, strides=2, activation="relu"), (8, 8, 3)),
    "Conv2D_groups": _one(lambda L: L.Conv2D(4, 3, groups=2), (6, 6, 4)),
    "Conv3D": _one(lambda L: L.Conv3D(3, 2, padding="same"), (4, 4, 4, 2)),
    "Conv1DTranspose": _one(lambda L: L.Conv1DTranspose(3, 3, strides=2), (5, 2)),
    "Conv2DTranspose": _one(lambda L: L.Conv2DTranspose(3, 3, strides=2, padding="same"),
                            (5, 5, 2)),
    "Conv3DTranspose": _one(lambda L: L.Conv3DTranspose(2, 2, strides=2), (3, 3, 3, 2)),
    "DepthwiseConv1D": _one(lambda L: L.DepthwiseConv1D(3, depth_multiplier=2), (8, 3)),
    "DepthwiseConv2D": _one(lambda L: L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
    "SeparableConv1D": _one(lambda L: L.SeparableConv1D(4, 3), (8, 3)),
    "SeparableConv2D": _one(lambda L: L.SeparableConv2D(4, 3, padding="same"), (6, 6, 3)),
    "Dense": _one(lambda L: L.Dense(5, activation="tanh", kernel_regularizer="l2"), (6,)),
    "BatchNormalization": _one(lambda L: L.BatchNormalization(epsilon=1e-2), (5, 5, 3)),
    "LayerNormalization": _one(lambda L: L.LayerNormalization(), (4, 6)),
    "GroupNormalization": _one(lambda L: L.GroupNormalization(groups=2), (4, 6)),
    "UnitNormalization": _one(lambda L: L.UnitNormalization(), (6,)),
    "ReLU": _one(lambda L: L.ReLU(max_value=6.0, negative_slope=0.1, threshold=0.2), (6,)),
    "LeakyReLU": _one(lambda L: L.LeakyReLU(), (6,)),
    "PReLU": _one(lambda L: L.PReLU(), (6,)),
    "ELU": _one(lambda L: L.ELU(alpha=0.5), (6,)),
    "Softmax": _one(lambda L: L.Softmax(), (6,)),
    "Activation_swish": _one(lambda L: L.Activation("swish"), (6,)),
    "Activation_gelu": _one(lambda L: L.Activation("gelu"), (6,)),
    "Activation_relu6": _one(lambda L: L.Activation("relu6"), (6,)),
    "MaxPooling1D": _one(lambda L: L.MaxPooling1D(2), (8, 3)),
    "MaxPooling2D": _one(lambda L: L.MaxPooling2D(2, padding="same"), (5, 5, 3)),
    "MaxPooling3D": _one(lambda L: L.MaxPooling3D(2), (4, 4, 4, 2)),
    "AveragePooling1D": _one(lambda L: L.AveragePooling1D(2), (8, 3)),
    "AveragePooling2D": _one(lambda L: L.AveragePooling2D(2, strides=1), (5, 5, 3)),
    "AveragePooling3D": _one(lambda L: L.AveragePooling3D(2), (4, 4, 4, 2)),
    "GlobalAveragePooling2D": _one(lambda L: L.GlobalAveragePooling2D(), (5, 5, 3)),
    "GlobalMaxPooling1D": _one(lambda L: L.GlobalMaxPooling1D(), (8, 3)),
    "ZeroPadding1D": _one(lambda L: L.ZeroPadding1D(2), (8, 3)),
    "ZeroPadding2D": _one(lambda L: L.ZeroPadding2D(((1, 2), (0, 1))), (5, 5, 3)),
    "ZeroPadding3D": _one(lambda L: L.ZeroPadding3D(1), (3, 3, 3, 2)),
    "Cropping1D": _one(lambda L: L.Cropping1D((1, 2)), (8, 3)),
    "Cropping2D": _one(lambda L: L.Cropping2D(((1, 0), (0, 2))), (6, 6, 3)),
    "Cropping3D": _one(lambda L: L.Cropping3D(1), (4, 4, 4, 2)),
    "UpSampling1D": _one(lambda L: L.UpSampling1D(2), (4, 3)),
    "UpSampling2D": _one(lambda L: L.UpSampling2D(2, interpolation="bilinear"), (4, 4, 3)),
    "UpSampling3D": _one(lambda L: L.UpSampling3D(2), (2, 2, 2, 2)),
    "Dropout": _one(lambda L: L.Dropout(0.5, seed=3), (6,)),
    "SpatialDropout2D": _one(lambda L: L.SpatialDropout2D(0.3), (4, 4, 3)),
    "GaussianNoise": _one(lambda L: L.GaussianNoise(0.1), (6,)),
    "Flatten": _one(lambda L: L.Flatten(), (3, 4, 2)),
    "Reshape": _one(lambda L: L.Reshape((4, -1)), (3, 4, 2)),
    "Permute": _one(lambda L: L.Permute((2, 1)), (3, 4)),
    "RepeatVector": _one(lambda L: L.RepeatVector(3), (4,)),
    "Rescaling": _one(lambda L: L.Rescaling(1 / 255.0, offset=-0.5), (6,)),
    "GRU": _one(lambda L: L.GRU(4, return_sequences=True), (5, 3)),
    "LSTM": _one(lambda L: L.LSTM(4), (5, 3)),
    "SimpleRNN": _one(lambda L: L.SimpleRNN(4), (5, 3)),
    "Add": _merge("Add"),
    "Subtract": _merge("Subtract"),
    "Multiply": _merge("Multiply"),
    "Average": _merge("Average"),
    "Maximum": _merge("Maximum"),
    "Minimum": _merge("Minimum"),
    "Concatenate": _merge("Concatenate", axis=-1),
    "Dot": _merge("Dot", axes=1),
    "Bidirectional": _one(lambda L: L.Bidirectional(L.LSTM(3, return_sequences=True)), (5, 2)),
    "TimeDistributed": _one(lambda L: L.TimeDistributed(L.Dense(3)), (5, 2)),
    "MultiHeadAttention": ((5, 4), lambda L, x: L.MultiHeadAttention(2, 3)(x, x)),
    "Attention": ((5, 4), lambda L, x: L.Attention()([x, x])),
    "EinsumDense": _one(lambda L: L.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c"),
                        (4,)),
    "Normalization": _one(lambda L: L.Normalization(mean=[1.0, 2.0], variance=[1.0, 4.0]),
                          (2,)),
    "Masking_GRU": _one(lambda L: lambda x: L.GRU(3)(L.Masking(0.0)(x)), (5, 2)),
}


def _randomize(model, seed=0):
    """Every weight random and unlike a fresh layer's: kernels keep their (random) initial
    values, constant ones (biases, BatchNorm's gamma, beta, mean and variance) become random
    at the scale of a trained network (ones near 1, zeros near 0). Scales matter: with
    unit-variance kernels a 50-layer network's activations grow by orders of magnitude and
    the two Kerases' BatchNorm formulas (each within 1e-7) drift apart by ~1e-5."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for value in layer.get_weights():
            if value.size and np.all(value == value.flat[0]):
                centre = 1.0 if value.flat[0] == 1.0 else 0.0
                value = centre + rng.uniform(-0.4, 0.4, value.shape) if centre else (
                    rng.normal(0.0, 0.2, value.shape))
            values.append(np.asarray(value, np.float32))
        layer.set_weights(values)
    return model


def _relative_difference(source, converted, inputs):
    expected = np.asarray(source(inputs, training=False))
    actual = np.asarray(converted(inputs, training=False))
    assert expected.shape == actual.shape
    return float(np.max(np.abs(expected - actual)) / max(np.max(np.abs(expected)), 1e-12))


def _random_input(shape, seed=1):
    return np.random.default_rng(seed).normal(size=(2,) + tuple(shape)).astype(np.float32)


def _check(source, converted, flavour, shape):
    """``converted`` is the other flavour's model of the same class, names and outputs."""
    assert isinstance(converted, TARGET[flavour].Model)
    assert type(converted).__name__ == type(source).__name__ or (
        {type(converted).__name__, type(source).__name__} <= {"Functional", "Model"})
    assert converted.name == source.name
    assert [layer.name for layer in converted.layers] == [layer.name for layer in source.layers]
    assert tuple(converted.output_shape) == tuple(source.output_shape)
    difference = _relative_difference(source, converted, _random_input(shape))
    assert difference <= TOLERANCE, difference
    return difference


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_converts_with_equal_outputs(name, flavour):
    shape, build = LAYERS[name]
    k = FLAVOURS[flavour]
    inputs = k.Input(shape, name="x")
    source = _randomize(k.Model(inputs, build(k.layers, inputs), name=f"m_{name}"))
    converted = CONVERT[flavour](source)
    assert _check(source, converted, flavour, shape) <= TOLERANCE


def _sequential(k):
    return k.Sequential([k.Input((6, 6, 2), name="image"), k.layers.Conv2D(3, 3, name="conv"),
                         k.layers.BatchNormalization(name="bn"), k.layers.Flatten(name="flat"),
                         k.layers.Dense(4, name="logits")], name="seq")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_sequential_stays_sequential(flavour):
    source = _randomize(_sequential(FLAVOURS[flavour]))
    converted = CONVERT[flavour](source)
    assert type(converted) is TARGET[flavour].Sequential
    assert [layer.name for layer in converted.layers] == ["conv", "bn", "flat", "logits"]
    _check(source, converted, flavour, (6, 6, 2))


def _nested_and_shared(k):
    """A Functional block used twice (a nested model shared) and a Dense called twice."""
    block_in = k.Input((5,), name="block_in")
    block = k.Model(block_in, k.layers.Dense(5, activation="relu", name="inner")(block_in),
                    name="block")
    shared = k.layers.Dense(5, name="shared")
    inputs = k.Input((5,), name="x")
    a = shared(block(inputs))
    b = shared(block(k.layers.Dense(5, name="pre")(inputs)))
    outputs = k.layers.Concatenate(name="cat")([a, b])
    return k.Model(inputs, outputs, name="outer")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_nested_models_and_shared_layers(flavour):
    source = _randomize(_nested_and_shared(FLAVOURS[flavour]))
    converted = CONVERT[flavour](source)
    _check(source, converted, flavour, (5,))
    block = converted.get_layer("block")
    assert isinstance(block, TARGET[flavour].Model)
    assert [layer.name for layer in block.layers] == ["block_in", "inner"]
    assert len(converted.get_layer("shared").weights) == 2  # one layer, called twice


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_multiple_inputs_and_outputs_keep_names_and_order(flavour):
    k = FLAVOURS[flavour]
    a, b = k.Input((3,), name="a"), k.Input((4,), name="b")
    merged = k.layers.Concatenate(name="cat")([a, b])
    source = _randomize(k.Model([a, b], [k.layers.Dense(2, name="out1")(merged),
                                         k.layers.Dense(1, name="out2")(merged)], name="two"))
    converted = CONVERT[flavour](source)
    assert [t.shape[-1] for t in converted.inputs] == [3, 4]
    assert [layer.name for layer in converted.layers] == ["a", "b", "cat", "out1", "out2"]
    x = [_random_input((3,)), _random_input((4,), seed=2)]
    for expected, actual in zip(source(x), converted(x)):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_residual_cnn(flavour):
    source = _randomize(models.residual_cnn(width=8, flavour=flavour))
    assert _check(source, CONVERT[flavour](source), flavour, (16, 16, 1)) <= TOLERANCE


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_round_trip_returns_an_equal_model_of_the_source_flavour(flavour):
    source = _randomize(models.residual_cnn(width=8, flavour=flavour))
    other = {"tf_keras": "keras3", "keras3": "tf_keras"}[flavour]
    back = CONVERT[other](CONVERT[flavour](source))
    _check(source, back, other, (16, 16, 1))  # back is of the flavour ``other`` converts to
    assert len(back.weights) == len(source.weights)
    for old, new in zip(source.weights, back.weights):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))  # copied exactly
    x = _random_input((16, 16, 1))
    np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(source(x)))


def _application(k, name):
    """Logits, not softmax: random weights saturate a softmax and hide differences."""
    options = dict(input_shape=(32, 32, 3), weights=None, classes=10,
                   classifier_activation=None)
    if name == "MobileNetV2":
        return k.applications.MobileNetV2(alpha=0.35, **options)
    return k.applications.ResNet50(**options)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("name", ["MobileNetV2", pytest.param("ResNet50", marks=pytest.mark.slow)])
def test_applications(name, flavour):
    source = _randomize(_application(FLAVOURS[flavour], name))
    assert _check(source, CONVERT[flavour](source), flavour, (32, 32, 3)) <= TOLERANCE


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_a_model_of_the_target_flavour_is_returned_unchanged(flavour):
    model = _sequential(FLAVOURS[flavour])
    same = {"tf_keras": to_tf_keras, "keras3": to_keras3}[flavour]
    assert same(model) is model


def test_keras_ops_merges_become_tf_keras_merge_layers():
    inputs = keras3.Input((4,), name="x")
    a, b = keras3.layers.Dense(4, name="a")(inputs), keras3.layers.Dense(4, name="b")(inputs)
    total = keras3.ops.add(a, b)
    product = keras3.ops.multiply(total, a)
    joined = keras3.ops.concatenate([product, b], axis=-1)
    source = _randomize(keras3.Model(inputs, keras3.layers.Dense(2, name="out")(joined)))
    converted = to_tf_keras(source)
    kinds = {type(layer).__name__ for layer in converted.layers}
    assert {"Add", "Multiply", "Concatenate"} <= kinds
    x = _random_input((4,))
    np.testing.assert_allclose(converted(x), source(x), rtol=0, atol=1e-5)


def _refusal(convert, model):
    with pytest.raises(ValueError) as caught:
        convert(model)
    assert caught.value.__context__ is None  # our own error, not one from inside Keras
    return str(caught.value)


def test_keras3_layers_without_tf_keras_equivalent_are_all_named():
    class Scale(keras3.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inputs = keras3.Input((4,), name="x")
    x = keras3.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inputs)
    x = Scale(name="my_scale")(x)
    x = keras3.ops.sin(x)
    x = keras3.layers.Activation("hard_sigmoid", name="hard")(x)
    x = keras3.layers.Dense(3, lora_rank=2, name="lora_dense")(x)
    x = keras3.layers.Dense(3, name="fine")(x)
    message = _refusal(to_tf_keras, keras3.Model(inputs, x, name="bad"))
    assert "5 layer(s)" in message
    assert "'plus_one' (Lambda)" in message and "Python code" in message
    assert "'my_scale' (Scale)" in message and "custom class" in message
    assert "(Sin)" in message and "keras.ops" in message
    assert "'hard'" in message and "hard_sigmoid" in message
    assert "'lora_dense'" in message and "lora_rank=2" in message
    assert "'fine'" not in message


def test_tf_keras_layers_without_keras3_equivalent_are_all_named():
    class Scale(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inputs = keras.Input((4,), name="x")
    x = keras.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inputs)
    x = Scale(name="my_scale")(x)
    x = x * 2.0
    x = keras.layers.ThresholdedReLU(0.5, name="thresholded")(x)
    x = keras.layers.Dense(3, name="fine")(x)
    message = _refusal(to_keras3, keras.Model(inputs, x, name="bad"))
    assert "4 layer(s)" in message
    assert "'plus_one' (Lambda)" in message and "Python code" in message
    assert "'my_scale' (Scale)" in message and "custom class" in message
    assert "'tf.math.multiply' (TFOpLambda)" in message and "x * 2.0" in message
    assert "'thresholded' (ThresholdedReLU)" in message and "no keras3 equivalent" in message
    assert "'fine'" not in message


def test_a_layer_inside_a_nested_model_is_named_with_its_path():
    inner_in = keras.Input((4,), name="inner_in")
    inner = keras.Model(inner_in, keras.layers.Lambda(lambda t: t, name="lam")(inner_in),
                        name="inner")
    inputs = keras.Input((4,), name="x")
    message = _refusal(to_keras3, keras.Model(inputs, inner(inputs), name="outer"))
    assert "outer/inner/'lam' (Lambda)" in message


def test_a_subclassed_model_is_refused():
    class Net(keras3.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras3.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed"):
        to_tf_keras(net)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_embedding_with_a_propagated_mask(flavour):
    """Keras 3 records the mask as ``keras.ops`` nodes and a ``mask=`` argument; tf_keras
    propagates it itself. Padded steps (zeros) must still be skipped after conversion."""
    k = FLAVOURS[flavour]
    inputs = k.Input((5,), dtype="int32", name="tokens")
    x = k.layers.Embedding(10, 3, mask_zero=True, name="embed")(inputs)
    source = _randomize(k.Model(inputs, k.layers.LSTM(4, name="lstm")(x), name="masked"))
    converted = CONVERT[flavour](source)
    tokens = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 0]], np.int32)
    assert _relative_difference(source, converted, tokens) <= TOLERANCE
    unmasked = np.asarray(converted(np.where(tokens == 0, 7, tokens)))
    assert np.max(np.abs(unmasked - np.asarray(converted(tokens)))) > 1e-3  # mask matters


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_dropout_still_drops_when_training(flavour):
    """Keras 3 records ``training=False`` on Dropout's call; it must not freeze Dropout."""
    k = FLAVOURS[flavour]
    inputs = k.Input((200,), name="x")
    source = k.Model(inputs, k.layers.Dropout(0.5, name="drop")(inputs))
    converted = CONVERT[flavour](source)
    ones = np.ones((1, 200), np.float32)
    assert np.array_equal(np.asarray(converted(ones, training=False)), ones)
    assert np.mean(np.asarray(converted(ones, training=True)) == 0.0) > 0.2
