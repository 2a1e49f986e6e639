"""ChannelWeightQuantizer: per-channel symmetric grids for every kernel layout."""

import numpy as np
import pytest
import tensorflow as tf

from tfcompress._keras import keras3
from tfcompress.quantization import (
    ChannelWeightQuantizer,
    PACTQuantizeConfig,
    PACTQuantizeWrapper,
)
from tfcompress.quantization.tflite_mode import tflite_export_mode

# kernel shape, layout, function giving a (channels, values) view
LAYOUT_CASES = {
    "channels_last": ((3, 3, 4, 6), lambda k: k.reshape(-1, k.shape[-1]).T),
    "depthwise": ((3, 3, 4, 2), lambda k: k.reshape(9, -1).T),
    "transpose": ((3, 3, 6, 4), lambda k: np.moveaxis(k, -2, 0).reshape(k.shape[-2], -1)),
    "per_tensor": ((5, 6), lambda k: k.reshape(1, -1)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUT_CASES))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_each_channel_is_symmetric_on_its_own_grid(layout, bits):
    shape, channels = LAYOUT_CASES[layout]
    kernel = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    kernel[..., 0] = 0.0  # an all-zero (pruned) slice must not produce NaNs
    quantized = ChannelWeightQuantizer(bits, layout)(tf.constant(kernel), False, {}).numpy()
    assert np.isfinite(quantized).all()
    levels = 2 ** (bits - 1) - 1
    for original, values in zip(channels(kernel), channels(quantized)):
        assert len(np.unique(values)) <= 2 * levels + 1
        step = max(np.abs(original).max(), 1e-8) / levels
        np.testing.assert_allclose(values / step, np.round(values / step), atol=1e-3)
        assert np.abs(values).max() <= np.abs(original).max() + 1e-6


def _grid_error(values, high, levels):
    step = high / levels
    return np.square(np.clip(np.round(values / step), -levels, levels) * step - values).sum()


@pytest.mark.parametrize("layout", sorted(LAYOUT_CASES))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_range_is_the_best_fraction_of_the_maximum_per_channel(layout, bits):
    shape, channels = LAYOUT_CASES[layout]
    kernel = np.random.default_rng(bits).standard_t(4, size=shape).astype(np.float32)
    kernel[..., 0] = 0.0
    mse = ChannelWeightQuantizer(bits, layout, "mse")(tf.constant(kernel), False, {}).numpy()
    biggest = ChannelWeightQuantizer(bits, layout)(tf.constant(kernel), False, {}).numpy()
    assert np.isfinite(mse).all()
    if bits == 8:
        np.testing.assert_array_equal(mse, biggest)
        return
    levels = 2 ** (bits - 1) - 1
    for original, values, reference in zip(channels(kernel), channels(mse), channels(biggest)):
        high = max(np.abs(original).max(), 1e-8)
        # Brute force over the same 15 fractions (1.0, 0.95, ..., 0.3), in float64.
        best = min(_grid_error(original.astype(np.float64), high * (1 - 0.05 * i), levels)
                   for i in range(15))
        error = np.square(values - original).sum()
        assert error <= best * (1 + 1e-4) + 1e-9
        assert error <= np.square(reference - original).sum() + 1e-9
        assert len(np.unique(values)) <= 2 * levels + 1


def test_old_configs_keep_the_maximum_and_bad_ranges_are_refused():
    restored = ChannelWeightQuantizer.from_config({"num_bits": 2, "layout": "channels_last"})
    assert restored.weight_range == "max"
    assert ChannelWeightQuantizer(2).get_config()["weight_range"] == "max"
    config = PACTQuantizeConfig(2, 2, weight_range="mse").get_config()
    assert config.pop("weight_range") == "mse"
    assert PACTQuantizeConfig.from_config(config).weight_range == "max"
    wrapper = PACTQuantizeWrapper(keras3.layers.Dense(2), 2, 2, weight_range="mse").get_config()
    assert wrapper.pop("weight_range") == "mse"
    assert PACTQuantizeWrapper.from_config(wrapper).weight_range == "max"
    with pytest.raises(ValueError, match="weight_range"):
        ChannelWeightQuantizer(2, weight_range="percentile")


def test_export_mode_keeps_values_on_the_low_bit_grid():
    kernel = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 2, 5)).astype(np.float32))
    quantizer = ChannelWeightQuantizer(4, "channels_last")
    trained = quantizer(kernel, False, {}).numpy()
    with tflite_export_mode():
        exported = quantizer(kernel, False, {}).numpy()
    np.testing.assert_allclose(exported, trained, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(num_bits=9), dict(layout="rows")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ChannelWeightQuantizer(**kwargs)
