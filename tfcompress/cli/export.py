"""``tfcompress export``: SavedModel or TFLite, then a parity check against the Keras model.

Example:
  >>> import tempfile
  >>> import tf_keras as keras
  >>> from tfcompress.cli import main
  >>> folder = tempfile.mkdtemp()
  >>> keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(folder + "/m.keras")
  >>> main(["export", folder + "/m.keras", "--output", folder + "/m.tflite"])
  ... # doctest: +ELLIPSIS
  wrote .../m.tflite (... KiB)
  parity check on random inputs in [0, 1):
  parity PASSED: m.tflite (float32) vs Keras on 256 samples
  ...
  0
"""

from __future__ import annotations

import argparse
import pathlib
import warnings
from typing import List, Tuple

from tfcompress.cli.command import Command
from tfcompress.cli.inputs import existing_path, load_array, random_inputs

_FORMATS = ("tflite", "saved_model")
_QUANTIZE = ("auto", "none", "dynamic", "float16", "int8")
_RANDOM_SAMPLES = 256
_MIN_AGREEMENT = 0.99
_LATENCY_RUNS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=existing_path,
                        help=".keras, .h5 (tf_keras or Keras 3) or tf_keras SavedModel folder")
    parser.add_argument("--format", choices=_FORMATS, default="tflite", help="default: tflite")
    parser.add_argument(
        "--quantize",
        choices=_QUANTIZE,
        default="auto",
        help="TFLite only; auto = int8 for a QAT model, else float32 (default: auto)",
    )
    parser.add_argument(
        "--weight-storage",
        choices=("int8", "int4"),
        default="int8",
        help="TFLite int8 only: int4 stores weights trained at <= 4 bits two per byte and "
        "reports the file size and LiteRT latency against the int8 file (default: int8)",
    )
    parser.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="TFLite only: keep TF ops that have no TFLite builtin kernel (e.g. MaxPool3D) as "
        "TF Select (flex) ops; the file then needs a LiteRT runtime with the flex delegate",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default="auto",
        metavar="{auto,none,N}",
        help="TFLite only: N = a static batch of N, none = a dynamic batch, auto = dynamic "
        "unless the model needs a static batch or LiteRT cannot run it, then 1 (default: auto)",
    )
    parser.add_argument(
        "--calibration",
        type=existing_path,
        metavar="FILE.npy",
        help="samples (n, *input_shape) to calibrate int8 activation ranges of a float model",
    )
    parser.add_argument(
        "--data",
        type=existing_path,
        metavar="FILE.npy",
        help="samples for the parity check (default: the --calibration samples, else random "
        "inputs, on which a quantized file is only measured, not judged, unless --atol or "
        "--min-agreement is given)",
    )
    parser.add_argument("--output", required=True, help="the .tflite file or SavedModel folder")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help=f"required top-1 agreement between Keras and TFLite (default: {_MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--atol", type=float, default=None, help="tolerance on max |Keras - TFLite| output"
    )


