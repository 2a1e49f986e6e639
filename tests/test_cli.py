"""End to end runs of the ``tfcompress`` command on tiny models in tmp_path."""

import subprocess
import sys

import numpy as np
import pytest

from tfcompress._keras import FLAVOURS, flavour_of, keras
from tfcompress.cli import COMMANDS, build_parser, main
from tfcompress.export import quantization_kind


def _tiny_model(module=keras) -> "keras.Model":
    """Conv-BN-ReLU-Conv-ReLU-GAP-Dense in the Keras ``module`` (tf_keras by default)."""
    return module.Sequential(
        [
            module.Input((8, 8, 1)),
            module.layers.Conv2D(8, 3, name="conv1"),
            module.layers.BatchNormalization(name="bn1"),
            module.layers.ReLU(name="relu1"),
            module.layers.Conv2D(16, 3, name="conv2"),
            module.layers.ReLU(name="relu2"),
            module.layers.GlobalAveragePooling2D(name="gap"),
            module.layers.Dense(3, name="logits"),
        ],
        name="tiny",
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model saved by each Keras (``tiny.keras`` by tf_keras, ``keras3/tiny.keras``
    by Keras 3) and calibration samples, shared by the module's tests."""
    folder = tmp_path_factory.mktemp("cli")
    for flavour in FLAVOURS:
        flavour.module.utils.set_random_seed(0)
        subfolder = folder / "keras3" if flavour.is_keras3 else folder
        subfolder.mkdir(exist_ok=True)
        _tiny_model(flavour.module).save(subfolder / "tiny.keras")
    samples = np.random.default_rng(0).uniform(0, 1, (48, 8, 8, 1)).astype(np.float32)
    np.save(folder / "x.npy", samples)
    return folder


@pytest.fixture
def tiny_file(files, flavour):
    """The tiny model's ``.keras`` file written by each Keras in turn."""
    return files / "keras3" / "tiny.keras" if flavour.is_keras3 else files / "tiny.keras"


def _error_line_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _error_line(capsys) -> str:
    return _error_line_of(capsys.readouterr().err)


def test_every_command_is_registered_with_help():
    parser = build_parser()
    names = [command.name for command in COMMANDS]
    assert names[:4] == ["inspect", "prune", "export", "bench"]
    for name in names:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_inspect_lists_layers_totals_groups_and_barriers(tiny_file, capsys):
    assert main(["inspect", str(tiny_file)]) == 0
    printed = capsys.readouterr().out
    layers, groups = printed.split("channel groups")
    rows = {line.split()[0]: line.split() for line in layers.splitlines() if line.strip()}
    assert rows["conv1"][1:] == ["Conv2D", "8", "80", "2,592"]  # 6x6 x 3x3x1 x 8
    assert rows["conv2"][1:] == ["Conv2D", "16", "1,168", "18,432"]  # 4x4 x 3x3x8 x 16
    assert rows["bn1"][1:] == ["BatchNormalization", "8", "32", "0"]
    # params 80 + 32 + 1,168 + (16 x 3 + 3); MACs 2,592 + 18,432 + 16 x 3 (logits)
    assert "total: 1,331 params, 21,072 MACs per example" in printed
    assert [line.split()[:3] for line in groups.splitlines()[3:6]] == [
        ["conv1", "8", "yes"], ["conv2", "16", "yes"], ["logits", "3", "no"]]
    assert "  logits: logits: reaches a model output" in printed


def test_inspect_names_the_layer_that_blocks_a_group(tmp_path, capsys):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t[..., ::-1], name="reverse")(x)  # mixes channels
    x = keras.layers.Lambda(lambda t: 2.0 * t, name="double")(x)  # channel-wise
    outputs = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(tmp_path / "lambda.h5")
    assert main(["inspect", str(tmp_path / "lambda.h5")]) == 0
    printed = capsys.readouterr().out
    assert "  conv: reverse: probed: mixes channels -> barrier" in printed
    assert "  double: probed: channel-wise (clean)" in printed


