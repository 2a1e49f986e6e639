"""PACTQuantizeConfig: the rules table, the tfmot way (annotate + quantize_apply), errors."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras
from tfcompress.quantization import (
    LAYER_RULES,
    PACTQuantizeConfig,
    PACTQuantizer,
    clip_ranges,
    quantize_apply,
    quantize_scope,
)
from tfcompress.quantization.configs import rule_for

L = keras.layers
annotate = tfmot.quantization.keras.quantize_annotate_layer

WEIGHTED = {
    "Conv1D": (lambda: L.Conv1D(4, 3), (10, 3)),
    "Conv2D": (lambda: L.Conv2D(4, 3), (8, 8, 3)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 3)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3), (8, 8, 3)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(4, 3, strides=2), (5, 5, 3)),
    "Dense": (lambda: L.Dense(4, activation="relu"), (6,)),
}


def test_rules_resolve_through_the_mro():
    assert rule_for(L.DepthwiseConv2D(3)).weights == (("depthwise_kernel", "depthwise"),)
    assert rule_for(L.Conv2DTranspose(2, 3)).weights == (("kernel", "transpose"),)

    class MyConv(L.Conv2D):
        pass

    assert rule_for(MyConv(2, 3)) is rule_for(L.Conv2D(2, 3))
    assert rule_for(L.LayerNormalization()) is None
    every_type = [t for rule in LAYER_RULES for t in rule.types]
    assert len(every_type) == len(set(every_type)), "a layer type has two rules"


@pytest.mark.parametrize("name", sorted(WEIGHTED))
@pytest.mark.parametrize("bits", [2, 8])
def test_the_tfmot_way_quantizes_each_weighted_layer(name, bits):
    make, shape = WEIGHTED[name]
    inputs = keras.Input(shape)
    x = annotate(make(), PACTQuantizeConfig(weight_bits=bits, activation_bits=bits))(inputs)
    model = keras.Model(inputs, L.Flatten()(x))
    with quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(model)
    data = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    out = qat(data, training=True)
    assert np.isfinite(out.numpy()).all()
    wrapper = next(layer for layer in qat.layers if hasattr(layer, "quantize_config"))
    assert isinstance(wrapper.quantize_config, PACTQuantizeConfig)
    assert len(wrapper._weight_vars) == len(rule_for(wrapper.layer).weights)
    assert any("pact_alpha" in w.name for w in wrapper.trainable_weights)


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
])
def test_bad_options_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        PACTQuantizeConfig(**kwargs)


def test_config_round_trip():
    config = PACTQuantizeConfig(3, 5, mode="relu", alpha_init=4.0, decay=1e-3)
    assert PACTQuantizeConfig.from_config(config.get_config()) == config
    assert keras.utils.deserialize_keras_object(
        keras.utils.serialize_keras_object(config)) == config
    quantizer = config.get_output_quantizers(L.ReLU())[0]
    assert quantizer == PACTQuantizer(5, mode="relu", alpha_init=4.0, decay=1e-3)
    assert config.with_output(False).get_output_quantizers(L.ReLU()) == []


def test_pact_scheme_quantizes_an_annotated_sequential_model():
    from tfcompress.quantization import PACTQuantizeScheme

    model = keras.Sequential([L.Dense(4, input_shape=(3,)), L.ReLU()])
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    qat = quantize_apply(annotated, PACTQuantizeScheme(4, 4, mode="relu"))
    names = sorted(w.name.split("/")[-1] for w in qat.trainable_weights if "pact" in w.name)
    # Dense -> ReLU is fused: only the ReLU output and the model input are quantized.
    assert names == ["output_pact_alpha:0", "quantize_layer_pact_alpha:0"]


def test_clip_range_logger_writes_ranges_into_history():
    from tfcompress.quantization import ClipRangeLogger, quantize_model

    qat = quantize_model(keras.Sequential([L.Dense(3, input_shape=(4,)), L.ReLU(name="act")]),
                         mode="relu", alpha_init=2.0)
    qat.compile("sgd", "mse")
    data = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    history = qat.fit(data, np.ones((16, 3)), epochs=2, verbose=0, callbacks=[ClipRangeLogger()])
    assert len(history.history["pact/act/alpha"]) == 2
    assert history.history["pact/act/alpha"][-1] == pytest.approx(clip_ranges(qat)["act"][1])
    assert history.history["pact/act/low"] == [0.0, 0.0]
