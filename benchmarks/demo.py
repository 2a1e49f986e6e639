"""The numbers README's demo section quotes: ``tfcompress demo`` with its default settings.

Run from the repository root::

    python benchmarks/demo.py                 # the default demo (~2-3 minutes on 2 cores)
    python benchmarks/demo.py --output DIR    # keep the demo's files and report in DIR

It runs :func:`tfcompress.demo.run_demo` with ``DemoConfig()`` (not ``--quick``), prints the
table the ``tfcompress demo`` command prints, and rewrites the ``demo`` section of
``benchmarks/RESULTS.md`` with the date, commit, machine, wall and CPU time, that table and
the summary lines computed from the same run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _results  # noqa: E402

from tfcompress.cli.table import format_table  # noqa: E402
from tfcompress.demo import DemoConfig, run_demo, write_report  # noqa: E402
from tfcompress.demo.report import TABLE_HEADERS, summary_lines, table_rows  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _uncommitted_library_files() -> list:
    """Tracked files under tfcompress/ that differ from HEAD (they ran, but are not in it)."""
    done = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                           "--untracked-files=all", "--", "tfcompress"], cwd=_ROOT,
                          capture_output=True, text=True, check=False)
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def _section(config: DemoConfig, result, wall_s: float, cpu_s: float) -> str:
    changed = _uncommitted_library_files()
    provenance = (f"Uncommitted library files in the tree that ran: {', '.join(changed)}."
                  if changed else "The library files that ran are those of this commit.")
    table = format_table(TABLE_HEADERS, table_rows(result))
    return "\n".join([
        "## The demo (`benchmarks/demo.py`: `tfcompress demo`, default settings)",
        "",
        f"{_results.stamp()}. {provenance}",
        "",
        f"`DemoConfig()`: residual CNN width {config.width}, FPGM ratio {config.ratio}, "
        f"PACT {config.bits}-bit, {config.epochs} float epochs "
        f"(stage epochs {config.stage_epochs()}), {config.latency_runs} interleaved LiteRT "
        f"rounds (1 thread, batch 1). Wall time {wall_s:.0f} s, CPU time {cpu_s:.0f} s "
        "(this process).",
        "",
        "The table `tfcompress demo` printed (sizes and latencies are of `.tflite` files "
        "only; KiB, ms):",
        "",
        "```",
        table,
        "```",
        "",
        *[f"- {line}" for line in summary_lines(result)],
        f"- parity: {result.parity.summary().splitlines()[0]}",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None,
                        help="folder for the demo's files (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        config = DemoConfig(output=args.output or os.path.join(scratch, "demo"))
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_demo(config, verbose=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        write_report(result)
        markdown = _section(config, result, wall, cpu)
    print(markdown)
    print(f"\nwrote {_results.write_section('demo', markdown)}")


if __name__ == "__main__":
    main()