@pytest.mark.parametrize("output", ["slim.keras", "slim.h5", "slim_savedmodel"])
def test_prune_saves_a_smaller_model_in_the_output_format(tiny_file, flavour, tmp_path, capsys,
                                                          output):
    from tfcompress.export import load_model

    out = tmp_path / output
    argv = ["prune", str(tiny_file), "--ratio", "0.5", "--output", str(out)]
    if flavour.is_keras3 and output == "slim_savedmodel":  # Keras 3 could not reload it
        assert main(argv) == 1
        assert "Pass a .keras (or .h5) path" in _error_line(capsys)
        assert not out.exists()
        return
    assert main(argv) == 0
    printed = capsys.readouterr().out
    slim = load_model(out)
    assert flavour_of(slim) is flavour  # written by the Keras that wrote the input
    assert out.is_dir() == (output == "slim_savedmodel")
    assert slim.get_layer("conv1").filters == 4 and slim.get_layer("conv2").filters == 8
    params = [line.split() for line in printed.splitlines() if line.startswith("params")][0]
    # conv1 9x4 + 4, bn1 4x4, conv2 9x4x8 + 8, logits 8x3 + 3
    assert params[1:3] == ["1,331", "379"] and slim.count_params() == 379
    assert f"pruned 50.0% of the prunable channels; wrote {out}" in printed


def test_prune_default_output_keeps_the_input_format(files, tmp_path, capsys):
    import shutil

    model = tmp_path / "net.h5"
    shutil.copy(files / "tiny.keras", tmp_path / "net.keras")
    from tfcompress.export import load_model, save_model

    save_model(load_model(tmp_path / "net.keras"), model)
    argv = ["prune", str(model), "--ratio", "0.25", "--criterion", "l1", "--round-to", "4",
            "--exclude", "conv2"]
    assert main(argv) == 0
    slim = load_model(tmp_path / "net_slim.h5")
    assert slim.get_layer("conv1").filters == 8  # 6 kept, rounded up to a multiple of 4
    assert slim.get_layer("conv2").filters == 16  # excluded
    assert "wrote " + str(tmp_path / "net_slim.h5") in capsys.readouterr().out


@pytest.mark.parametrize(
    "option, message",
    [(["--exclude", "nope"], "nope"), (["--criterion", "random"], "criterion 'random'")],
)
def test_prune_rejects_bad_options_in_one_line(files, tmp_path, capsys, option, message):
    argv = ["prune", str(files / "tiny.keras"), "--ratio", "0.5", "--output",
            str(tmp_path / "s.keras")] + option
    assert main(argv) == 1
    assert message in _error_line(capsys)
    assert not (tmp_path / "s.keras").exists()


def test_qat_models_are_explained_by_inspect_and_refused_by_prune(files, tmp_path, capsys):
    import tensorflow_model_optimization as tfmot

    from tfcompress.export import load_model, save_model

    qat = tfmot.quantization.keras.quantize_model(load_model(files / "tiny.keras"))
    save_model(qat, tmp_path / "qat_savedmodel")
    assert main(["inspect", str(tmp_path / "qat_savedmodel")]) == 0
    assert "note: a quantization-aware (QAT) model" in capsys.readouterr().out
    argv = ["prune", str(tmp_path / "qat_savedmodel"), "--ratio", "0.5"]
    assert main(argv) == 1
    assert "Prune the float model first" in _error_line(capsys)


