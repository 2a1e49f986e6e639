"""PACT on one tensor, in both Kerases: the tfmot PACTQuantizer (tf_keras) and the Keras 3
PACTActivation layer. Forward values, PACT gradients (pinned by hand), calibration, config."""

import numpy as np
import pytest
import tensorflow as tf

from tfcompress._keras import keras, keras3
from tfcompress.quantization import MODES, PACTQuantizer
from tfcompress.quantization.keras3_layers import PACTActivation


def _build(quantizer, name="act"):
    layer = keras.layers.Layer()
    return layer, quantizer.build(tf.TensorShape([None, 6]), name, layer)


def _pact(flavour, **kwargs):
    """``(forward, variables, layer)`` of a PACT quantizer in ``flavour``: ``forward(x,
    training)`` quantizes ``x``; ``variables`` maps ``alpha``/``beta``/``calibrated_steps`` to
    the variables, found by their ``*_pact_<key>`` names; ``layer`` owns them."""
    if flavour.is_keras3:
        layer = PACTActivation(name="act", **kwargs)
        layer.build((None, 6))

        def forward(x, training=False):
            return layer(x, training=training)
    else:
        quantizer = PACTQuantizer(**kwargs)
        layer, weights = _build(quantizer)

        def forward(x, training=False):
            return quantizer(x, training=training, weights=weights)
    variables = {w.name.split(":")[0].split("_pact_")[-1]: w for w in layer.weights}
    return forward, variables, layer


# Ranges chosen so that fake-quant's "zero exactly representable" nudge is a no-op:
# asymmetric [-1, 2] at 4 bits has step 0.2 and zero point 5; symmetric [-1.5, 1.5] at 2 bits
# (narrow range: -1, 0, 1) has step 1.5; relu [0, 3] at 4 bits has step 0.2.
CASES = {
    "asymmetric": dict(num_bits=4, alpha_init=2.0, beta_init=1.0, range_learning="pact"),
    "symmetric": dict(num_bits=2, alpha_init=1.5, range_learning="pact"),
    "relu": dict(num_bits=4, alpha_init=3.0, range_learning="pact"),
}
X = np.array([[-2.5, -1.0, -0.3, 0.5, 2.0, 4.0]], dtype=np.float32)
UPSTREAM = np.array([[0.5, 1.0, 2.0, 3.0, 5.0, 7.0]], dtype=np.float32)


# (low, high) of each case, by hand from the inits above.
HAND_RANGES = {"asymmetric": (-1.0, 2.0), "symmetric": (-1.5, 1.5), "relu": (0.0, 3.0)}


def _hand_gradients(mode):
    """PACT's gradients, written out element by element."""
    low, high = HAND_RANGES[mode]
    above, below = X >= high, X <= low
    inside = ~above & ~below
    d_x = np.where(inside, UPSTREAM, 0.0)
    d_high = UPSTREAM[above].sum()
    d_low = UPSTREAM[below].sum()  # d out / d low = 1 where clipped from below
    if mode == "asymmetric":
        return d_x, d_high, -d_low  # low = -beta
    if mode == "symmetric":
        return d_x, d_high - d_low, None  # low = -alpha
    return d_x, d_high, None  # low is the constant 0


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_hand_computation(mode, flavour):
    forward, weights, _ = _pact(flavour, mode=mode, **CASES[mode])
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = forward(x)
        loss = tf.reduce_sum(y * UPSTREAM)
    variables = [weights["alpha"]] + ([weights["beta"]] if "beta" in weights else [])
    grads = tape.gradient(loss, [x] + variables)
    d_x, d_alpha, d_beta = _hand_gradients(mode)
    np.testing.assert_allclose(grads[0].numpy(), d_x)
    np.testing.assert_allclose(grads[1].numpy(), d_alpha, rtol=1e-6)
    if d_beta is not None:
        np.testing.assert_allclose(grads[2].numpy(), d_beta, rtol=1e-6)
    else:
        assert "beta" not in weights


# Inputs whose positions on each case's grid, (x - low) / step, are no ties of round().
X_LSQ = np.array([[-2.5, -0.93, -0.27, 0.58, 1.33, 4.0]], dtype=np.float32)


