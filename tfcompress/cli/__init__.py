"""The ``tfcompress`` command line: a thin layer over the Python API.

Subcommands live one per module and register in :data:`COMMANDS`; add a row to
extend the CLI (see :class:`tfcompress.cli.command.Command`).

Example:
  >>> [command.name for command in COMMANDS]
  ['inspect', 'prune', 'export', 'bench', 'demo']
  >>> build_parser().parse_args(["demo", "--quick"]).quick
  True

From a shell:
  $ tfcompress inspect model.keras
  $ tfcompress prune model.keras --ratio 0.5 --output slim.keras
  $ tfcompress export slim.keras --format tflite --quantize int8 --calibration x.npy \\
        --output slim_int8.tflite
  $ tfcompress bench model.tflite slim_int8.tflite --threads 1
  $ tfcompress demo --output tfcompress-demo
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, NoReturn, Optional, Sequence

from tfcompress import __version__
from tfcompress.cli import bench, demo, export, inspect, prune
from tfcompress.cli.command import Command

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: List[Command] = [
    inspect.COMMAND, prune.COMMAND, export.COMMAND, bench.COMMAND, demo.COMMAND]

_PROG = "tfcompress"


class _Parser(argparse.ArgumentParser):
    """Reports usage errors on one line (with a pointer to ``--help``) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    """The argument parser with one subparser per command (default: :data:`COMMANDS`)."""
    parser = _Parser(
        prog=_PROG,
        description="PACT quantization and FPGM structured pruning for tf_keras and Keras 3 "
        "models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in commands or COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(command=command)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 muted.

    TensorFlow's C++ runtime logs banner lines (oneDNN, CUDA probing) while it loads and
    first lists devices, before ``TF_CPP_MIN_LOG_LEVEL`` takes effect; they would bury the
    CLI's own output. Its Python logger is also limited to errors.
    Python errors raised by the import are unaffected: they propagate as usual.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA now, which logs on CPU-only machines
        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (the console script passes it to ``sys.exit``).

    Bad input (``ValueError``, ``TypeError``, ``OSError``) prints one line on stderr and
    returns 1; usage errors exit with status 2.

    Example:
      >>> import contextlib, io, tempfile
      >>> import tf_keras as keras
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> folder = tempfile.mkdtemp()
      >>> model.save(folder + "/dense.keras")
      >>> with contextlib.redirect_stderr(io.StringIO()) as err:
      ...     main(["export", folder + "/dense.keras", "--output", folder + "/no/m.tflite"])
      1
      >>> err.getvalue().startswith("tfcompress export: error: Cannot write")
      True
    """
    # TensorFlow's C++ logging would otherwise bury our output; users can still override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Format advice from the libraries (".h5 is legacy", converter notes) is not for CLI users.
    warnings.filterwarnings("ignore", category=UserWarning,
                            module=r"(keras|tf_keras|tensorflow)\.")
    args = build_parser().parse_args(argv)
    command: Command = args.command
    try:
        _import_tensorflow_quietly()
        status = command.run(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"{_PROG} {command.name}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG} {command.name}: interrupted", file=sys.stderr)
        return 130
    return status or 0
