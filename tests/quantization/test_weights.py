"""ChannelWeightQuantizer: per-channel symmetric grids for every kernel layout."""

import numpy as np
import pytest
import tensorflow as tf

from tfcompress._keras import keras3
from tfcompress.quantization import (
    ChannelWeightQuantizer,
    PACTQuantizeConfig,
    PACTQuantizeWrapper,
    quantize_model,
)
from tfcompress.quantization.kernel_math import step_shape
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


def _step_variables(shape, layout):
    return {"log_step": tf.Variable(tf.zeros(step_shape(shape, layout))),
            "step_ready": tf.Variable(0.0)}


def _on_grid(v, bits, midrise):
    """Reference grids in steps: narrow ``k``, ``|k| <= 2^(b-1) - 1``; midrise ``k + 1/2``."""
    half = 2 ** (bits - 1)
    if midrise:
        return np.clip(np.floor(v), -half, half - 1) + 0.5
    return np.clip(np.round(v), -(half - 1), half - 1)


def _best_step(values, bits, midrise):
    """Brute force: the step whose top level is the best of 15 fractions of the maximum."""
    top = 2 ** (bits - 1) - (0.5 if midrise else 1.0)
    values = values.astype(np.float64)
    steps = [np.abs(values).max() * (1 - 0.05 * i) / top for i in range(15)]
    return min(steps, key=lambda step: np.square(
        _on_grid(values / step, bits, midrise) * step - values).sum())


@pytest.mark.parametrize("weight_range", ["learned", "learned_midrise"])
@pytest.mark.parametrize("layout", sorted(LAYOUT_CASES))
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_learned_step_starts_at_the_least_squares_step_and_is_stored_on_the_first_training_step(
        layout, bits, weight_range):
    shape, channels = LAYOUT_CASES[layout]
    midrise = weight_range == "learned_midrise"
    kernel = tf.constant(np.random.default_rng(bits).standard_t(4, size=shape), tf.float32)
    learned = ChannelWeightQuantizer(bits, layout, weight_range)
    variables = _step_variables(shape, layout)
    before = learned(kernel, False, variables).numpy()
    assert float(variables["step_ready"].numpy()) == 0.0  # inference stores nothing
    np.testing.assert_allclose(learned(kernel, True, variables).numpy(), before, atol=1e-6)
    assert float(variables["step_ready"].numpy()) == 1.0
    # Each channel's step is the brute-force best, and the kernel sits on that step's grid.
    steps = np.exp(variables["log_step"].numpy()).reshape(-1)
    for original, values, step in zip(channels(kernel.numpy()), channels(before), steps):
        np.testing.assert_allclose(step, _best_step(original, bits, midrise), rtol=1e-5)
        np.testing.assert_allclose(values, _on_grid(original / step, bits, midrise) * step,
                                   atol=1e-5)
        assert len(np.unique(values)) <= 2 ** bits - (0 if midrise else 1)
    if weight_range == "learned":  # the narrow grid's start is what "mse" picks
        mse = ChannelWeightQuantizer(bits, layout, "mse")(kernel, False, {}).numpy()
        np.testing.assert_allclose(before, mse, atol=1e-6)
    # Once stored, the step is the variable's, whatever the kernel becomes.
    variables["log_step"].assign(np.log(np.full(step_shape(shape, layout), 0.5, np.float32)))
    values = learned(kernel * 3.0, False, variables).numpy()
    np.testing.assert_allclose(values, _on_grid(values / 0.5, bits, midrise) * 0.5, atol=1e-5)
    assert np.abs(values).max() <= 0.5 * (2 ** (bits - 1) - (0.5 if midrise else 1)) + 1e-5