def _hand_lsq_gradients(mode):
    """LSQ's range gradients by hand: PACT's clip terms plus, for each value inside the range,
    its rounding error ``(round(v) - v) / levels`` (``+`` for high, ``-`` for low)."""
    low, high = HAND_RANGES[mode]
    levels = 2 ** CASES[mode]["num_bits"] - 1 - (mode == "symmetric")
    above, below = X_LSQ >= high, X_LSQ <= low
    inside = ~above & ~below
    v = (X_LSQ.astype(np.float64) - low) / ((high - low) / levels)
    rounding = (UPSTREAM * (np.round(v) - v) / levels)[inside].sum()
    d_high = UPSTREAM[above].sum() + rounding
    d_low = UPSTREAM[below].sum() - rounding
    return {"asymmetric": (d_high, -d_low), "symmetric": (d_high - d_low, None),
            "relu": (d_high, None)}[mode]


@pytest.mark.parametrize("mode", MODES)
def test_lsq_range_learning_adds_the_rounding_error_and_stores_a_tenth(mode, flavour):
    case = {**CASES[mode], "range_learning": "lsq"}
    forward, weights, _ = _pact(flavour, mode=mode, **case)
    low, high = HAND_RANGES[mode]
    # Stored as a tenth of the range, so that an optimizer step moves the range 10x further.
    np.testing.assert_allclose(float(weights["alpha"].numpy()), high / 10, rtol=1e-6)
    if "beta" in weights:
        np.testing.assert_allclose(float(weights["beta"].numpy()), -low / 10, rtol=1e-6)
    x = tf.constant(X_LSQ)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(forward(x) * UPSTREAM)
    variables = [weights["alpha"]] + ([weights["beta"]] if "beta" in weights else [])
    grads = tape.gradient(loss, [x] + variables)
    d_alpha, d_beta = _hand_lsq_gradients(mode)
    np.testing.assert_allclose(grads[0].numpy(), np.where((X_LSQ > low) & (X_LSQ < high),
                                                          UPSTREAM, 0.0))
    # d loss / d stored = 10 * d loss / d range end.
    np.testing.assert_allclose(grads[1].numpy(), 10 * d_alpha, rtol=1e-4)
    if d_beta is not None:
        np.testing.assert_allclose(grads[2].numpy(), 10 * d_beta, rtol=1e-4)


@pytest.mark.parametrize("bits, expected", [(2, "lsq"), (3, "pact"), (8, "pact")])
def test_auto_range_learning_is_lsq_at_2_bits_only(bits, expected):
    assert PACTQuantizer(bits).range_scale == (10.0 if expected == "lsq" else 1.0)
    old = {k: v for k, v in PACTQuantizer(bits).get_config().items() if k != "range_learning"}
    assert PACTQuantizer.from_config(old).range_learning == "pact"  # saved before the option


@pytest.mark.parametrize("mode", MODES)
def test_forward_clips_and_rounds_to_the_grid(mode, flavour):
    forward, _, _ = _pact(flavour, mode=mode, **CASES[mode])
    y = np.asarray(forward(tf.constant(X)))
    low, high = HAND_RANGES[mode]
    num_bits = CASES[mode]["num_bits"]
    narrow = mode == "symmetric"
    step = (high - low) / (2 ** num_bits - 1 - narrow)
    assert y.min() >= low - 1e-6 and y.max() <= high + 1e-6
    np.testing.assert_allclose((y - low) / step, np.round((y - low) / step), atol=1e-4)
    # The values outside the range land exactly on its ends.
    np.testing.assert_allclose(y[X <= low], low, atol=1e-6)
    np.testing.assert_allclose(y[X >= high], high, atol=1e-6)
    assert np.asarray(forward(tf.zeros([1, 6]))).max() == 0.0


def test_variable_names_end_in_pact_alpha_and_beta(flavour):
    _, _, layer = _pact(flavour, mode="asymmetric")
    names = [w.name for w in layer.trainable_weights]
    assert any(n.split(":")[0].endswith("pact_alpha") for n in names)
    assert any(n.split(":")[0].endswith("pact_beta") for n in names)
    _, _, layer = _pact(flavour, mode="relu")
    assert not any("pact_beta" in w.name for w in layer.weights)


