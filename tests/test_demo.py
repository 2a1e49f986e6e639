"""``tfcompress demo --quick`` end to end, in process, plus its option checks and report.

The expectations are derived without the demo's own code: parameter and MAC counts from
the residual CNN's layer shapes by hand, the int8 op list from TensorFlow's flatbuffer
analyzer, accuracy from a bare LiteRT interpreter, sizes from ``os.path.getsize``.
"""

import contextlib
import dataclasses
import io
import os
import re
import sys

import numpy as np
import pytest

import tfcompress.demo
from tfcompress.cli import main
from tfcompress.datasets import load_digits
from tfcompress.demo import DemoConfig
from tfcompress.demo import report as demo_report
from tfcompress.export import load_model

STAGES = ["float", "pruned (masked)", "slim (rebuilt)", "QAT 8-bit (Keras)", "TFLite int8"]
TFLITE_FILES = ["float.tflite", "slim_float.tflite", "slim_int8.tflite"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Runs ``tfcompress demo --quick`` once; returns (output folder, stdout, DemoResult)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    results = []
    real_run_demo = tfcompress.demo.run_demo

    def recording_run_demo(*args, **kwargs):
        results.append(real_run_demo(*args, **kwargs))
        return results[-1]

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(tfcompress.demo, "run_demo", recording_run_demo)
        status = main(["demo", "--quick", "--output", str(out)])
    assert status == 0, stdout.getvalue()[-2000:]
    return out, stdout.getvalue(), results[0]


def _table(stdout: str) -> dict:
    """``{stage: [cells...]}`` of the table the CLI printed (cells split on 2+ spaces)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = {}
    for line in lines[start + 2:start + 2 + len(STAGES)]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def _by_hand(c0: int, c1: int, c2: int, c3: int, classes: int = 10):
    """(params, MACs) of ``residual_cnn`` on 16x16x1 inputs from its channel counts.

    ``c0``: stem, block1b and dw (tied by the residual add and the depthwise conv);
    ``c1``: block1a; ``c2``: block2a; ``c3``: block2b. Convolutions are 3x3 without bias,
    each followed by a BatchNorm (4 parameters per channel); block2a has stride 2 (8x8).
    """
    convs = [(1, c0, 256), (c0, c1, 256), (c1, c0, 256), (c0, c2, 64), (c2, c3, 64)]
    params = sum(9 * cin * cout + 4 * cout for cin, cout, _ in convs)
    macs = sum(9 * cin * cout * positions for cin, cout, positions in convs)
    params += 9 * c0 + 4 * c0 + c3 * classes + classes  # depthwise + BN, logits
    macs += 9 * c0 * 256 + c3 * classes
    return params, macs


def test_demo_writes_models_report_and_plots(demo):
    out, _, _ = demo
    names = TFLITE_FILES + ["report.md", "training.png", "channels.png"]
    for name in names:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    assert (out / "slim_saved_model" / "saved_model.pb").is_file()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in TFLITE_FILES:
        assert (out / name).read_bytes()[4:8] == b"TFL3", name
    assert not list(out.glob(".*.tmp")), "atomic writes left temporary files"


def test_table_and_report_have_every_stage(demo):
    out, stdout, result = demo
    assert [stage.name for stage in result.stages] == STAGES
    report = (out / "report.md").read_text()
    assert list(_table(stdout)) == STAGES
    for name in STAGES:
        assert f"| {name} |" in report
    assert "faster" in stdout and "parity PASSED" in report
    assert "![Channels per layer](channels.png)" in report


def test_table_compares_tflite_files_with_tflite_files(demo):
    out, stdout, _ = demo
    table = _table(stdout)
    files = {stage: cells[3] for stage, cells in table.items() if len(cells) > 4}
    assert files == {"float": "float.tflite", "slim (rebuilt)": "slim_float.tflite",
                     "TFLite int8": "slim_int8.tflite"}
    sizes = {name: os.path.getsize(out / name) / 1024 for name in TFLITE_FILES}
    for name, kib in sizes.items():
        assert f"{name} {kib:.1f} KiB" in stdout
    # What pruning and int8 buy, measured on the files themselves.
    assert sizes["slim_float.tflite"] < sizes["float.tflite"]
    assert sizes["slim_int8.tflite"] < sizes["slim_float.tflite"]
    saved = sum(os.path.getsize(os.path.join(root, f))
                for root, _, names in os.walk(out / "slim_saved_model") for f in names)
    (line,) = [line for line in stdout.splitlines() if line.startswith("slim SavedModel")]
    assert f"{saved / 1024:.1f} KiB" in line and "not comparable with .tflite" in line


def test_params_and_macs_match_the_layer_shapes(demo):
    out, stdout, result = demo
    width = result.config.width
    float_params, float_macs = _by_hand(width, width, 2 * width, 2 * width)
    slim_model = load_model(out / "slim_saved_model")
    filters = {layer.name: layer.filters for layer in slim_model.layers
               if hasattr(layer, "filters")}
    assert filters["stem_conv"] == filters["block1b_conv"]  # tied by the residual add
    slim_params, slim_macs = _by_hand(filters["stem_conv"], filters["block1a_conv"],
                                      filters["block2a_conv"], filters["block2b_conv"])
    assert slim_model.count_params() == slim_params
    expected = {"float": (float_params, float_macs), "pruned (masked)": (float_params, slim_macs),
                "slim (rebuilt)": (slim_params, slim_macs),
                "QAT 8-bit (Keras)": (slim_params, slim_macs),
                "TFLite int8": (slim_params, slim_macs)}
    for stage, cells in _table(stdout).items():
        assert (int(cells[1].replace(",", "")), int(cells[2].replace(",", ""))) == \
            expected[stage], stage
    assert slim_macs < float_macs and slim_params < float_params
    assert result.channels["logits"] == (10, 10)
    assert result.channels["block2b_conv"] == (2 * width, filters["block2b_conv"])


def test_masked_model_and_slim_model_agree(demo):
    _, _, result = demo
    masked, slim = result.stage("pruned"), result.stage("slim")
    assert masked.accuracy == pytest.approx(slim.accuracy, abs=1.5 / 450)  # same outputs


def test_pruned_ratio_reaches_the_target(demo):
    _, _, result = demo
    history = result.history
    assert len(history["stage"]) == len(history["accuracy"]) == len(history["pruned_ratio"]) == 4
    assert history["pruned_ratio"][0] == 0.0
    assert history["pruned_ratio"][-1] == pytest.approx(0.5)


def _analyzer_compute_ops(path) -> list:
    """Ops reading a non-constant int8 tensor, from TensorFlow's own flatbuffer analyzer."""
    import tensorflow as tf

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path))
    text = text.getvalue().split("Tensors of Subgraph#0")
    types = {int(i): (kind, " RO " in line) for line in text[1].splitlines()
             for i, kind in re.findall(r"T#(\d+)\(.*type:(\w+)", line)}
    ops = []
    for name, inputs in re.findall(r"Op#\d+ (\w+)\(([^)]*)\)", text[0]):
        activations = [types[int(i)] for i in re.findall(r"T#(\d+)", inputs)
                       if int(i) in types and not types[int(i)][1]]
        if name not in ("QUANTIZE", "DEQUANTIZE") and all(k == "INT8" for k, _ in activations):
            ops.append(name)
        else:
            assert name in ("QUANTIZE", "DEQUANTIZE"), f"{name} computes in float"
    return ops


