"""Resuming PACT QAT with ``BackupAndRestore``: calibration state and clip ranges survive.

(FPGM pruning resume is covered in tests/pruning/test_callback.py.)
"""

import numpy as np
import pytest

from tfcompress._keras import keras
from tfcompress.models import compile_classifier, residual_cnn
from tfcompress.quantization import clip_ranges, quantize_model

CALIBRATION_STEPS = 6  # 4 batches per epoch: calibration spans the interruption


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated preemption")


def _calibrated_steps(model):
    return sorted({float(w.numpy()) for w in model.weights if "calibrated_steps" in w.name})


def test_pact_qat_resumes_mid_calibration_like_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1), np.float32), rng.integers(0, 10, 64)
    float_weights = residual_cnn((8, 8, 1), width=4).get_weights()

    def run(backup, extra=()):
        base = residual_cnn((8, 8, 1), width=4)
        base.set_weights(float_weights)
        model = compile_classifier(quantize_model(base, 4, 4, calibration_steps=CALIBRATION_STEPS))
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                            callbacks=[keras.callbacks.BackupAndRestore(backup), *extra])
        return model, history

    reference, reference_history = run(str(tmp_path / "reference"))
    with pytest.raises(RuntimeError, match="preemption"):
        interrupted, _ = run(str(tmp_path / "resumed"), [Interrupt()])
    resumed, resumed_history = run(str(tmp_path / "resumed"))  # a new model, as after a restart

    assert resumed_history.epoch == [1, 2]
    assert _calibrated_steps(resumed) == [float(CALIBRATION_STEPS)]  # not restarted from 0
    ranges, expected = clip_ranges(resumed), clip_ranges(reference)
    assert list(ranges.values()) == pytest.approx(list(expected.values()), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(resumed_history.history["loss"],
                               reference_history.history["loss"][1:], rtol=1e-4)
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
