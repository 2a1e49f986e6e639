"""PACT quantization-aware training end to end on sklearn's bundled digits.

Train a small residual CNN in float, fine-tune it with 4-bit PACT quantization-aware
training, export an int8 TFLite file and compare accuracy and size at every step.

    python examples/pact_digits.py [--bits 4] [--output pact-digits] [--quick]
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfcompress.datasets import load_digits  # noqa: E402
from tfcompress.export import litert, to_tflite  # noqa: E402
from tfcompress.models import compile_classifier, residual_cnn  # noqa: E402
from tfcompress.quantization import clip_ranges, quantize_model  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, default=4, help="weight and activation bits (2-8)")
    parser.add_argument("--output", default="pact-digits", help="folder for the .tflite files")
    parser.add_argument("--quick", action="store_true", help="a few steps only (CI smoke run)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    (x, y), (x_test, y_test) = load_digits(size=16)
    if args.quick:
        x, y = x[:256], y[:256]
    float_epochs, qat_epochs = (1, 1) if args.quick else (8, 6)

    model = compile_classifier(residual_cnn((16, 16, 1), width=16))
    model.fit(x, y, batch_size=32, epochs=float_epochs, verbose=2)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
    float_path = to_tflite(model, out / "float.tflite", quantize=None)

    qat = compile_classifier(quantize_model(model, args.bits, args.bits), learning_rate=5e-4)
    qat.fit(x, y, batch_size=32, epochs=qat_epochs, verbose=2)
    qat_acc = qat.evaluate(x_test, y_test, verbose=0)[1]
    int8_path = to_tflite(qat, out / f"pact{args.bits}_int8.tflite")
    tflite_acc = float(np.mean(np.argmax(litert.run(int8_path, x_test), 1) == y_test))

    print("\nLearned PACT clip ranges (low, high):")
    for name, (low, high) in clip_ranges(qat).items():
        print(f"  {name:<16} [{low:7.3f}, {high:7.3f}]")
    print(f"\n{'model':<28}{'test accuracy':>14}{'file size':>12}")
    print(f"{'float':<28}{float_acc:>14.4f}{float_path.stat().st_size:>11,}B")
    print(f"{f'PACT {args.bits}/{args.bits} QAT (Keras)':<28}{qat_acc:>14.4f}{'':>12}")
    print(f"{'PACT int8 TFLite':<28}{tflite_acc:>14.4f}{int8_path.stat().st_size:>11,}B")
    return {"float": float_acc, "qat": qat_acc, "tflite": tflite_acc}


if __name__ == "__main__":
    main()
