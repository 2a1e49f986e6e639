"""The extension seam of the CLI: one :class:`Command` per subcommand."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Command:
    """A ``tfcompress`` subcommand.

    The CLI calls ``add_arguments`` once while it builds the parser, and ``run`` with
    the parsed arguments when the user picked this command. ``run`` returns the exit
    status (``None`` means 0) and raises ``ValueError``/``TypeError``/``OSError`` for bad
    input: ``main`` turns those into one line on stderr. Modules keep heavy imports
    (TensorFlow) inside ``run`` so that ``tfcompress --help`` answers at once.

    Example:
      >>> def add_arguments(parser):
      ...     parser.add_argument("name")
      >>> hello = Command("hello", "Greets.", add_arguments, lambda args: print(args.name))
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Optional[int]]
    description: str = ""