def _batch_size(text: str):
    """``--batch-size``: ``auto``, ``none`` or a positive integer."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid --batch-size {text!r}: use auto, none or a positive integer")
    return value


def _check_saved_model(model, path: pathlib.Path, data) -> None:
    """Reloads the folder and compares: tf_keras reloads it as a model; a Keras 3 folder
    is an inference graph, run through its serving signature."""
    import numpy as np

    from tfcompress._keras import KERAS3, flavour_of
    from tfcompress.export import load_model
    from tfcompress.export.serving import run_saved_model

    expected = model.predict(data, verbose=0)
    if flavour_of(model) is KERAS3:
        actual = run_saved_model(path, data)
    else:
        actual = load_model(path).predict(data, verbose=0)
    diff = float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))
    print(f"reload check: max |diff| {diff:.3g} on {len(data)} samples")
    if diff > 1e-5 * max(1.0, float(np.max(np.abs(expected)))):
        raise ValueError(
            f"the SavedModel at {str(path)!r} reloads with different outputs (max |diff| "
            f"{diff:.3g}); it was written, but do not ship it. Check the model's custom layers."
        )


def _check_data(args: argparse.Namespace, model, calibration):
    """The samples of the parity check and how to name them: --data, --calibration, random."""
    if args.data is not None:
        return load_array(args.data, "--data"), "--data samples", True
    if calibration is not None:
        return calibration, "--calibration samples", True
    return random_inputs(model, _RANDOM_SAMPLES), "random inputs in [0, 1)", False


def _judged(args: argparse.Namespace, real: bool, kind: str) -> bool:
    """Whether the parity check decides the exit status.

    Random inputs sit far from the data a quantized file was calibrated on, and near-tied
    logits flip under rounding, so on them a quantized file is only measured, unless the
    user set a criterion (``--atol``, ``--min-agreement``) explicitly.
    """
    explicit = args.atol is not None or args.min_agreement is not None
    return real or kind in ("float32", "float16") or explicit


def _check_tflite(args: argparse.Namespace, model, path: pathlib.Path, data, source: str,
                  real: bool) -> int:
    from tfcompress.export import verify

    min_agreement = _MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
    report = verify(model, path, data, atol=args.atol, min_agreement=min_agreement,
                    raise_on_failure=False)
    if report.skipped is not None:  # TF Select ops and no flex runtime here
        print(report.summary())
        return 0
    if not _judged(args, real, report.kind):
        print(f"parity not checked: {path.name} ({report.kind}) is quantized and the samples "
              f"are {source}, on which its outputs are only indicative. Measured on "
              f"{report.samples} samples:")
        print("\n".join(report.details(criteria=False)))
        print("pass --data FILE.npy with real samples (or set --atol / --min-agreement) for "
              "a check that can fail.")
        return 0
    print(f"parity check on {source}:")
    print(report.summary())
    if report.passed:
        return 0
    raise ValueError(
        f"{path.name} was written but does not match the Keras model: "
        + " ".join(report.failures)
    )


def _export_int4(args: argparse.Namespace, model, quantize, calibration
                 ) -> Tuple[pathlib.Path, List[str]]:
    """The int8 file in a temporary folder, repacked into ``--output``, and lines with the
    size and the LiteRT latency of both files (interleaved runs, one thread)."""
    import tempfile

    from tfcompress.export import litert, repack_int4, to_tflite

    with tempfile.TemporaryDirectory(prefix="tfcompress-") as folder:
        int8 = to_tflite(model, pathlib.Path(folder) / "int8.tflite", quantize,
                         representative_data=calibration, select_tf_ops=args.select_tf_ops,
                         batch_size=args.batch_size)
        lines = repack_int4(int8, args.output).summary()
        try:
            base, small = litert.compare_latency([int8, args.output], threads=1,
                                                 runs=_LATENCY_RUNS)
        except litert.FlexRuntimeError as error:
            lines.append(f"LiteRT latency not measured: {error}")
        else:
            lines.append(f"LiteRT latency int4 / int8: {small.median_ms / base.median_ms:.2f}x "
                         f"({small.median_ms:.3g} ms vs {base.median_ms:.3g} ms, medians of "
                         f"{_LATENCY_RUNS} interleaved runs, 1 thread)")
    return pathlib.Path(args.output), lines


def run(args: argparse.Namespace) -> int:
    from tfcompress.export import (
        StaticBatchWarning,
        is_qat_model,
        load_model,
        to_saved_model,
        to_tflite,
    )
    from tfcompress.export.int4 import check_weight_storage

    model = load_model(args.model)
    calibration = load_array(args.calibration, "--calibration") if args.calibration else None
    data, source, real = _check_data(args, model, calibration)
    if args.format == "saved_model":
        given = [name for name, value in [("--quantize", args.quantize != "auto"),
                                          ("--select-tf-ops", args.select_tf_ops),
                                          ("--weight-storage",
                                           args.weight_storage != "int8"),
                                          ("--batch-size", args.batch_size != "auto")] if value]
        if given:
            raise ValueError(
                f"{', '.join(given)} applies to --format tflite only; a SavedModel keeps the "
                "model as is."
            )
        path = to_saved_model(model, args.output)
        print(f"wrote {path} (SavedModel)")
        _check_saved_model(model, path, data)
        return 0
    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and calibration is None and not is_qat_model(model):
        raise ValueError(
            "--quantize int8 of a float model needs --calibration FILE.npy (~100 training "
            "samples) to calibrate activation ranges; or export a QAT model."
        )
    check_weight_storage(args.weight_storage, quantize, is_qat_model(model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StaticBatchWarning)
        if args.weight_storage == "int4":
            path, storage = _export_int4(args, model, quantize, calibration)
        else:
            path, storage = to_tflite(model, args.output, quantize,
                                      representative_data=calibration,
                                      select_tf_ops=args.select_tf_ops,
                                      batch_size=args.batch_size), []
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    for line in storage:
        print(line)
    for warning in caught:
        if issubclass(warning.category, StaticBatchWarning):
            print(f"note: {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return _check_tflite(args, model, path, data, source, real)


COMMAND = Command(
    name="export",
    help="export to TFLite or SavedModel and check parity with the Keras model",
    description=(
        "Exports a tf_keras or Keras 3 model and checks the result: a TFLite file is run\n"
        "with LiteRT and compared with the Keras model (max difference, top-1 agreement,\n"
        "float fallback ops); a SavedModel is reloaded (Keras 3: run through its serving\n"
        "signature) and compared. A failed check exits 1\n"
        "(the file stays for inspection). Without --data or --calibration the check runs\n"
        "on random inputs: a quantized file is then measured but not judged (exit 0),\n"
        "unless --atol or --min-agreement sets the criterion.\n"
        "TF ops without a TFLite builtin kernel fail the export with their layers named;\n"
        "--select-tf-ops keeps them as TF Select (flex) ops, whose parity check runs only\n"
        "where a flex-capable interpreter exists. --batch-size auto writes a static batch\n"
        "of 1 (with a note) when the model needs one or LiteRT cannot run a dynamic batch.\n"
        "--weight-storage int4 stores the weights of a QAT model trained at <= 4 bits two\n"
        "per byte and prints the file size and LiteRT latency against the int8 file."
    ),
    add_arguments=add_arguments,
    run=run,
)
