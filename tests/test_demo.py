"""``tfcompress demo --quick`` end to end, in process, plus its option checks and report."""

import contextlib
import dataclasses
import io

import pytest

import tfcompress.demo
from tfcompress.cli import main
from tfcompress.demo import DemoConfig
from tfcompress.demo import report as demo_report
from tfcompress.export import load_model, quantization_kind, tflite_ops
from tfcompress.export.flatbuffer import CONVERSION_OPS
from tfcompress.pruning import count_params

STAGES = ["float", "pruned (masked)", "slim (rebuilt)", "QAT 8-bit (Keras)", "TFLite int8"]


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


def test_demo_writes_models_report_and_plots(demo):
    out, _, _ = demo
    for name in ("float.tflite", "slim_int8.tflite", "report.md", "training.png", "channels.png"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    assert (out / "slim_saved_model" / "saved_model.pb").is_file()
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp")), "atomic writes left temporary files"


def test_table_and_report_have_every_stage(demo):
    out, stdout, result = demo
    assert [stage.name for stage in result.stages] == STAGES
    report = (out / "report.md").read_text()
    for name in STAGES:
        assert f"\n{name} " in stdout
        assert f"| {name} |" in report
    assert "faster" in stdout and "parity PASSED" in report
    assert "![Channels per layer](channels.png)" in report


def test_slim_model_is_smaller_and_exact(demo):
    out, _, result = demo
    dense, masked, slim = result.stage("float"), result.stage("pruned"), result.stage("slim")
    assert slim.params < dense.params and slim.macs < dense.macs
    assert masked.macs == slim.macs  # the MACs the callback promises are the ones rebuilt
    assert masked.accuracy == pytest.approx(slim.accuracy, abs=1.5 / 450)  # same outputs
    assert count_params(load_model(out / "slim_saved_model")) == slim.params
    assert all(after < before for name, (before, after) in result.channels.items()
               if name != "logits")
    assert result.channels["logits"] == (10, 10)


def test_pruned_ratio_reaches_the_target(demo):
    _, _, result = demo
    history = result.history
    assert len(history["stage"]) == len(history["accuracy"]) == len(history["pruned_ratio"]) == 4
    assert history["pruned_ratio"][0] == 0.0
    assert history["pruned_ratio"][-1] == pytest.approx(0.5)


def test_tflite_file_computes_in_int8(demo):
    out, _, result = demo
    path = out / "slim_int8.tflite"
    assert quantization_kind(path) == "int8"
    compute = [op for op in tflite_ops(path) if op.name not in CONVERSION_OPS]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"} <= {op.name for op in compute}
    assert not [op.name for op in compute if op.computes_in_float]
    assert result.parity.passed and result.parity.top1_agreement >= 0.99
    assert result.int8_compute_ops == [op.name for op in compute]
    assert result.stages[-1].latency_ms > 0 and result.speedup > 0


def test_report_without_matplotlib_says_why(demo, tmp_path, monkeypatch):
    _, _, result = demo
    monkeypatch.setattr(demo_report, "_pyplot", lambda: None)
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
    ("bits", 1), ("bits", 9), ("bits", 4.0), ("ratio", 1.0), ("ratio", -0.1), ("ratio", True),
    ("epochs", 0), ("width", 0), ("latency_runs", 0),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        DemoConfig(**{field: value})


def test_quick_mode_runs_one_epoch_per_stage():
    assert set(DemoConfig(quick=True).stage_epochs().values()) == {1}
    epochs = DemoConfig(epochs=9).stage_epochs()
    assert epochs == {"float": 9, "prune": 6, "finetune": 3, "qat": 4}


def test_markdown_table_aligns_numbers():
    table = demo_report.markdown_table(["layer", "params"], [["conv", 1200], ["dense", ""]])
    assert table.splitlines() == ["| layer | params |", "|:--|--:|", "| conv | 1,200 |",
                                  "| dense |  |"]