def test_tflite_file_computes_in_int8(demo):
    out, _, result = demo
    ops = _analyzer_compute_ops(out / "slim_int8.tflite")
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"} <= set(ops)
    assert result.int8_compute_ops == ops
    assert result.parity.passed and result.parity.top1_agreement >= 0.99


def test_int8_accuracy_from_a_bare_interpreter(demo):
    from ai_edge_litert.interpreter import Interpreter

    out, stdout, _ = demo
    _, (x_test, y_test) = load_digits(size=16)
    interpreter = Interpreter(model_path=str(out / "slim_int8.tflite"))
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], list(x_test.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x_test)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    accuracy = float(np.mean(logits.argmax(-1) == y_test))
    shown = float(_table(stdout)["TFLite int8"][0])  # 3 significant digits
    assert shown == pytest.approx(accuracy, abs=5.1e-4)


def test_speedups_are_the_ratios_of_the_timed_medians(demo):
    _, stdout, result = demo
    table = _table(stdout)
    medians = {stage: float(cells[-1]) for stage, cells in table.items() if len(cells) > 4}
    assert set(medians) == {"float", "slim (rebuilt)", "TFLite int8"}
    assert all(median > 0 for median in medians.values())
    (line,) = [line for line in stdout.splitlines() if line.startswith("latency ")]
    total = float(re.search(r"([\d.]+)x faster", line).group(1))
    pruning = float(re.search(r"slim float TFLite, ([\d.]+)x\)", line).group(1))
    # The table shows 3 significant digits, the summary 2 decimals.
    assert total == pytest.approx(medians["float"] / medians["TFLite int8"], rel=0.02)
    assert pruning == pytest.approx(medians["float"] / medians["slim (rebuilt)"], rel=0.02)
    assert result.speedup == pytest.approx(total, abs=0.006)


