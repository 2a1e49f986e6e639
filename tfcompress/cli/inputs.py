"""What the commands read: argparse value types, sample arrays and stand-in data.

Example:
  >>> positive_int("3"), ratio("0.25")
  (3, 0.25)
  >>> ratio("1")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  argparse.ArgumentTypeError: 1.0 is outside [0, 1): it is the fraction of channels to remove...
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np


def existing_path(text: str) -> pathlib.Path:
    """argparse ``type``: a path that must exist."""
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return path


def positive_int(text: str) -> int:
    """argparse ``type``: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def ratio(text: str) -> float:
    """argparse ``type``: a pruning ratio in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"{value} is outside [0, 1): it is the fraction of channels to remove, e.g. 0.5"
        )
    return value


def load_array(path: pathlib.Path, option: str) -> np.ndarray:
    """Loads a ``.npy`` file of samples, explaining what to pass when it is wrong."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as error:  # EOFError: an empty file
        raise ValueError(
            f"{option} {str(path)!r} is not a numeric .npy array ({error}). Save samples with "
            "`numpy.save(path, x)`."
        ) from error
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"{option} {str(path)!r} must hold one numeric array (n, *input_shape). "
            "Save samples with `numpy.save(path, x)`."
        )
    return array.astype(np.float32)


def random_inputs(model, count: int = 64, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Uniform random samples of a single-input model's input shape."""
    if len(model.inputs) != 1:
        raise ValueError(
            f"{model.name!r} has {len(model.inputs)} inputs; the CLI handles single-input "
            "models. Use the Python API (tfcompress.export) for others."
        )
    shape = tuple(d if d is not None else 1 for d in model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    return rng.uniform(low, high, (count,) + shape).astype(np.float32)
