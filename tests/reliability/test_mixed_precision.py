"""Mixed precision: pruning works in ``mixed_float16``; QAT and TFLite export refuse it clearly."""

import numpy as np
import pytest

from tfcompress import export, pruning, quantization
from tfcompress._keras import keras
from tfcompress.models import compile_classifier, residual_cnn


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((32, 8, 8, 1), np.float32), rng.integers(0, 10, 32)


def test_pruning_is_exact_in_mixed_float16(mixed_float16, data):
    x, _ = data
    model = residual_cnn((8, 8, 1), width=8)
    assert model.get_layer("stem_conv").compute_dtype == "float16"
    masks = pruning.fpgm_masks(model, 0.5)
    pruning.apply_masks(model, masks)
    slim = pruning.rebuild(model, masks)
    assert slim.get_layer("stem_conv").compute_dtype == "float16"
    assert slim.get_layer("stem_conv").filters == 4
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-2)


def test_fpgm_callback_trains_in_mixed_float16(mixed_float16, data):
    x, y = data
    model = compile_classifier(residual_cnn((8, 8, 1), width=8))
    callback = pruning.FPGMPruning(0.5, mode="hard")
    history = model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)
    assert history.history["pruned_ratio"] == [0.5]
    assert np.isfinite(history.history["loss"][0])
    kernel = model.get_layer("stem_conv").kernel.numpy()
    assert (np.abs(kernel).sum(axis=(0, 1, 2)) == 0).sum() == 4
    assert pruning.rebuild(model, callback.masks).get_layer("stem_conv").filters == 4


def test_qat_refuses_a_mixed_precision_model_with_the_fix(mixed_float16):
    fix = r"set_global_policy\('float32'\)"
    with pytest.raises(ValueError, match=r"(?s)needs float32.*stem_conv.*" + fix):
        quantization.quantize_model(residual_cnn((8, 8, 1), width=8))


def test_qat_refuses_a_float32_model_under_a_mixed_global_policy():
    model = residual_cnn((8, 8, 1), width=8)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match=r"global dtype policy is 'mixed_float16'"):
            quantization.quantize_model(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_tflite_export_refuses_float16_compute_and_the_float32_copy_works(mixed_float16, data,
                                                                          tmp_path):
    model = residual_cnn((8, 8, 1), width=8)
    with pytest.raises(ValueError, match=r"float16 \(mixed precision\).*float32 copy"):
        export.to_tflite(model, tmp_path / "m.tflite", None)
    assert not (tmp_path / "m.tflite").exists()
    keras.mixed_precision.set_global_policy("float32")  # the fix the message gives
    float_model = residual_cnn((8, 8, 1), width=8)
    float_model.set_weights(model.get_weights())
    path = export.to_tflite(float_model, tmp_path / "m.tflite", None)
    assert export.verify(float_model, path, data[0]).passed