def test_report_without_matplotlib_says_why(demo, tmp_path, monkeypatch):
    _, _, result = demo
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    copy = dataclasses.replace(result, config=dataclasses.replace(result.config, output=tmp_path))
    text = demo_report.write_report(copy).read_text()
    assert text.count("matplotlib is not installed") == 2
    assert not list(tmp_path.glob("*.png"))
    assert "| TFLite int8 |" in text


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "1"], "outside [0, 1)"),
    (["--bits", "9"], "invalid choice: 9"),
    (["--epochs", "0"], "must be >= 1"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_options_exit_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "report"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--output", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tfcompress demo: error: Cannot create the output folder")
    assert "--output" in err and err.count("\n") == 1


@pytest.mark.parametrize("field, value", [
    ("bits", 1), ("bits", 9), ("ratio", 1.0), ("ratio", -0.1), ("epochs", 0), ("width", 0),
    ("latency_runs", 0),
])
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        DemoConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("bits", 4.0), ("ratio", True), ("ratio", "0.5"), ("epochs", "3"),
])
def test_config_rejects_values_of_the_wrong_type(field, value):
    with pytest.raises(TypeError, match=f"`{field}`"):
        DemoConfig(**{field: value})


def test_quick_mode_runs_one_epoch_per_stage():
    assert set(DemoConfig(quick=True).stage_epochs().values()) == {1}
    epochs = DemoConfig(epochs=9).stage_epochs()
    assert epochs == {"float": 9, "prune": 6, "finetune": 3, "qat": 4}


def test_markdown_table_aligns_numbers():
    table = demo_report.markdown_table(["layer", "params"], [["conv", 1200], ["dense", ""]])
    assert table.splitlines() == ["| layer | params |", "|:--|--:|", "| conv | 1,200 |",
                                  "| dense |  |"]


def test_keras3_demo_runs_the_whole_pipeline_on_keras3(tmp_path):
    """``--keras 3``: the same stages on Keras 3 models; the slim model's params and MACs
    match its layer shapes and the int8 file computes in int8. (One quick epoch leaves the
    logits nearly flat, so int8/Keras top-1 agreement is not required here; the full demo's
    is in benchmarks/RESULTS.md.)"""
    from tfcompress.demo import run_demo

    result = run_demo(DemoConfig(output=tmp_path / "run", quick=True, keras="3"), verbose=0,
                      log=lambda line: None)
    assert result.config.keras == "keras3"
    assert [stage.name for stage in result.stages] == STAGES
    width = result.config.width
    channels = {name: after for name, (_, after) in result.channels.items()}
    slim_params, slim_macs = _by_hand(channels["stem_conv"], channels["block1a_conv"],
                                      channels["block2a_conv"], channels["block2b_conv"])
    assert (result.stage("slim").params, result.stage("slim").macs) == (slim_params, slim_macs)
    assert (result.stage("float").params, result.stage("float").macs) == _by_hand(
        width, width, 2 * width, 2 * width)
    ops = _analyzer_compute_ops(tmp_path / "run" / "slim_int8.tflite")
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"} <= set(ops)
