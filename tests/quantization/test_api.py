"""quantize_model end to end on real data: accuracy, learned ranges, int8 TFLite, save/load,
for tf_keras (tfmot) and Keras 3 models."""

import re

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tfcompress._keras import FLAVOURS, KERAS3, TF_KERAS, keras
from tfcompress.export import activation_ranges, litert, load_model, tflite_ops, to_tflite
from tfcompress.export.flatbuffer import kind_of_ops
from tfcompress.models import compile_classifier, residual_cnn
from tfcompress.pruning import FPGMPruning, PolynomialRatio, rebuild
from tfcompress.quantization import MODES, clip_ranges, quantize_model, quantize_scope


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# The fine-tuning budget of QAT, given to the float control too.
FINE_TUNE_EPOCHS, FINE_TUNE_LR, BATCH = 10, 1e-3, 32


def _float_cnn(flavour, trained_cnn):
    """The trained digits CNN in ``flavour`` (Keras 3: the same architecture and weights)."""
    if not flavour.is_keras3:
        return trained_cnn
    model = compile_classifier(residual_cnn((16, 16, 1), width=16, flavour=flavour.name))
    model.set_weights(trained_cnn.get_weights())
    return model


def _fine_tune_compile(model, x, flavour=TF_KERAS):
    steps = FINE_TUNE_EPOCHS * int(np.ceil(len(x) / BATCH))
    schedule = flavour.module.optimizers.schedules.CosineDecay(FINE_TUNE_LR, steps)
    return compile_classifier(model, learning_rate=schedule)


@pytest.fixture(scope="module", params=[TF_KERAS, pytest.param(KERAS3, marks=pytest.mark.slow)],
                ids=lambda f: f.name)
def flavour_4bit(request):
    """The Keras of the 4-bit QAT run (Keras 3 trains in its own fit, with its optimizer)."""
    return request.param


@pytest.fixture(scope="module")
def qat_4bit(flavour_4bit, trained_cnn, digits):
    """The trained CNN after 4-bit/4-bit PACT QAT, with its ranges before training."""
    (x, y), _ = digits
    flavour_4bit.module.utils.set_random_seed(0)
    qat = quantize_model(_float_cnn(flavour_4bit, trained_cnn), 4, 4)
    qat = _fine_tune_compile(qat, x, flavour_4bit)
    for start in range(0, 32 * 32, 32):  # "auto" ranges calibrate on 32 training batches
        qat(x[start:start + 32], training=True)
    calibrated = clip_ranges(qat)  # from here on, only gradients move the ranges
    qat.fit(x, y, batch_size=BATCH, epochs=FINE_TUNE_EPOCHS, verbose=0)
    return qat, calibrated


@pytest.fixture(scope="module")
def float_control(flavour_4bit, trained_cnn, digits):
    """The float CNN fine-tuned with exactly QAT's extra budget (epochs, schedule, batch)."""
    (x, y), _ = digits
    keras = flavour_4bit.module
    keras.utils.set_random_seed(0)
    start = _float_cnn(flavour_4bit, trained_cnn)
    control = keras.models.clone_model(start)
    control.set_weights(start.get_weights())
    _fine_tune_compile(control, x, flavour_4bit).fit(x, y, batch_size=BATCH,
                                                     epochs=FINE_TUNE_EPOCHS, verbose=0)
    return control


# Accuracy may drop this much below the float control (450 test digits, 1 digit = 0.22 pt).
# Keras 3 gets 1.5 points: over training seeds 0 and 1 its QAT scored 97.3% and 98.2% where
# tf_keras scored 98.2% and 98.0% (float 98.4%), from identical calibrated models (see
# test_keras3_qat_computes_what_the_tfmot_model_computes): seed noise, not a different PACT.
MAX_DROP = {"tf_keras": 0.01, "keras3": 0.015}