def test_auto_init_calibrates_from_first_training_batches(flavour):
    forward, weights, _ = _pact(flavour, num_bits=8, mode="asymmetric", calibration_steps=2)
    first = tf.constant([[-1.0, 0.0, 3.0]])
    second = tf.constant([[-3.0, 0.0, 5.0]])
    forward(first, training=True)
    assert float(weights["alpha"]) == pytest.approx(3.0)
    assert float(weights["beta"]) == pytest.approx(1.0)
    forward(second, training=True)
    assert float(weights["alpha"]) == pytest.approx(4.0)  # running mean of 3 and 5
    assert float(weights["beta"]) == pytest.approx(2.0)
    forward(tf.constant([[-100.0, 100.0]]), training=True)
    assert float(weights["alpha"]) == pytest.approx(4.0)  # calibration is over
    forward(tf.constant([[50.0]]), training=False)
    assert float(weights["calibrated_steps"]) == 2.0


def _least_error_alpha(values, num_bits):
    """relu mode by brute force: the fraction 0.25, 0.30 .. 1.0 of the maximum whose
    ``num_bits`` grid on ``[0, alpha]`` reproduces ``values`` with the least squared error."""
    values = values.astype(np.float64)
    errors = []
    for i in range(16):
        high = values.max() * (0.25 + 0.05 * i)
        step = high / (2 ** num_bits - 1)
        q = np.round(np.clip(values, 0.0, high) / step) * step
        errors.append((np.square(q - values).mean(), high))
    return min(errors)[1]


@pytest.mark.parametrize("num_bits, alpha_init, ranged_by", [
    (8, "auto", "minmax"), (4, "auto", "mse"), (8, "mse", "mse"), (4, "minmax", "minmax")])
def test_calibration_takes_the_extremes_or_the_least_error_clip(flavour, num_bits, alpha_init,
                                                                ranged_by):
    forward, weights, _ = _pact(flavour, num_bits=num_bits, mode="relu", alpha_init=alpha_init,
                                calibration_steps=1)
    x = np.random.default_rng(num_bits).exponential(size=(1366, 6)).astype(np.float32)
    x.reshape(-1)[1] = 12.0  # the maximum, at an index the error search's sample skips
    forward(tf.constant(x), training=True)
    # The error search looks at every second value of a tensor this size (8196 > 4096).
    expected = 12.0 if ranged_by == "minmax" else _least_error_alpha(x.reshape(-1)[::2], num_bits)
    assert float(weights["alpha"]) == pytest.approx(expected, rel=1e-5)
    assert (float(weights["alpha"]) == pytest.approx(12.0)) == (ranged_by == "minmax")


def test_numeric_init_does_not_calibrate(flavour):
    forward, weights, _ = _pact(flavour, alpha_init=2.5, mode="relu")
    forward(tf.constant([[9.0]]), training=True)
    assert float(weights["alpha"]) == 2.5
    assert "calibrated_steps" not in weights


def test_decay_adds_an_l2_loss_on_alpha(flavour):
    _, _, layer = _pact(flavour, alpha_init=2.0, mode="relu", decay=0.5)
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(0.5 * 2.0 ** 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_bits=1), "from 2 to 8"),
    (dict(num_bits=9), "from 2 to 8"),
    (dict(mode="unsigned"), "mode"),
    (dict(alpha_init="max"), "alpha_init"),
    (dict(alpha_init=-1.0), "alpha_init"),
    (dict(beta_init=-1.0), "beta_init"),
    (dict(decay=-0.1), "decay"),
    (dict(calibration_steps=0), "calibration_steps"),
])
def test_bad_arguments_are_rejected(kwargs, message, flavour):
    with pytest.raises(ValueError, match=message):
        _pact(flavour, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_bits=4.0), "num_bits.*integer.*4.0"),
    (dict(num_bits=True), "num_bits.*integer"),
    (dict(mode=1), "mode"),
    (dict(alpha_init=[2.0]), "alpha_init"),
    (dict(beta_init="1"), "beta_init"),
    (dict(decay="0.1"), "decay"),
    (dict(calibration_steps=2.0), "calibration_steps"),
    (dict(trainable_range="no"), "trainable_range"),
])
def test_wrong_types_are_type_errors(kwargs, message, flavour):
    with pytest.raises(TypeError, match=message):
        _pact(flavour, **kwargs)