def test_keras3_pact_qat_file_inspect_prune_and_int8_export(files, tmp_path, capsys):
    from tfcompress.export import load_model, save_model, tflite_ops
    from tfcompress.quantization import quantize_model

    qat = quantize_model(load_model(files / "keras3" / "tiny.keras"))
    qat(np.load(files / "x.npy"), training=True)  # calibrate the ranges
    save_model(qat, tmp_path / "qat.keras")
    assert main(["inspect", str(tmp_path / "qat.keras")]) == 0
    assert "note: a quantization-aware (QAT) model" in capsys.readouterr().out
    assert main(["prune", str(tmp_path / "qat.keras"), "--ratio", "0.5"]) == 1
    assert "Prune the float model first" in _error_line(capsys)
    out = tmp_path / "qat.tflite"
    argv = ["export", str(tmp_path / "qat.keras"), "--output", str(out), "--data",
            str(files / "x.npy"), "--min-agreement", "0.8"]
    assert main(argv) == 0  # --quantize auto: int8, no calibration samples needed
    assert "(int8) vs Keras on 48 samples" in capsys.readouterr().out
    compute = [op for op in tflite_ops(out) if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(compute) == 3 and all(op.activation_dtypes == ("int8",) for op in compute)


def test_export_int4_weight_storage_reports_size_and_latency(files, tmp_path, capsys):
    import re

    from tfcompress.export import load_model, save_model, tflite_ops
    from tfcompress.quantization import quantize_model

    # Every layer at 4 bits (first_last_bits=None), so every weight tensor packs.
    qat = quantize_model(load_model(files / "keras3" / "tiny.keras"), 4, 4, first_last_bits=None)
    qat(np.load(files / "x.npy"), training=True)  # calibrate the ranges
    save_model(qat, tmp_path / "qat4.keras")
    out = tmp_path / "q4.tflite"
    argv = ["export", str(tmp_path / "qat4.keras"), "--output", str(out), "--weight-storage",
            "int4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    sizes = re.search(r"int4 weights: 3 tensors repacked, file ([\d.]+) KiB \(int8\) -> "
                      r"([\d.]+) KiB \(int4\)", printed)
    assert sizes and float(sizes[2]) == pytest.approx(out.stat().st_size / 1024, abs=0.05)
    assert float(sizes[2]) < float(sizes[1])
    latency = re.search(r"LiteRT latency int4 / int8: ([\d.]+)x \(([\d.e-]+) ms vs "
                        r"([\d.e-]+) ms, medians of 50 interleaved runs, 1 thread\)", printed)
    assert latency and float(latency[1]) == pytest.approx(
        float(latency[2]) / float(latency[3]), rel=0.02, abs=0.006)
    weights = [op.input_dtypes[1] for op in tflite_ops(out)
               if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert weights == ["int4", "int4", "int4"]

    float_model = str(files / "keras3" / "tiny.keras")
    argv = ["export", float_model, "--output", str(tmp_path / "f.tflite"), "--weight-storage",
            "int4"]
    assert main(argv) == 1
    assert "not quantization-aware" in _error_line(capsys)
    assert not (tmp_path / "f.tflite").exists()


def test_export_float_tflite_prints_the_parity_report(tiny_file, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["export", str(tiny_file), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert "parity check on random inputs in [0, 1):" in printed
    assert "parity PASSED: m.tflite (float32) vs Keras on 256 samples" in printed
    assert quantization_kind(out) == "float32"


def test_export_int8_with_calibration(files, tiny_file, tmp_path, capsys):
    out = tmp_path / "q.tflite"
    argv = ["export", str(tiny_file), "--quantize", "int8",
            "--calibration", str(files / "x.npy"), "--output", str(out), "--min-agreement", "0.8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity check on --calibration samples:" in printed
    assert "(int8) vs Keras on 48 samples" in printed
    assert quantization_kind(out) == "int8"


def test_export_int8_without_calibration_explains_the_fix(files, tmp_path, capsys):
    out = tmp_path / "q.tflite"
    argv = ["export", str(files / "tiny.keras"), "--quantize", "int8", "--output", str(out)]
    assert main(argv) == 1
    assert "needs --calibration FILE.npy" in _error_line(capsys)
    assert not out.exists()


def test_export_select_tf_ops_and_batch_size(tmp_path, capsys):
    """A TF op without a builtin kernel fails in one line naming op, layer and option;
    --select-tf-ops converts it, --batch-size sets a static batch."""
    from tfcompress.export import flex_ops, input_shapes, tflite_ops

    model = keras.Sequential([keras.Input((4, 4, 4, 1)), keras.layers.MaxPool3D(2, name="pool"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.save(tmp_path / "cnn3d.keras")
    out = tmp_path / "m.tflite"
    argv = ["export", str(tmp_path / "cnn3d.keras"), "--output", str(out)]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "MaxPool3D" in line and "'pool'" in line and "--select-tf-ops" in line
    assert not out.exists()
    assert main(argv + ["--select-tf-ops", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert flex_ops(tflite_ops(out)) == ["FlexMaxPool3D"] and input_shapes(out) == [(2, 4, 4, 4, 1)]
    # Run where a flex interpreter exists, else the report says why not (exit 0: written).
    assert "parity PASSED" in printed or "parity NOT CHECKED" in printed and "flex" in printed
    assert main(argv + ["--format", "saved_model", "--select-tf-ops"]) == 1
    assert "--select-tf-ops applies to --format tflite only" in _error_line(capsys)


def test_export_fails_when_parity_breaks_on_real_data(files, tmp_path, capsys):
    out = tmp_path / "d.tflite"
    argv = ["export", str(files / "tiny.keras"), "--quantize", "dynamic", "--atol", "0",
            "--output", str(out), "--data", str(files / "x.npy")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "parity FAILED: d.tflite (dynamic) vs Keras on 48 samples" in captured.out
    line = captured.err.strip()
    assert line.count("\n") == 0, captured.err
    assert "d.tflite was written but does not match the Keras model" in line
    assert "exceeds the tolerance 0" in line
    assert out.is_file()  # kept for inspection


def test_export_on_random_inputs_measures_a_quantized_file_without_judging_it(
    files, tmp_path, capsys
):
    out = tmp_path / "d.tflite"
    argv = ["export", str(files / "tiny.keras"), "--quantize", "dynamic", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity not checked: d.tflite (dynamic) is quantized and the samples are random " \
        "inputs in [0, 1)" in printed
    assert "Measured on 256 samples:" in printed and "top-1 agreement" in printed
    assert "pass --data FILE.npy with real samples" in printed
    # No verdict at all: neither a pass that was not earned nor a failure with exit 0.
    assert "PASSED" not in printed and "FAILED" not in printed and "required" not in printed


def test_export_on_random_inputs_applies_a_criterion_the_user_sets(files, tmp_path, capsys):
    out = tmp_path / "d.tflite"
    argv = ["export", str(files / "tiny.keras"), "--quantize", "dynamic", "--output", str(out),
            "--atol", "0"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "parity check on random inputs in [0, 1):" in captured.out
    assert "parity FAILED: d.tflite (dynamic)" in captured.out
    assert "exceeds the tolerance 0" in _error_line_of(captured.err)


def test_export_saved_model_and_reload_check(tiny_file, flavour, tmp_path, capsys):
    import re

    out = tmp_path / "sm"
    argv = ["export", str(tiny_file), "--format", "saved_model", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    if flavour.is_keras3:  # run through the serving signature: the same graph, maybe not
        # bit for bit the same kernels as Keras' predict
        diff = re.search(r"reload check: max \|diff\| (\S+) on 256 samples", printed)
        assert diff and float(diff.group(1)) < 1e-5, printed
    else:
        assert "reload check: max |diff| 0 on 256 samples" in printed
    assert (out / "saved_model.pb").is_file()
    assert main(argv + ["--quantize", "int8"]) == 1
    assert "--quantize applies to --format tflite only" in _error_line(capsys)


def test_bench_prints_latencies_and_the_ratio(tiny_file, tmp_path, capsys):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    model = str(tiny_file)
    assert main(["export", model, "--output", str(a)]) == 0
    assert main(["export", model, "--quantize", "dynamic", "--output", str(b)]) == 0
    capsys.readouterr()
    assert main(["bench", str(a), str(b), "--runs", "5", "--warmup", "1"]) == 0
    printed = capsys.readouterr().out
    assert "median of 5 interleaved runs" in printed
    ratio = float(printed.strip().splitlines()[-1].split(":")[1])
    rows = [line.split() for line in printed.splitlines() if line.startswith(str(tmp_path))]
    assert [row[0] for row in rows] == [str(a), str(b)]
    assert ratio == pytest.approx(float(rows[1][2]) / float(rows[0][2]), rel=0.01)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "missing.keras", "--output", "m.tflite"], "'missing.keras' does not exist"),
        (["export", "{model}", "--output", "m.tflite", "--quantize", "int4"], "invalid choice"),
        (["export", "{model}", "--output", "m.tflite", "--frobnicate"], "unrecognized arguments"),
        (["bench", "{model}", "--runs", "0"], "0 must be >= 1"),
        ([], "the following arguments are required: COMMAND"),
        (["prune", "{model}", "--ratio", "1.5"], "1.5 is outside [0, 1)"),
        (["prune", "{model}", "--ratio", "half"], "'half' is not a number"),
        (["export", "{model}", "--output", "m.tflite", "--batch-size", "0"],
         "invalid --batch-size '0': use auto, none or a positive integer"),
        (["export", "{model}", "--output", "m.tflite", "--batch-size", "dynamic"],
         "invalid --batch-size 'dynamic'"),
    ],
)
def test_usage_errors_are_one_line(files, capsys, argv, message):
    argv = [arg.format(model=files / "tiny.keras") for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert message in line and line.startswith("tfcompress") and "--help" in line


def test_bad_files_are_one_line(files, tmp_path, capsys):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    argv = ["export", str(files / "tiny.keras"), "--calibration", str(tmp_path / "bad.npy"),
            "--output", str(tmp_path / "m.tflite")]
    assert main(argv) == 1
    assert "is not a numeric .npy array" in _error_line(capsys)
    (tmp_path / "bad.npy").write_bytes(b"")
    assert main(argv) == 1
    assert "is not a numeric .npy array" in _error_line(capsys)
    assert main(["export", str(files / "tiny.keras"), "--output", "/nonexistent/m.tflite"]) == 1
    assert "does not exist. Create it first" in _error_line(capsys)
    assert main(["bench", str(files / "x.npy")]) == 1
    assert "x.npy' is not a TFLite flatbuffer" in _error_line(capsys)


def test_python_m_tfcompress_reports_a_keras3_saved_model_in_one_line(tmp_path):
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    model.export(str(tmp_path / "k3_savedmodel"), verbose=False)
    command = [sys.executable, "-m", "tfcompress", "export", str(tmp_path / "k3_savedmodel"),
               "--output", str(tmp_path / "m.tflite")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    (last,) = result.stderr.strip().splitlines()  # TensorFlow's load banner is muted too
    assert last.startswith("tfcompress export: error: ")
    assert "SavedModel without Keras metadata" in last and "Load the .keras file" in last
    assert not (tmp_path / "m.tflite").exists()


def test_subpackages_load_on_first_access():
    script = (
        "import sys\n"
        "import tfcompress as tfc\n"
        "assert 'tfcompress.pruning' not in sys.modules  # import tfcompress stays cheap\n"
        "assert {'pruning', 'quantization', 'export', 'demo'} <= set(dir(tfc))\n"
        "print(tfc.pruning.fpgm_masks.__name__, tfc.export.to_tflite.__name__,\n"
        "      tfc.quantization.quantize_model.__name__)\n"
        "try:\n"
        "    tfc.prunning\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines == ["fpgm_masks to_tflite quantize_model",
                     "module 'tfcompress' has no attribute 'prunning'"]
