"""``tfcompress demo``: train, prune, rebuild, quantize, export and time, on sklearn's digits.

Example:
  >>> import argparse
  >>> parser = argparse.ArgumentParser()
  >>> add_arguments(parser)
  >>> args = parser.parse_args(["--bits", "4", "--quick", "--keras", "3"])
  >>> args.output, args.bits, args.ratio, args.epochs, args.quick, args.keras
  ('tfcompress-demo', 4, 0.5, 12, True, '3')

From a shell: ``tfcompress demo --output tfcompress-demo`` (about 1.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys

from tfcompress.cli.command import Command
from tfcompress.cli.inputs import positive_int, ratio
from tfcompress.cli.table import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="tfcompress-demo", metavar="DIR",
                        help="folder for the models, report.md and plots (tfcompress-demo)")
    parser.add_argument("--bits", type=int, choices=range(2, 9), default=8, metavar="BITS",
                        help="PACT weight/activation bits for QAT, 2 to 8 (8; try 4)")
    parser.add_argument("--ratio", type=ratio, default=0.5,
                        help="fraction of channels FPGM removes, in [0, 1) (0.5)")
    parser.add_argument("--epochs", type=positive_int, default=12, metavar="N",
                        help="float training epochs; pruning gets N, QAT N/2 (12)")
    parser.add_argument("--keras", choices=("2", "3"), default="2",
                        help="2: build and train the model with tf_keras (QAT through tfmot); "
                             "3: with Keras 3, `import keras` (2)")
    parser.add_argument("--quick", action="store_true",
                        help="256 training samples and one epoch per stage (a CI smoke run)")


def run(args: argparse.Namespace) -> int:
    from tfcompress.demo import DemoConfig, run_demo, write_report
    from tfcompress.demo.report import TABLE_HEADERS, summary_lines, table_rows

    config = DemoConfig(output=args.output, bits=args.bits, ratio=args.ratio,
                        epochs=args.epochs, quick=args.quick, keras=args.keras)
    result = run_demo(config, verbose=1 if sys.stdout.isatty() else 2)  # bars only on a terminal
    report = write_report(result)
    print()
    print(format_table(TABLE_HEADERS, table_rows(result)))
    print()
    for line in summary_lines(result):
        print(line)
    print(result.parity.summary())
    print(f"report: {report}")
    if not result.parity.passed:
        print("tfcompress demo: error: the int8 TFLite file does not match its Keras model "
              "(see the parity lines above)", file=sys.stderr)
        return 1
    return 0


COMMAND = Command(
    name="demo",
    help="the whole pipeline on sklearn's digits: prune, rebuild, PACT QAT, int8 TFLite, timing",
    description=(
        "Trains a small residual CNN on sklearn's bundled digits, prunes it with FPGM during\n"
        "fit (the ratio ramps from 0), rebuilds the slim model, fine-tunes it with PACT\n"
        "quantization-aware training, exports the slim model as float and int8 TFLite files\n"
        "(and a SavedModel) and times them against the original float TFLite file (LiteRT,\n"
        "1 thread). Prints one table and writes DIR/report.md with plots. About 1.5 minutes\n"
        "on 2 cores; --quick < 1 minute."
    ),
    add_arguments=add_arguments,
    run=run,
)