def test_4bit_pact_moves_alphas_and_stays_within_one_point_of_float(
        qat_4bit, float_control, digits, flavour_4bit):
    qat, calibrated = qat_4bit
    _, (x_test, y_test) = digits
    learned = clip_ranges(qat)
    assert set(learned) == set(calibrated) and len(learned) >= 8
    moved = [name for name in learned if abs(learned[name][1] - calibrated[name][1]) > 1e-3]
    assert len(moved) >= len(learned) - 1, f"alphas that did not move: {set(learned) - set(moved)}"
    control_accuracy = _accuracy(float_control, x_test, y_test)
    assert control_accuracy > 0.9  # the control learned the task: the comparison means something
    assert _accuracy(qat, x_test, y_test) >= control_accuracy - MAX_DROP[flavour_4bit.name]


# With batch_norm="keep" the BatchNorms train on batch statistics through each Keras' own
# kernels (tf_keras' fused op, Keras 3's ops), which agree to float32 noise, not to the bit;
# 4-bit rounding flips amplify that noise to ~1e-3 of a range over the 8 calibration batches.
RANGE_RTOL = {"fold": 1e-5, "keep": 5e-3}


@pytest.mark.parametrize("batch_norm", sorted(RANGE_RTOL))
def test_keras3_qat_computes_what_the_tfmot_model_computes(trained_cnn, digits, batch_norm):
    """Second method: the same float weights quantized by tfmot (tf_keras) and by the Keras 3
    layers, calibrated on the same batches, have the same ranges and predictions."""
    (x, _), (x_test, _) = digits
    models = [quantize_model(_float_cnn(flavour, trained_cnn), 4, 4, batch_norm=batch_norm)
              for flavour in FLAVOURS]
    for qat in models:
        for start in range(0, 8 * 32, 32):
            qat(x[start:start + 32], training=True)
    ranges = [clip_ranges(qat) for qat in models]
    assert sorted(ranges[0]) == sorted(ranges[1]) and len(ranges[0]) == 10
    for name in ranges[0]:
        np.testing.assert_allclose(ranges[1][name], ranges[0][name],
                                   rtol=RANGE_RTOL[batch_norm], atol=1e-5)
    logits = [np.asarray(qat(x_test, training=False)) for qat in models]
    assert np.mean(np.argmax(logits[0], 1) == np.argmax(logits[1], 1)) >= 0.99
    assert np.median(np.abs(logits[0] - logits[1])) < 10 * RANGE_RTOL[batch_norm]


