"""Whole-model latency on a runtime: the check every latency prediction is held against.

:func:`measure_models` exports Keras models as the runtime runs them (float32, or int8
calibrated on random data: calibration changes ranges, not which kernels run) and times them
together with interleaved rounds, so machine drift hits every model alike.

Example:
  >>> from tfcompress._keras import keras
  >>> wide, narrow = (keras.Sequential([keras.Input((64,)), keras.layers.Dense(n)])
  ...                 for n in (512, 8))
  >>> slow, fast = measure_models([wide, narrow], "litert-float32", rounds=5)
  >>> fast < slow
  True
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from tfcompress.latency.micro import time_models
from tfcompress.latency.runtime import Runtime

__all__ = ["measure_models", "export_for", "static_input_shape"]


def static_input_shape(model: Any) -> tuple:
    """The model's single input shape without the batch, every dimension known.

    Raises:
      ValueError: for several inputs or an unknown dimension (latency depends on it).
    """
    inputs = model.inputs
    if len(inputs) != 1:
        raise ValueError(f"Latency is measured for single-input models; {model.name!r} has "
                         f"{len(inputs)} inputs.")
    shape = tuple(inputs[0].shape)[1:]
    if any(d is None for d in shape):
        raise ValueError(
            f"Model {model.name!r} takes inputs of shape {tuple(inputs[0].shape)}: latency "
            "depends on the input size, so it needs a fixed one. Build the model with a "
            "fixed input shape, e.g. input_shape=(160, 160, 3).")
    return shape


def export_for(model: Any, runtime: Union[str, Runtime], path: Any) -> pathlib.Path:
    """Writes ``model`` as ``runtime`` runs it: float32, or int8 weights and activations
    (float interface) calibrated on random normal data; batch 1."""
    from tfcompress.export import to_tflite

    runtime = Runtime.resolve(runtime)
    shape = static_input_shape(model)
    if runtime.dtype == "float32":
        return to_tflite(model, path, None, batch_size=1)
    data = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
    return to_tflite(model, path, "int8", data, batch_size=1)


def measure_models(models: Sequence[Any], runtime: Union[str, Runtime] = "litert-int8",
                   threads: Optional[int] = None, *, rounds: int = 15) -> List[float]:
    """Milliseconds per invoke of each model (batch 1), timed together: the minimum over
    ``rounds`` interleaved rounds of the mean of 3 invokes.

    Args:
      models: Keras models (or paths of ``.tflite`` files) taking the same kind of input.
      runtime: ``"litert-int8"``, ``"litert-float32"`` or a ``Runtime``.
      threads: interpreter threads (default: the runtime's, 1 for a name).
      rounds: interleaved timing rounds.
    """
    runtime = Runtime.resolve(runtime, threads or 1)
    if threads and threads != runtime.threads:
        runtime = dataclasses.replace(runtime, threads=threads)
    with tempfile.TemporaryDirectory() as folder:
        contents = []
        for i, model in enumerate(models):
            if isinstance(model, (str, pathlib.Path)):
                contents.append(pathlib.Path(model).read_bytes())
            else:
                contents.append(export_for(model, runtime, f"{folder}/m{i}.tflite").read_bytes())
        return time_models(contents, runtime.threads, rounds=rounds, repeat=3)
