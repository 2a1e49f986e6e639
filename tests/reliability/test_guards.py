"""Parity guards on the whole pipeline: prune -> rebuild -> export -> verify.

``export.verify`` itself is unit-tested in tests/export/test_verify.py; here it guards the
pipeline: an exact rebuild passes, and an export that silently computes something else fails.
"""

import numpy as np
import pytest

from tfcompress import export, pruning


def test_verify_passes_exact_pipelines_and_catches_silent_divergence(fresh_cnn, digits, tmp_path):
    _, (x_test, _) = digits
    x_test = x_test[:200]
    dense_path = export.to_tflite(fresh_cnn, tmp_path / "dense.tflite", quantize=None)
    masks = pruning.fpgm_masks(fresh_cnn, 0.5)
    pruning.apply_masks(fresh_cnn, masks)
    slim_path = export.to_tflite(pruning.rebuild(fresh_cnn, masks), tmp_path / "slim.tflite",
                                 quantize=None)

    report = export.verify(fresh_cnn, slim_path, x_test)  # masked Keras vs rebuilt TFLite
    assert report.passed and report.kind == "float32"
    assert report.max_abs_diff <= report.atol

    # The dense file no longer matches the masked model: pruning changed its outputs.
    with pytest.raises(export.ParityError) as info:
        export.verify(fresh_cnn, dense_path, x_test, min_agreement=1.0)
    assert "exceeds the tolerance" in str(info.value)
    assert not info.value.report.passed and info.value.report.samples == len(x_test)


def test_int8_export_of_the_pruned_model_reports_agreement_and_fallbacks(
        fresh_cnn, digits, tmp_path):
    (x_train, _), (x_test, _) = digits
    masks = pruning.fpgm_masks(fresh_cnn, 0.5)
    pruning.apply_masks(fresh_cnn, masks)
    slim = pruning.rebuild(fresh_cnn, masks)
    path = export.to_tflite(slim, tmp_path / "slim_int8.tflite", "int8",
                            representative_data=x_train[:64])
    report = export.verify(slim, path, x_test[:200], min_agreement=0.9)
    assert report.kind == "int8"
    assert report.float_fallback_ops == []  # every op of the residual CNN has an int8 kernel
    assert report.top1_agreement >= 0.9
    assert np.isfinite(report.max_abs_diff)
