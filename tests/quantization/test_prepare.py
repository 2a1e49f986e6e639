"""BatchNorm folding and separable-conv splitting are exact rewrites, in both Kerases."""

import numpy as np
import pytest

from tfcompress.quantization import fold_batch_norms, prepare_for_qat, split_separable_convs


def _randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                               if "variance" in w.name or "gamma" in w.name
                               else rng.normal(size=w.shape).astype(np.float32)
                               for w in layer.weights])
    return model


PRODUCERS = {
    "conv2d": lambda L: L.Conv2D(6, 3, padding="same"),
    "conv2d_no_bias": lambda L: L.Conv2D(6, 3, use_bias=False),
    "depthwise": lambda L: L.DepthwiseConv2D(3, depth_multiplier=2),
    "conv1d": None,
    "dense": lambda L: L.Dense(5),
}


def _is_bn(layer):
    return type(layer).__name__ == "BatchNormalization"


@pytest.mark.parametrize("kind", [k for k, v in PRODUCERS.items() if v])
def test_fold_is_exact_and_removes_the_batch_norm(kind, flavour):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((8, 8, 3)) if kind != "dense" else keras.Input((7,))
    x = PRODUCERS[kind](L)(inputs)
    x = L.BatchNormalization()(x)
    outputs = L.ReLU()(x)
    model = _randomize_batch_norms(keras.Model(inputs, outputs))
    folded = fold_batch_norms(model)
    assert type(folded) is type(model) and not any(_is_bn(layer) for layer in folded.layers)
    data = np.random.default_rng(1).normal(size=(4,) + model.input_shape[1:]).astype(np.float32)
    np.testing.assert_allclose(folded(data), model(data), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch_norm", ["keep", "fold"])
def test_prepare_keeps_the_batch_norms_the_converter_folds(flavour, batch_norm):
    """``keep``: BatchNorms after Conv2D/DepthwiseConv2D stay (per-channel kernels, which the
    converter folds exactly); the one after the Dense (per-tensor kernel) is folded. Both
    rewrites compute what the model computes."""
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn_conv")(L.Conv2D(4, 3, name="conv")(inputs)))
    x = L.BatchNormalization(name="bn_dw")(L.DepthwiseConv2D(3, name="dw")(x))
    x = L.Dense(5, name="dense")(L.Flatten()(x))
    model = _randomize_batch_norms(keras.Model(inputs, L.BatchNormalization(name="bn_fc")(x)))
    prepared = prepare_for_qat(model, batch_norm=batch_norm)
    kept = {layer.name for layer in prepared.layers if _is_bn(layer)}
    assert kept == ({"bn_conv", "bn_dw"} if batch_norm == "keep" else set())
    data = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(prepared(data), model(data), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="batch_norm"):
        prepare_for_qat(model, batch_norm="train")


def test_batch_norm_after_a_shared_output_is_kept(flavour):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((8, 8, 3))
    conv = L.Conv2D(4, 3)(inputs)
    outputs = L.Add()([L.BatchNormalization()(conv), conv])
    model = _randomize_batch_norms(keras.Model(inputs, outputs))
    folded = fold_batch_norms(model)
    assert any(_is_bn(layer) for layer in folded.layers)


def test_sequential_models_are_folded(flavour):
    keras, L = flavour.module, flavour.module.layers
    model = _randomize_batch_norms(keras.Sequential([
        keras.Input((6, 6, 1)), L.Conv2D(4, 3), L.BatchNormalization(), L.Flatten(), L.Dense(2)]))
    folded = fold_batch_norms(model)
    assert [type(layer).__name__ for layer in folded.layers] == [
        "InputLayer", "Conv2D", "Flatten", "Dense"]
    data = np.random.default_rng(2).normal(size=(3, 6, 6, 1)).astype(np.float32)
    np.testing.assert_allclose(folded(data), model(data), rtol=1e-4, atol=1e-4)


def test_separable_split_is_exact(flavour):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((9, 9, 3))
    x = L.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, activation="relu",
                          name="sep")(inputs)
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(x))
    split = split_separable_convs(model)
    kinds = [type(layer).__name__ for layer in split.layers]
    assert kinds == ["InputLayer", "DepthwiseConv2D", "Conv2D", "GlobalAveragePooling2D"]
    assert split.get_layer("sep").kernel_size == (1, 1)
    data = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(split(data), model(data), rtol=1e-5, atol=1e-5)