def _lsq_case(weight_range):
    """``(output, d kernel, d log step)`` of a 2-bit learned quantizer on a 3x2 kernel with
    steps 0.25 and 0.2, for ``sum(output * upstream)``."""
    kernel = tf.constant([[0.1, -0.9], [0.34, 0.19], [-0.6, 0.05]])
    variables = _step_variables(kernel.shape, "channels_last")
    variables["log_step"].assign(np.log([0.25, 0.2]).astype(np.float32))
    variables["step_ready"].assign(1.0)
    upstream = tf.constant([[1.0, 2.0], [-1.0, 0.5], [3.0, 1.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(kernel)
        out = ChannelWeightQuantizer(2, weight_range=weight_range)(kernel, True, variables)
        loss = tf.reduce_sum(out * upstream)
    return (out.numpy(), tape.gradient(loss, kernel).numpy(),
            tape.gradient(loss, variables["log_step"]).numpy())


def test_learned_step_gradients_are_lsq_by_hand():
    out, d_kernel, d_log_step = _lsq_case("learned")
    # 2 bits: levels {-1, 0, 1} * step. Channel 0 (step 0.25): 0.1 -> 0 (v=0.4), 0.34 -> 1
    # (v=1.36, clipped), -0.6 -> -1 (v=-2.4, clipped). Channel 1 (step 0.2): -0.9 clipped,
    # 0.19 -> 1 (v=0.95), 0.05 -> 0 (v=0.25).
    np.testing.assert_allclose(out, [[0, -0.2], [0.25, 0.2], [-0.25, 0]], atol=1e-6)
    np.testing.assert_allclose(d_kernel, [[1, 0], [0, 0.5], [0, 1]], atol=1e-6)
    # d/d(step) = sum(upstream * (round(v) - v) inside, sign(v) * levels outside) / sqrt(3 * 1);
    # d/d(log step) = step * that.
    d_step = np.array([1.0 * (0 - 0.4) + -1.0 * 1 + 3.0 * -1,
                       2.0 * -1 + 0.5 * (1 - 0.95) + 1.0 * (0 - 0.25)]) / np.sqrt(3.0)
    np.testing.assert_allclose(d_log_step, d_step * np.array([0.25, 0.2]), rtol=1e-5)


def test_midrise_gradients_are_lsq_by_hand():
    out, d_kernel, d_log_step = _lsq_case("learned_midrise")
    # 2 bits midrise: levels {-1.5, -0.5, 0.5, 1.5} * step, range 1.5 steps. Channel 0
    # (step 0.25): 0.1 -> 0.5 (v=0.4), 0.34 -> 1.5 (v=1.36), -0.6 -> -1.5 (v=-2.4, clipped).
    # Channel 1 (step 0.2): -0.9 clipped (v=-4.5), 0.19 -> 0.5 (v=0.95), 0.05 -> 0.5 (v=0.25).
    np.testing.assert_allclose(out, [[0.125, -0.3], [0.375, 0.1], [-0.375, 0.1]], atol=1e-6)
    np.testing.assert_allclose(d_kernel, [[1, 0], [-1, 0.5], [0, 1]], atol=1e-6)
    # d/d(step) = sum(upstream * (level - v) inside, sign(v) * 1.5 outside) / sqrt(3 * 1.5).
    d_step = np.array([1.0 * (0.5 - 0.4) + -1.0 * (1.5 - 1.36) + 3.0 * -1.5,
                       2.0 * -1.5 + 0.5 * (0.5 - 0.95) + 1.0 * (0.5 - 0.25)]) / np.sqrt(4.5)
    np.testing.assert_allclose(d_log_step, d_step * np.array([0.25, 0.2]), rtol=1e-5)


@pytest.mark.parametrize("bits, weight_range", [(2, "learned"), (3, "learned"),
                                                (2, "learned_midrise"), (3, "learned_midrise")])
def test_learned_step_exports_on_its_grid_and_only_below_8_bits(bits, weight_range):
    kernel = tf.constant(np.random.default_rng(2).normal(size=(3, 3, 2, 5)).astype(np.float32))
    quantizer = ChannelWeightQuantizer(bits, "channels_last", weight_range)
    variables = _step_variables(kernel.shape, "channels_last")
    trained = quantizer(kernel, True, variables).numpy()
    with tflite_export_mode():
        exported = quantizer(kernel, False, variables).numpy()
    np.testing.assert_allclose(exported, trained, atol=1e-5)
    # The int8 carrier: per channel, integer multiples of one int8 step within [-127, 127]
    # (fake_quant at 8 bits would move any value off that grid).
    steps = np.exp(variables["log_step"].numpy())
    units = 2.0 if weight_range == "learned_midrise" else 1.0
    top = 2 ** (bits - 1) - 1 + (0.5 if weight_range == "learned_midrise" else 0.0)
    int8 = exported / (steps / (units * (127 // int(top * units))))
    np.testing.assert_allclose(int8, np.round(int8), atol=1e-3)
    assert np.abs(int8).max() <= 127 + 1e-3
    assert ChannelWeightQuantizer(8, weight_range=weight_range).learns_step is False
    with pytest.raises(ValueError, match="log_step"):
        quantizer(kernel, True, {})


@pytest.mark.parametrize("weight_range", ["learned", "learned_midrise"])
def test_learned_steps_train_in_both_kerases(flavour, weight_range):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="first")(inputs)
    x = L.Conv2D(3, 3, name="middle")(x)
    x = L.DepthwiseConv2D(2, name="depthwise")(x)
    model = keras.Model(inputs, L.Dense(2, name="last")(L.Flatten()(x)))
    qat = quantize_model(model, 3, 3, weight_range=weight_range)
    steps = [v for v in qat.weights if "log_step" in v.name]
    # First and last layers stay at 8 bits (no step); the two middle kernels learn theirs.
    assert [tuple(v.shape) for v in steps] == [(3,), (3,)]
    data = np.random.default_rng(0).normal(size=(16, 6, 6, 2)).astype(np.float32)
    qat(data, training=True)  # the first training step stores the "mse" steps
    started = [v.numpy().copy() for v in steps]
    assert [float(v.numpy()) for v in qat.weights if "step_ready" in v.name] == [1.0, 1.0]
    qat.compile(keras.optimizers.Adam(0.05), "mse")
    qat.fit(data, np.ones((16, 2), np.float32), epochs=3, verbose=0)
    for variable, start in zip(steps, started):
        assert np.abs(variable.numpy() - start).max() > 0.01