def test_config_round_trip_and_registration():
    quantizer = PACTQuantizer(num_bits=3, mode="symmetric", alpha_init=4.0, decay=1e-4,
                              trainable_range=False)
    assert PACTQuantizer.from_config(quantizer.get_config()) == quantizer
    restored = keras.utils.deserialize_keras_object(keras.utils.serialize_keras_object(quantizer))
    assert (restored.num_bits, restored.mode, restored.alpha_init, restored.decay,
            restored.trainable_range) == (3, "symmetric", 4.0, 1e-4, False)
    assert restored != PACTQuantizer(num_bits=3, mode="symmetric", alpha_init=4.0, decay=1e-4)
    assert keras.utils.get_registered_name(PACTQuantizer) == "tfcompress>PACTQuantizer"
    # Configs saved before `trainable_range` existed still load, as trainable.
    old = {k: v for k, v in quantizer.get_config().items() if k != "trainable_range"}
    assert PACTQuantizer.from_config(old).trainable_range is True


def test_frozen_range_is_calibrated_but_never_trained(flavour):
    forward, weights, layer = _pact(flavour, num_bits=4, mode="asymmetric", calibration_steps=1,
                                    decay=0.1, trainable_range=False)
    assert layer.trainable_weights == [] and len(layer.losses) == 0  # no decay on a constant
    x = tf.constant([[-1.0, 0.0, 3.0]])
    forward(x, training=True)  # calibration still sets the range
    assert (float(weights["alpha"]), float(weights["beta"])) == pytest.approx((3.0, 1.0))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(forward(x * 2.0, training=True))
    assert tape.gradient(loss, [weights["alpha"], weights["beta"]]) == [None, None]


@pytest.mark.parametrize("mode", MODES)
def test_tracked_range_is_the_running_min_and_max_and_never_trained(flavour, mode):
    forward, weights, layer = _pact(flavour, num_bits=8, mode=mode, track_range=True)
    assert layer.trainable_weights == []
    batches = ([[-1.0, 0.5, 3.0]], [[-0.5, 0.0, 2.0]], [[-4.0, 0.0, 5.0]])
    low, high = 0.0, -np.inf
    for batch in batches:
        out = forward(tf.constant(batch), training=True).numpy()
        low, high = min(low, min(batch[0])), max(high, max(batch[0]))
        expected_high = max(high, -low) if mode == "symmetric" else high
        assert float(weights["alpha"]) == pytest.approx(expected_high)
        if mode == "asymmetric":
            assert float(weights["beta"]) == pytest.approx(-low)
        if mode != "relu":  # a value seen in training is never clipped
            np.testing.assert_allclose(out, batch, atol=(expected_high - low) / 250)
    forward(tf.constant([[-90.0, 90.0]]), training=False)  # inference does not widen it
    assert float(weights["alpha"]) == pytest.approx(5.0)


def test_keras3_layer_config_round_trip_and_registration():
    layer = PACTActivation(num_bits=3, mode="symmetric", alpha_init=4.0, decay=1e-4,
                           trainable_range=False, name="q")
    restored = keras3.saving.deserialize_keras_object(keras3.saving.serialize_keras_object(layer))
    assert type(restored) is PACTActivation and restored.name == "q"
    assert (restored.quantizer.num_bits, restored.quantizer.mode, restored.quantizer.alpha_init,
            restored.quantizer.decay, restored.quantizer.trainable_range) == (
        3, "symmetric", 4.0, 1e-4, False)
    assert keras3.saving.get_registered_name(PACTActivation) == "tfcompress>PACTActivation"
    assert PACTActivation.tfcompress_qat is True
