"""``tfcompress export``: SavedModel or TFLite, then a parity check against the Keras model."""

from __future__ import annotations

import argparse
import pathlib

from tfcompress.cli._models import existing_path, load_array, random_inputs
from tfcompress.cli.command import Command

_FORMATS = ("tflite", "saved_model")
_QUANTIZE = ("auto", "none", "dynamic", "float16", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=existing_path, help=".keras, .h5 or SavedModel folder")
    parser.add_argument("--format", choices=_FORMATS, default="tflite", help="default: tflite")
    parser.add_argument(
        "--quantize",
        choices=_QUANTIZE,
        default="auto",
        help="TFLite only; auto = int8 for a QAT model, else float32 (default: auto)",
    )
    parser.add_argument(
        "--calibration",
        type=existing_path,
        metavar="FILE.npy",
        help="samples (n, *input_shape): int8 calibration of a float model, and the parity "
        "check data (default for the check: random samples of the input shape)",
    )
    parser.add_argument("--output", required=True, help="the .tflite file or SavedModel folder")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="required top-1 agreement between Keras and TFLite (default: 0.99)",
    )
    parser.add_argument(
        "--atol", type=float, default=None, help="tolerance on max |Keras - TFLite| output"
    )


def _check_saved_model(model, path: pathlib.Path, data) -> None:
    import numpy as np

    from tfcompress.export import load_model

    expected = model.predict(data, verbose=0)
    actual = load_model(path).predict(data, verbose=0)
    diff = float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))
    print(f"reload check: max |diff| {diff:.3g} on {len(data)} samples")
    if diff > 1e-5 * max(1.0, float(np.max(np.abs(expected)))):
        raise ValueError(
            f"the SavedModel at {str(path)!r} reloads with different outputs (max |diff| "
            f"{diff:.3g}); it was written, but do not ship it. Check the model's custom layers."
        )


def run(args: argparse.Namespace) -> int:
    from tfcompress.export import (
        is_qat_model,
        load_model,
        to_saved_model,
        to_tflite,
        verify,
    )

    model = load_model(args.model)
    data = load_array(args.calibration, "--calibration") if args.calibration else None
    check_data = data if data is not None else random_inputs(model)
    if args.format == "saved_model":
        if args.quantize != "auto":
            raise ValueError(
                "--quantize applies to --format tflite only; a SavedModel keeps the model as is."
            )
        path = to_saved_model(model, args.output)
        print(f"wrote {path} (SavedModel)")
        _check_saved_model(model, path, check_data)
        return 0
    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and data is None and not is_qat_model(model):
        raise ValueError(
            "--quantize int8 of a float model needs --calibration FILE.npy (~100 training "
            "samples) to calibrate activation ranges; or export a QAT model."
        )
    path = to_tflite(model, args.output, quantize, representative_data=data)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    source = "--calibration data" if data is not None else "random inputs"
    report = verify(
        model,
        path,
        check_data,
        atol=args.atol,
        min_agreement=args.min_agreement,
        raise_on_failure=False,
    )
    print(report.summary().replace(" samples", f" samples ({source})", 1))
    if not report.passed:
        raise ValueError(
            f"{path.name} was written but does not match the Keras model: "
            + " ".join(report.failures)
        )
    return 0


COMMAND = Command(
    name="export",
    help="export to TFLite or SavedModel and check parity with the Keras model",
    description=(
        "Exports a tf_keras model and checks the result: a TFLite file is run with LiteRT\n"
        "and compared with the Keras model (max difference, top-1 agreement, float\n"
        "fallback ops); a SavedModel is reloaded and compared."
    ),
    add_arguments=add_arguments,
    run=run,
)