def test_keras3_qat_trains_like_the_tfmot_model(trained_cnn, digits):
    """The same weights and the same batches: Adam steps through the two implementations
    (tfmot wrappers, Keras 3 layers) give the same losses and ranges, so accuracy differences
    between the Kerases come from batch order and seeds, not from the QAT path. (BatchNorms
    folded: trained ones differ in float32 noise between the Kerases, which 4-bit rounding
    amplifies over two epochs.)"""
    (x, y), _ = digits
    x, y = x[:320], y[:320]
    histories, ranges = [], []
    for flavour in FLAVOURS:
        qat = compile_classifier(quantize_model(_float_cnn(flavour, trained_cnn), 4, 4,
                                                batch_norm="fold"), learning_rate=2e-4)
        history = qat.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        histories.append(history.history["loss"])
        ranges.append(clip_ranges(qat))
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-3)
    for name in ranges[0]:
        np.testing.assert_allclose(ranges[1][name], ranges[0][name], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("batch_norm", ["keep", "fold"])
def test_fused_activations_are_quantized_once(trained_cnn, flavour, batch_norm):
    qat = quantize_model(_float_cnn(flavour, trained_cnn), 4, 4, batch_norm=batch_norm)
    quantized = set(clip_ranges(qat))
    # Conv -> BN -> ReLU: one range, after the ReLU (TFLite fuses all three).
    assert "stem_relu" in quantized and not {"stem_conv", "stem_bn"} & quantized
    assert "block1_out" in quantized and "block1_add" not in quantized  # Add -> ReLU
    if batch_norm == "keep":  # Conv -> BN -> Add: the BatchNorm's result feeds the Add
        assert "block1b_bn" in quantized and "block1b_conv" not in quantized
    else:  # BatchNorms folded away: the Conv's result feeds the Add
        assert "block1b_conv" in quantized and not any("bn" in name for name in quantized)


def _pruned_in_fit(model, x, y):
    """The whole flow before QAT: FPGMPruning to half the channels during two epochs of
    ``fit``, then ``rebuild``."""
    steps = int(np.ceil(len(x) / BATCH))
    pruning = FPGMPruning(PolynomialRatio(0.0, 0.5, begin_step=0, end_step=steps,
                                          frequency=steps // 2))
    model = compile_classifier(model, learning_rate=5e-4)
    model.fit(x, y, batch_size=BATCH, epochs=2, callbacks=[pruning], verbose=0)
    assert pruning.pruned_ratio == pytest.approx(0.5, abs=0.05)
    return rebuild(model, pruning.masks)


@pytest.fixture(scope="module", params=FLAVOURS, ids=lambda f: f.name)
def int8_export(request, trained_cnn, digits, tmp_path_factory):
    """8-bit activations, 4-bit weights: QAT (trained with its Keras' optimizer), then an int8
    TFLite file converted from the fake-quant ranges alone (no representative data). The
    Keras 3 model goes through the whole flow first: pruned during fit, rebuilt."""
    (x, y), _ = digits
    flavour = request.param
    flavour.module.utils.set_random_seed(0)
    model = _float_cnn(flavour, trained_cnn)
    if flavour.is_keras3:
        model = _pruned_in_fit(model, x, y)
    qat = quantize_model(model, activation_bits=8, weight_bits=4)
    qat = compile_classifier(qat, learning_rate=5e-4)
    qat.fit(x, y, batch_size=32, epochs=2, verbose=0)
    path = to_tflite(qat, tmp_path_factory.mktemp("tflite") / "qat.tflite")
    return qat, path


def test_int8_tflite_has_no_float_compute_ops(int8_export):
    _, path = int8_export
    ops = tflite_ops(path)
    assert kind_of_ops(ops) == "int8"
    compute = [op for op in ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 7
    for op in compute:
        assert [t.dtype for t in op.inputs[:2]] == ["int8", "int8"], op
        assert op.outputs[0].dtype == "int8", op


def test_tflite_ranges_equal_the_learned_pact_ranges(int8_export):
    qat, path = int8_export
    ranges = activation_ranges(path)
    learned = clip_ranges(qat)
    checked = 0
    for layer, (low, high) in learned.items():
        # The op's name scope: tfmot's `quant_<layer>/`, Keras 3's `quant_<layer>_1/` (traced
        # twice); the input quantizer is `quantize_layer`.
        scope = "quantize_layer" if layer == "quantize_layer" else f"quant_{layer}"
        matches = [r for name, r in ranges.items() if re.search(rf"(^|/){scope}(_1)?/", name)]
        if not matches:
            continue  # e.g. a tensor TFLite fused away
        step = (high - low) / 255
        assert any(abs(r.min - low) <= step and abs(r.max - high) <= step for r in matches), \
            (layer, (low, high), matches)
        checked += 1
    assert checked >= len(learned) - 1


def test_tflite_agrees_with_the_keras_qat_model(int8_export, digits):
    qat, path = int8_export
    _, (x_test, _) = digits
    tflite = litert.run(path, x_test)
    keras_out = qat.predict(x_test, verbose=0)
    agreement = np.mean(np.argmax(tflite, 1) == np.argmax(keras_out, 1))
    assert agreement >= 0.99


def test_the_exported_qat_model_survives_a_keras_round_trip(int8_export, digits, tmp_path):
    qat, _ = int8_export
    _, (x_test, _) = digits
    path = tmp_path / "qat.keras"
    qat.save(path)
    with quantize_scope():
        restored = load_model(path)
    assert type(restored) is type(qat) and restored.count_params() == qat.count_params()
    np.testing.assert_array_equal(restored.predict(x_test, verbose=0),
                                  qat.predict(x_test, verbose=0))


def test_4bit_weights_are_on_the_4bit_grid_in_each_int8_channel(int8_export):
    """Narrow-range 4-bit weights take at most 2^4 - 1 = 15 values per output channel, stored
    in int8 as multiples of 127 // 7 = 18 (see tflite_mode): both worked out by hand. The
    first conv and the final Dense keep 8-bit weights (``first_last_bits=8``): off that grid."""
    _, path = int8_export
    interpreter = Interpreter(model_path=str(path))
    by_name = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    compute = [op for op in tflite_ops(path)
               if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 7
    for position, op in enumerate(compute):  # in execution order: the stem conv first
        kernel = interpreter.get_tensor(by_name[op.inputs[1].name])
        channels = kernel.reshape(-1, kernel.shape[-1]).T if op.name == "DEPTHWISE_CONV_2D" \
            else kernel.reshape(kernel.shape[0], -1)
        assert kernel.dtype == np.int8
        assert len(np.unique(kernel)) > 3  # not all zeros
        on_grid = not np.any(kernel.astype(np.int32) % 18)
        if position in (0, len(compute) - 1):
            assert not on_grid and op.name == ("CONV_2D", "FULLY_CONNECTED")[position > 0]
        else:
            assert on_grid and max(len(np.unique(c)) for c in channels) <= 15, np.unique(kernel)


def _bits(qat, flavour):
    """``{layer name: (weight bits, activation bits)}`` and the input quantizer's bits."""
    found, inputs = {}, []
    for layer in qat.layers:
        if flavour.is_keras3 and hasattr(layer, "weight_bits"):
            config = layer.get_config()
            found[layer.layer.name] = (config["weight_bits"], config["activation_bits"])
        elif hasattr(layer, "quantize_config"):
            config = layer.quantize_config
            found[layer.layer.name] = (config.weight_bits, config.activation_bits)
        elif layer.name.startswith("quantize_layer"):
            inputs.append(layer.quantizer.num_bits)
    return found, inputs


@pytest.mark.parametrize("output_range", ["track", "pact"])
def test_the_model_output_range_tracks_its_values_when_asked(flavour, output_range):
    model = _tiny_model(flavour)
    qat = quantize_model(model, 8, 8, output_range=output_range)
    tracking = set()
    for layer in qat.layers:
        config = layer.get_config() if flavour.is_keras3 and hasattr(layer, "weight_bits") \
            else getattr(getattr(layer, "quantize_config", None), "pact_options", {})
        if config.get("track_range"):
            tracking.add(layer.layer.name)
    assert tracking == ({model.layers[-1].name} if output_range == "track" else set())
    with pytest.raises(ValueError, match="output_range"):
        quantize_model(model, 8, 8, output_range="clip")


@pytest.mark.parametrize("first_last_bits", [8, 6, None])
def test_first_and_last_layers_keep_their_bits_at_low_bit_widths(flavour, first_last_bits):
    model = _tiny_model(flavour)  # input -> conv -> BN -> ReLU -> depthwise, add -> GAP -> dense
    conv, dense, depthwise, pool = (model.layers[i].name for i in (1, -1, 4, -2))
    qat = quantize_model(model, activation_bits=3, weight_bits=4,
                         first_last_bits=first_last_bits)
    found, inputs = _bits(qat, flavour)
    edge = first_last_bits or 0
    # The conv's result is fused (Conv -> BN -> ReLU): no range of its own, only weights.
    assert found[conv][0] == max(edge, 4) and conv not in clip_ranges(qat)
    assert found[dense] == (max(edge, 4), 8)  # logits: no layer reads them (see below)
    assert found[depthwise] == (4, 8) and inputs == [max(edge, 3)]  # it feeds the Add only
    assert found[pool] == (4, max(edge, 3))  # the dense layer's input
    assert _bits(quantize_model(model, 8, 8, first_last_bits=first_last_bits), flavour)[1] == [8]


@pytest.mark.parametrize("low_bit_activations", ["layer_inputs", "all"])
def test_low_activation_bits_go_to_what_weighted_layers_read(flavour, low_bit_activations):
    """Worked out on the graph by hand: the ReLU's result is read by the depthwise conv (low
    bits); the depthwise result is only an operand of the Add, and the Add's only reader is
    average pooling, whose result the Dense reads (low bits)."""
    model = _tiny_model(flavour)  # input -> conv -> BN -> ReLU -> depthwise, add -> GAP -> dense
    relu, depthwise, add, pool = (model.layers[i].name for i in (3, 4, 5, 6))
    qat = quantize_model(model, activation_bits=3, weight_bits=4, first_last_bits=None,
                         low_bit_activations=low_bit_activations)
    found, _ = _bits(qat, flavour)
    wide = 8 if low_bit_activations == "layer_inputs" else 3
    assert found[relu] == (4, 3) and found[pool] == (4, 3)
    assert found[depthwise] == (4, wide) and found[add] == (4, wide)
    assert found[model.layers[-1].name] == (4, wide)  # the logits
    with pytest.raises(ValueError, match="low_bit_activations"):
        quantize_model(model, 3, 3, low_bit_activations="weights")


def _range_learnings(qat, flavour):
    """``{range_learning: [tensor bits, ...]}`` over every PACT quantizer of ``qat``."""
    found = {}
    for layer in qat.layers:
        quantizers = [getattr(layer, "quantizer", None)]  # Keras 3 layers, tfmot input layer
        if hasattr(layer, "quantize_config"):  # tfmot wrappers
            quantizers = [q for _, q in layer.quantize_config.get_activations_and_quantizers(
                layer.layer)] + layer.quantize_config.get_output_quantizers(layer.layer)
        for q in quantizers:
            if hasattr(q, "range_learning") and (not flavour.is_keras3 or
                                                 not hasattr(layer, "weight_bits") or
                                                 layer.quantize_output):
                found.setdefault(q.range_learning, []).append(q.num_bits)
    return found


@pytest.mark.parametrize("activation_bits, learning", [(2, "lsq"), (3, "pact")])
def test_auto_range_learning_is_chosen_once_for_the_whole_model(flavour, activation_bits,
                                                                learning):
    """At 2 activation bits every range, the 8-bit edges' too, learns LSQ's way; above, PACT's;
    an explicit choice is kept."""
    model = _tiny_model(flavour)
    found = _range_learnings(quantize_model(model, activation_bits, 4), flavour)
    assert list(found) == [learning] and 8 in found[learning] and activation_bits in found[learning]
    explicit = _range_learnings(quantize_model(model, activation_bits, 4, range_learning="pact"),
                                flavour)
    assert list(explicit) == ["pact"]


def _tiny_model(flavour=TF_KERAS):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3)(x))


ROUND_TRIPS = sorted({(bits, MODES[bits % 3], "max") for bits in range(2, 9)}
                     | {(4, m, "max") for m in MODES}
                     | {(3, "relu", "learned"), (2, "symmetric", "learned_midrise")})


@pytest.mark.parametrize("bits, mode, weight_range", ROUND_TRIPS)
def test_save_and_load_in_every_format(bits, mode, weight_range, tmp_path, flavour):
    qat = compile_classifier(quantize_model(_tiny_model(flavour), bits, bits, mode=mode,
                                            weight_range=weight_range))
    data = np.random.default_rng(bits).normal(size=(8, 8, 8, 2)).astype(np.float32)
    qat.fit(data, np.arange(8) % 3, epochs=1, verbose=0)
    expected = qat.predict(data, verbose=0)
    # Keras 3 saves only .keras; its classes are registered, so no scope is needed.
    formats = ("qat.keras",) if flavour.is_keras3 else ("qat.keras", "qat.h5", "qat_savedmodel")
    for name in formats:
        qat.save(tmp_path / name)
        if flavour.is_keras3:
            restored = flavour.module.saving.load_model(tmp_path / name)
        else:
            with quantize_scope():
                restored = keras.models.load_model(tmp_path / name)
        np.testing.assert_array_equal(restored.predict(data, verbose=0), expected)
        assert clip_ranges(restored) == clip_ranges(qat)
        if flavour.is_keras3:  # .keras keeps the optimizer's state too
            assert int(restored.optimizer.iterations.numpy()) == 1


def test_unsupported_layers_are_listed_or_kept_float_on_request(flavour):
    keras, L = flavour.module, flavour.module.layers
    inputs = keras.Input((6,))
    x = L.Dense(4, name="dense_in")(inputs)
    x = L.LayerNormalization(name="norm")(x)
    model = keras.Model(inputs, L.Dense(2, name="dense_out")(x))
    with pytest.raises(ValueError, match=r"norm \(LayerNormalization\).*skip_unsupported=True"):
        quantize_model(model)
    qat = quantize_model(model, skip_unsupported=True)
    assert type(qat.get_layer("norm")) is L.LayerNormalization
    assert "dense_out" in clip_ranges(qat)
    qat = quantize_model(model, exclude=["norm", "dense_out"])
    assert "dense_out" not in clip_ranges(qat)
    with pytest.raises(ValueError, match="not in the model"):
        quantize_model(model, exclude=["nope"])
    qat = quantize_model(model, exclude="norm")  # one name, not its characters
    assert type(qat.get_layer("norm")) is L.LayerNormalization
    with pytest.raises(TypeError, match="exclude"):
        quantize_model(model, exclude=[3])
    with pytest.raises(TypeError, match="skip_unsupported"):
        quantize_model(model, skip_unsupported="yes")


def test_bad_models_get_clear_errors(flavour):
    class Subclassed(flavour.module.Model):
        def call(self, x):
            return x

    sub = Subclassed()
    sub.build((None, 3))
    with pytest.raises(ValueError, match="subclassed"):
        quantize_model(sub)
    with pytest.raises(ValueError, match="from 2 to 8"):
        quantize_model(_tiny_model(flavour), activation_bits=1)
    with pytest.raises(TypeError, match="Unknown PACT option"):
        quantize_model(_tiny_model(flavour), alpha=2.0)
    with pytest.raises(TypeError, match="Keras model"):
        quantize_model("model.keras")


def test_keras3_qat_needs_the_tensorflow_backend(monkeypatch):
    from tfcompress import _keras

    monkeypatch.setattr(_keras, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="TensorFlow backend.*KERAS_BACKEND"):
        quantize_model(_tiny_model(_keras.KERAS3))


@pytest.mark.parametrize("name", ["tfmot.h5", "tfmot_savedmodel"])
def test_plain_tfmot_models_still_load_inside_the_scope(name, tmp_path):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(_tiny_model())
    data = np.random.default_rng(0).normal(size=(4, 8, 8, 2)).astype(np.float32)
    qat.save(tmp_path / name)
    with quantize_scope():
        restored = keras.models.load_model(tmp_path / name)
    np.testing.assert_allclose(restored.predict(data, verbose=0), qat.predict(data, verbose=0),
                               atol=1e-6)


def test_keras3_ops_calls_are_refused_or_kept_float_on_request():
    from tfcompress._keras import keras3

    inputs = keras3.Input((6,))
    x = keras3.layers.Dense(4, name="dense")(inputs)
    model = keras3.Model(inputs, keras3.layers.Dense(2, name="out")(x + x))  # `+`: an op
    with pytest.raises(ValueError, match="keras.ops.*skip_unsupported=True"):
        quantize_model(model)
    qat = quantize_model(model, skip_unsupported=True, alpha_init=8.0)
    data = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    assert sorted(clip_ranges(qat)) == ["dense", "out", "quantize_layer"]
    # 8 bits on [-8, 8] (step 1/16) at three tensors: within a few steps of the float model.
    np.testing.assert_allclose(qat(data), model(data), atol=0.25)
