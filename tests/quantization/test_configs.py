"""PACTQuantizeConfig: the rules table, the tfmot way (annotate + quantize_apply), errors."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras, keras3
from tfcompress.quantization import (
    LAYER_RULES,
    PACTQuantizeConfig,
    clip_ranges,
    quantize_apply,
    quantize_scope,
)
from tfcompress.quantization.configs import rule_for

L = keras.layers
annotate = tfmot.quantization.keras.quantize_annotate_layer

# layer factory, input shape, {kernel attribute: function giving a (channels, values) view}.
# The channel views are written out by hand from the Keras kernel layouts, not taken from
# ChannelWeightQuantizer: Conv/Dense keep output channels last, depthwise kernels
# (h, w, in, multiplier) have in * multiplier, transpose kernels (h, w, out, in) axis -2.
# Dense is per-tensor (one range for the whole kernel).
_LAST = lambda k: k.reshape(-1, k.shape[-1]).T  # noqa: E731
_DEPTHWISE = lambda k: k.reshape(k.shape[0] * k.shape[1], -1).T  # noqa: E731
_TRANSPOSED = lambda k: np.moveaxis(k, -2, 0).reshape(k.shape[-2], -1)  # noqa: E731
_WHOLE = lambda k: k.reshape(1, -1)  # noqa: E731
WEIGHTED = {
    "Conv1D": (lambda: L.Conv1D(4, 3), (10, 3), {"kernel": _LAST}),
    "Conv2D": (lambda: L.Conv2D(4, 3), (8, 8, 3), {"kernel": _LAST}),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 3),
                        {"depthwise_kernel": _DEPTHWISE}),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3), (8, 8, 3),
                        {"depthwise_kernel": _DEPTHWISE, "pointwise_kernel": _LAST}),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(4, 3, strides=2), (5, 5, 3),
                        {"kernel": _TRANSPOSED}),
    "Dense": (lambda: L.Dense(4, activation="relu"), (6,), {"kernel": _WHOLE}),
}


def _variable(layer, short_name):
    """The variable of ``layer`` named ``short_name`` (``.../short_name:0`` in tf_keras,
    ``short_name`` in Keras 3), exactly one."""
    found = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] == short_name]
    assert len(found) == 1, [w.name for w in layer.weights]
    return found[0]


def _pact_range(wrapper, scale=1.0):
    """(low, high) of the wrapper's one asymmetric PACT quantizer, read from its variables
    (stored as ``1 / scale`` of the range: ``range_learning="lsq"``)."""
    alphas = [w for w in wrapper.weights if w.name.endswith("_pact_alpha:0")]
    betas = [w for w in wrapper.weights if w.name.endswith("_pact_beta:0")]
    assert len(alphas) == len(betas) == 1, [w.name for w in wrapper.weights]
    return -scale * float(betas[0].numpy()), scale * float(alphas[0].numpy())


def _assert_on_grid(values, step, max_levels):
    """At most ``max_levels`` distinct values, any two an integer number of steps apart."""
    levels = np.unique(np.round(values.astype(np.float64) / step, 4))
    assert len(levels) <= max_levels, (len(levels), max_levels)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_rules_resolve_through_the_mro():
    assert rule_for(L.DepthwiseConv2D(3)).weights == (("depthwise_kernel", "depthwise"),)
    assert rule_for(L.Conv2DTranspose(2, 3)).weights == (("kernel", "transpose"),)

    class MyConv(L.Conv2D):
        pass

    class MyDepthwise(L.DepthwiseConv2D):  # DepthwiseConv2D subclasses Conv2D: nearest wins
        pass

    assert rule_for(MyConv(2, 3)).weights == (("kernel", "channels_last"),)
    assert rule_for(MyConv).result == "activation"
    assert rule_for(MyDepthwise(3)).weights == (("depthwise_kernel", "depthwise"),)
    assert rule_for(L.ReLU()).result == "output" and rule_for(L.Flatten()).result == "none"
    assert rule_for(L.LayerNormalization()) is None
    every_type = [t for rule in LAYER_RULES for t in rule.types]
    assert len(every_type) == len(set(every_type)), "a layer type has two rules"


def test_rule_lookups_are_cached_per_class():
    from tfcompress.quantization.configs import _rule_for_class

    class Fresh(L.Conv1D):
        pass

    before = _rule_for_class.cache_info()
    first, second = rule_for(Fresh(2, 3)), rule_for(Fresh)
    after = _rule_for_class.cache_info()
    assert first is second
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)


@pytest.mark.parametrize("name", sorted(WEIGHTED))
@pytest.mark.parametrize("bits", [2, 8])
def test_the_tfmot_way_puts_weights_and_outputs_on_their_grids(name, bits):
    make, shape, kernels = WEIGHTED[name]
    inputs = keras.Input(shape)
    config = PACTQuantizeConfig(weight_bits=bits, activation_bits=bits, alpha_init=1.0)
    model = keras.Model(inputs, L.Flatten()(annotate(make(), config)(inputs)))
    with quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(model)
    wrapper = next(layer for layer in qat.layers if hasattr(layer, "quantize_config"))
    assert isinstance(wrapper.quantize_config, PACTQuantizeConfig)
    data = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    # training=True: tfmot's input quantizer takes its range from this first batch. Eager, so
    # the wrapped layer keeps the fake-quantized kernels it computed with.
    out = qat(data, training=True).numpy()
    # Weights: symmetric narrow range per channel, step = max|w| / (2^(b-1) - 1).
    levels = 2 ** (bits - 1) - 1
    for attr, channels in kernels.items():
        original = _variable(wrapper, attr).numpy()
        quantized = np.asarray(getattr(wrapper.layer, attr))
        assert quantized.shape == original.shape and not np.array_equal(quantized, original)
        for float_channel, channel in zip(channels(original), channels(quantized)):
            step = np.abs(float_channel).max() / levels
            _assert_on_grid(channel, step, 2 * levels + 1)
            assert np.abs(channel).max() <= np.abs(float_channel).max() * (1 + 1e-6)
    # Output: clipped to [-beta, alpha], 2^b levels of step (alpha + beta) / (2^b - 1); at 2
    # bits the range learns LSQ's way, its variables holding a tenth of it.
    low, high = _pact_range(wrapper, 10.0 if bits == 2 else 1.0)
    step = (high - low) / (2 ** bits - 1)
    assert out.min() >= low - step and out.max() <= high + step
    _assert_on_grid(out, step, 2 ** bits)
    assert len(np.unique(out)) > 1  # not vacuous: the output is not constant


def test_activation_only_layers_get_an_output_quantizer():
    inputs = keras.Input((4,))
    a = L.Dense(3)(inputs)
    x = annotate(L.Add(), PACTQuantizeConfig(activation_bits=4, mode="symmetric",
                                             alpha_init=2.0))([a, a])
    model = keras.Model(inputs, x)
    qat = quantize_apply(model)
    assert list(clip_ranges(qat).values()) == [(-2.0, 2.0)]


def test_unsupported_layer_has_a_clear_error():
    config = PACTQuantizeConfig()
    with pytest.raises(ValueError, match="LayerNormalization.*Supported types"):
        config.get_weights_and_quantizers(L.LayerNormalization(name="ln"))


@pytest.mark.parametrize("kwargs, error", [
    (dict(weight_bits=1), ValueError),
    (dict(activation_bits=16), ValueError),
    (dict(mode="bad"), ValueError),
    (dict(alpha=3.0), TypeError),
    (dict(weight_bits=4.0), TypeError),
    (dict(decay="0"), TypeError),
])
def test_bad_options_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        PACTQuantizeConfig(**kwargs)


def test_config_round_trip():
    config = PACTQuantizeConfig(3, 5, mode="relu", alpha_init=4.0, decay=1e-3)
    assert PACTQuantizeConfig.from_config(config.get_config()) == config
    assert keras.utils.deserialize_keras_object(
        keras.utils.serialize_keras_object(config)) == config
    restored = keras.utils.deserialize_keras_object(keras.utils.serialize_keras_object(config))
    assert (restored.weight_bits, restored.activation_bits) == (3, 5)
    assert restored.pact_options == {"mode": "relu", "alpha_init": 4.0, "decay": 1e-3,
                                     "range_learning": "auto"}  # written out: saved as trained
    old = {k: v for k, v in config.get_config().items() if k != "range_learning"}
    assert PACTQuantizeConfig.from_config(old).pact_options["range_learning"] == "pact"
    quantizer = config.get_output_quantizers(L.ReLU())[0]
    assert (quantizer.num_bits, quantizer.mode, quantizer.alpha_init) == (5, "relu", 4.0)
    assert config.with_output(False).get_output_quantizers(L.ReLU()) == []


def test_pact_scheme_quantizes_an_annotated_sequential_model():
    from tfcompress.quantization import PACTQuantizeScheme

    model = keras.Sequential([L.Dense(4, input_shape=(3,)), L.ReLU()])
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    qat = quantize_apply(annotated, PACTQuantizeScheme(4, 4, mode="relu"))
    names = sorted(w.name.split("/")[-1] for w in qat.trainable_weights if "pact" in w.name)
    # Dense -> ReLU is fused: only the ReLU output and the model input are quantized.
    assert names == ["output_pact_alpha:0", "quantize_layer_pact_alpha:0"]


def test_clip_range_logger_writes_ranges_into_history(flavour):
    from tfcompress.quantization import ClipRangeLogger, quantize_model

    keras, L = flavour.module, flavour.module.layers
    qat = quantize_model(keras.Sequential([keras.Input((4,)), L.Dense(3), L.ReLU(name="act")]),
                         mode="asymmetric", alpha_init=0.5, beta_init=0.5)
    qat.compile(keras.optimizers.SGD(0.05), "mse")
    # Independent record: the variables themselves, read by name after each epoch.
    alpha = _variable(qat.get_layer("quant_act"), "output_pact_alpha")
    beta = _variable(qat.get_layer("quant_act"), "output_pact_beta")
    seen = []
    read = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((-float(beta.numpy()),
                                                      float(alpha.numpy()))))
    data = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    history = qat.fit(data, np.ones((16, 3)), epochs=3, verbose=0,
                      callbacks=[ClipRangeLogger(), read])
    logged = list(zip(history.history["pact/act/low"], history.history["pact/act/alpha"]))
    np.testing.assert_allclose(logged, seen, rtol=1e-6)
    assert seen[-1] != (-0.5, 0.5), "the range never moved: the comparison would be vacuous"


# Keras 3: the wrapper computes with kernels quantized per output channel. Where the channels
# are, by hand from the Keras 3 kernel layouts: the reduction axes of each kernel's ranges.
K3 = keras3.layers
KERAS3_WEIGHTED = {
    "Conv1D": (lambda: K3.Conv1D(4, 3), (10, 3), {"kernel": (0, 1)}),
    "Conv2D": (lambda: K3.Conv2D(4, 3), (8, 8, 3), {"kernel": (0, 1, 2)}),
    "DepthwiseConv2D": (lambda: K3.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 3),
                        {"kernel": (0, 1)}),
    "Conv2DTranspose": (lambda: K3.Conv2DTranspose(4, 3, strides=2), (5, 5, 3),
                        {"kernel": (0, 1, 3)}),
    "Dense": (lambda: K3.Dense(4, activation="relu"), (6,), {"kernel": None}),
}


def _hand_quantized(kernel, axes, bits):
    """Symmetric narrow-range rounding, one range per slice that ``axes`` reduce over."""
    levels = 2 ** (bits - 1) - 1
    step = np.abs(kernel).max(axis=axes, keepdims=axes is not None) / levels
    return np.round(kernel / step) * step


@pytest.mark.parametrize("name", sorted(KERAS3_WEIGHTED))
@pytest.mark.parametrize("bits", [2, 8])
def test_keras3_wrapper_computes_with_per_channel_kernels(name, bits):
    from tfcompress.quantization.keras3_layers import PACTQuantizeWrapper

    make, shape, kernels = KERAS3_WEIGHTED[name]
    data = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    wrapper = PACTQuantizeWrapper(make(), weight_bits=bits, activation_bits=bits,
                                  quantize_output=False)
    out = np.asarray(wrapper(data))
    # The same layer, computing in float with the kernels quantized by hand.
    reference = make()
    reference(data)
    weights = {w.name: w.numpy() for w in wrapper.layer.weights}
    reference.set_weights([_hand_quantized(weights[w.name], kernels[w.name], bits)
                           if w.name in kernels else weights[w.name] for w in reference.weights])
    np.testing.assert_allclose(out, np.asarray(reference(data)), rtol=1e-4, atol=1e-4)
    if bits == 2:  # not vacuous: 2-bit kernels change the result
        assert not np.allclose(out, np.asarray(wrapper.layer(data)), atol=1e-3)


def test_keras3_wrapper_puts_outputs_on_the_pact_grid():
    from tfcompress.quantization.keras3_layers import PACTQuantizeWrapper

    wrapper = PACTQuantizeWrapper(K3.Conv2D(4, 3), weight_bits=4, activation_bits=3,
                                  alpha_init=1.0, beta_init=0.75)
    out = np.asarray(wrapper(np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("f")))
    low, high = -0.75, 1.0  # [-beta, alpha]: 3 bits, step 1.75 / 7 = 0.25, zero exact
    assert out.min() >= low - 1e-6 and out.max() <= high + 1e-6
    _assert_on_grid(out - low, 0.25, 2 ** 3)
    assert len(np.unique(out)) > 2
    assert sorted(w.name for w in wrapper.trainable_weights) == [
        "bias", "kernel", "post_activation_pact_alpha", "post_activation_pact_beta"]


def test_keras3_model_quantizes_like_the_pact_scheme():
    """The Keras 3 twin of test_pact_scheme_quantizes_an_annotated_sequential_model: the same
    PACT variables, and a softmax output quantized before the softmax (tfmot's placement)."""
    from tfcompress.quantization import quantize_model

    qat = quantize_model(keras3.Sequential([keras3.Input((3,)), K3.Dense(4), K3.ReLU(),
                                            K3.Dense(2, activation="softmax", name="out")]),
                         4, 4, mode="relu")
    names = sorted(w.name for w in qat.trainable_weights if "pact" in w.name)
    assert names == ["output_pact_alpha", "pre_activation_pact_alpha",
                     "quantize_layer_pact_alpha"]
    probabilities = np.asarray(qat(np.ones((5, 3), np.float32)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert all(getattr(layer, "tfcompress_qat", False) for layer in qat.layers[1:])
