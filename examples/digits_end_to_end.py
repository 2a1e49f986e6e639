"""The whole compression pipeline on sklearn's bundled digits, through the Python API.

This is what ``tfcompress demo`` runs: train a residual CNN in float, prune it with FPGM
during ``fit`` (the channel ratio ramps from 0 to ``--ratio``), fine-tune, rebuild the slim
model, fine-tune it with PACT quantization-aware training, export a SavedModel and an int8
TFLite file, check the file against Keras and time it against the original float file.

    python examples/digits_end_to_end.py [--ratio 0.5] [--bits 8] [--epochs 12]
                                         [--output digits-demo] [--quick]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfcompress.demo import DemoConfig, run_demo  # noqa: E402
from tfcompress.demo.report import summary_lines, write_report  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="channels to remove, [0, 1)")
    parser.add_argument("--bits", type=int, default=8, help="PACT bits, 2 to 8")
    parser.add_argument("--epochs", type=int, default=12, help="float training epochs")
    parser.add_argument("--output", default="digits-demo", help="folder for models and report")
    parser.add_argument("--quick", action="store_true", help="a few steps only (CI smoke run)")
    args = parser.parse_args(argv)

    config = DemoConfig(output=args.output, bits=args.bits, ratio=args.ratio,
                        epochs=args.epochs, quick=args.quick)
    result = run_demo(config, verbose=0)
    report = write_report(result)

    print(f"\n{'stage':<20}{'test accuracy':>14}{'params':>9}{'MACs':>12}")
    for stage in result.stages:
        print(f"{stage.name:<20}{stage.accuracy:>14.4f}{stage.params:>9,}{stage.macs:>12,}")
    print()
    for line in summary_lines(result):
        print(line)
    print(result.parity.summary())
    print(f"report: {report}")
    return result


if __name__ == "__main__":
    main()
