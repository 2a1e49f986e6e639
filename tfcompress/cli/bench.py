"""``tfcompress bench``: LiteRT latency of ``.tflite`` files, interleaved, with ratios.

Example:
  >>> import argparse
  >>> parser = argparse.ArgumentParser()
  >>> add_arguments(parser)
  >>> args = parser.parse_args([__file__, "--threads", "2"])  # any existing file parses
  >>> args.threads, args.runs, args.warmup
  (2, 100, 10)

From a shell: ``tfcompress bench float.tflite slim_int8.tflite --threads 1``.
"""

from __future__ import annotations

import argparse

from tfcompress.cli.command import Command
from tfcompress.cli.inputs import existing_path, positive_int
from tfcompress.cli.table import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="+",
        type=existing_path,
        metavar="MODEL.tflite",
        help="files to time; ratios are relative to the first",
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="default: 1")
    parser.add_argument("--runs", type=positive_int, default=100, help="timed rounds (100)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed rounds (10)")


def run(args: argparse.Namespace) -> int:
    from tfcompress.export import litert

    results = litert.compare_latency(
        args.models, threads=args.threads, runs=args.runs, warmup=args.warmup, progress=True
    )
    base = results[0].median_ms
    rows = [
        [
            str(path),
            path.stat().st_size / 1024,
            result.median_ms,
            result.min_ms,
            result.median_ms / base,
        ]
        for path, result in zip(args.models, results)
    ]
    print(
        f"LiteRT latency, batch 1, {args.threads} thread(s), median of {args.runs} interleaved runs"
    )
    print(format_table(["model", "KiB", "median ms", "min ms", "ratio"], rows))
    if len(results) == 2:
        print(f"ratio B/A: {results[1].median_ms / base:.3f}")
    return 0


COMMAND = Command(
    name="bench",
    help="LiteRT latency of .tflite files (median of interleaved runs) and their ratio",
    description=(
        "Times each file on random batch-1 inputs with the LiteRT interpreter. Rounds are\n"
        "interleaved (every file once per round, rotating order) so machine drift hits all\n"
        "files alike; the median is reported with the ratio to the first file."
    ),
    add_arguments=add_arguments,
    run=run,
)
