"""Every example runs in its quick mode and delivers what its docstring promises.

Quick mode trains for a few steps only, so accuracies are checked to be real fractions and
the files to be what the example says it writes, not to be good.
"""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tfcompress.export import litert, quantization_kind, tflite_ops

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def _numbers(line: str) -> list:
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]\d+)?", line)]


def _row(stdout: str, label: str) -> list:
    """The numbers of the first printed line that starts with ``label``."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(label)][:1]
    return _numbers(line[len(label):])


def _accuracy(value: float) -> float:
    assert 0.0 <= value <= 1.0, value
    return value


def _runs(path: pathlib.Path, input_shape: tuple, classes: int) -> None:
    """The file is a TFLite model that LiteRT runs on a batch of the input shape."""
    x = np.random.default_rng(0).uniform(size=(2,) + input_shape).astype(np.float32)
    out = litert.run(path, x)
    assert out.shape == (2, classes) and np.isfinite(out).all()


def check_custom_training_loop(stdout: str, out: pathlib.Path) -> None:
    epochs = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert "pruned_ratio 0.000" in epochs[0] and "pruned_ratio 0.500" in epochs[-1]
    masked, slim = _row(stdout, "masked (trained)"), _row(stdout, "slim (rebuilt)")
    # The masked model keeps every weight, the rebuilt one is smaller with the same MACs.
    assert slim[1] < masked[1] and slim[2] == masked[2]
    # Same outputs: accuracies within one test sample of 450.
    assert abs(_accuracy(masked[0]) - _accuracy(slim[0])) <= 1.5 / 450
    assert _accuracy(_row(stdout, "slim TFLite")[0]) == pytest.approx(slim[0], abs=1.5 / 450)
    _runs(out / "custom_loop_slim.tflite", (16, 16, 1), 10)
    assert quantization_kind(out / "custom_loop_slim.tflite") == "float32"


def check_digits_end_to_end(stdout: str, out: pathlib.Path) -> None:
    for stage in ("float", "pruned (masked)", "slim (rebuilt)", "QAT 8-bit (Keras)", "TFLite int8"):
        _accuracy(_row(stdout, stage)[0])
    assert _row(stdout, "slim (rebuilt)")[1] < _row(stdout, "float")[1]
    assert "parity PASSED" in stdout and "faster" in stdout
    for name in ("float.tflite", "slim_float.tflite", "slim_int8.tflite"):
        _runs(out / name, (16, 16, 1), 10)
    assert quantization_kind(out / "slim_int8.tflite") == "int8"
    assert (out / "report.md").read_text().startswith("# tfcompress demo report")


def check_pact_digits(stdout: str, out: pathlib.Path) -> None:
    float_acc, float_bytes = _row(stdout, "float ")
    int8_acc, int8_bytes = _row(stdout, "PACT int8 TFLite")
    _accuracy(float_acc), _accuracy(int8_acc), _accuracy(_row(stdout, "PACT 4/4 QAT (Keras)")[0])
    assert int8_bytes == (out / "pact4_int8.tflite").stat().st_size < float_bytes
    assert float_bytes == (out / "float.tflite").stat().st_size
    ranges = [_numbers(line.split("[")[1]) for line in stdout.splitlines()
              if line.startswith("  ") and "[" in line]
    assert ranges and all(low < high for low, high in ranges)
    assert quantization_kind(out / "pact4_int8.tflite") == "int8"
    _runs(out / "pact4_int8.tflite", (16, 16, 1), 10)


def check_prune_mobilenetv2(stdout: str, out: pathlib.Path) -> None:
    original, slim = _row(stdout, "original "), _row(stdout, "slim ")
    assert slim[0] < original[0] and slim[1] < original[1]  # params, MACs
    exact, spread = _numbers(stdout.split("exactness: max |masked - slim| = ")[1].splitlines()[0])
    assert exact <= 1e-3 * spread  # the rebuilt model computes what the masked one computes
    assert "parity PASSED" in stdout
    assert "rebuilt as: keras Functional" in stdout  # Keras 3 in, Keras 3 out
    assert [op.name for op in tflite_ops(out / "mobilenetv2_slim.tflite")].count("CONV_2D") > 30
    _runs(out / "mobilenetv2_slim.tflite", (64, 64, 3), 100)


def check_tfmot_way(stdout: str, out: pathlib.Path) -> None:
    found = re.search(r"float test accuracy ([\d.]+), QAT \(Keras\) accuracy ([\d.]+), "
                      r"TFLite accuracy ([\d.]+), tfmot_way_int8.tflite ([\d,]+) bytes", stdout)
    float_acc, qat_acc, tflite_acc, size = _numbers(" ".join(found.groups()))
    for value in (float_acc, qat_acc, tflite_acc):
        _accuracy(value)
    assert size == (out / "tfmot_way_int8.tflite").stat().st_size
    assert "parity " in stdout
    for name in ("conv1", "conv2", "logits"):  # the annotated layers learned PACT ranges
        assert re.search(rf"^  \S*{name}\S* +\[", stdout, re.M), name
    assert quantization_kind(out / "tfmot_way_int8.tflite") == "int8"
    _runs(out / "tfmot_way_int8.tflite", (16, 16, 1), 10)


CHECKS = {
    "custom_training_loop.py": check_custom_training_loop,
    "digits_end_to_end.py": check_digits_end_to_end,
    "pact_digits.py": check_pact_digits,
    "prune_mobilenetv2.py": check_prune_mobilenetv2,
    "tfmot_way.py": check_tfmot_way,
}


def test_every_example_has_a_check():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CHECKS)


def test_examples_use_only_the_public_api():
    for script in EXAMPLES.glob("*.py"):
        assert not re.search(r"tfcompress\._|from tfcompress import _", script.read_text()), script


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs_in_quick_mode(name, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    CHECKS[name](result.stdout, tmp_path / "out")
