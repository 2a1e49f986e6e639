"""Micro-benchmarks: one layer (with the layers TFLite fuses into it) as a tiny TFLite model.

A :class:`Unit` is a chain of Keras layers given by class and config (e.g. a Conv2D with the
BatchNormalization and ReLU that the converter folds into one ``CONV_2D``) and the shapes of
its inputs. :func:`convert_unit` builds the layers, traces them into a ``tf.function`` with
a batch of 1 and converts that to TFLite (float32, or full int8 with an int8 interface
calibrated on random data); :func:`time_models` times TFLite models with interleaved runs.
No Keras model and no SavedModel are involved, so a micro-model converts in ~50 ms.

Example:
  >>> from tfcompress._keras import keras
  >>> unit = make_unit([(keras.layers.Dense, {"units": 8})], [(16,)])
  >>> content = convert_unit(unit, "float32")
  >>> [ms] = time_models([content], threads=1, rounds=3, repeat=2)
  >>> ms > 0
  True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["Unit", "make_unit", "convert_unit", "time_models", "empty_unit"]

_LOG = logging.getLogger("tfcompress.latency")

Shape = Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Unit:
    """Layers run one after the other (the first takes every input), and input shapes
    without the batch dimension. ``key`` identifies the unit in a latency table."""

    layers: Tuple[Tuple[type, Dict[str, Any]], ...]
    input_shapes: Tuple[Shape, ...]
    key: str


def _stable(value: Any) -> Any:
    return type(value).__name__


def make_unit(layers: Sequence[Tuple[type, Dict[str, Any]]],
              input_shapes: Sequence[Sequence[int]]) -> Unit:
    """A :class:`Unit` whose key hashes the classes, the configs (names left out) and the
    input shapes.

    Raises:
      ValueError: for an unknown (None) or non-positive input dimension.
    """
    shapes = tuple(tuple(int(d) if d is not None else -1 for d in s) for s in input_shapes)
    if any(d < 1 for s in shapes for d in s):
        raise ValueError(f"Micro-benchmark input shapes must be known and positive, got "
                         f"{list(input_shapes)}.")
    configs = tuple((cls, {k: v for k, v in cfg.items() if k != "name"}) for cls, cfg in layers)
    text = json.dumps([[f"{c.__module__}.{c.__qualname__}", cfg] for c, cfg in configs]
                      + [list(shapes)], sort_keys=True, default=_stable)
    return Unit(configs, shapes, hashlib.sha256(text.encode()).hexdigest()[:24])


def _concrete_function(unit: Unit):
    import tensorflow as tf

    layers = [cls.from_config(dict(config)) for cls, config in unit.layers]

    def call(*inputs):
        y = layers[0](list(inputs) if len(inputs) > 1 else inputs[0])
        for layer in layers[1:]:
            y = layer(y)
        return y

    rng = np.random.default_rng(0)
    call(*[tf.constant(rng.standard_normal((1,) + s), tf.float32) for s in unit.input_shapes])
    signature = [tf.TensorSpec((1,) + s, tf.float32) for s in unit.input_shapes]
    function = tf.function(call, input_signature=signature)
    return function.get_concrete_function(), function


def convert_unit(unit: Unit, dtype: str) -> bytes:
    """The unit as a TFLite flatbuffer: ``dtype`` ``"float32"``, or ``"int8"`` (full integer,
    int8 input and output, calibrated on random normal data).

    Raises:
      Exception: whatever the converter raises (its C++ output is captured, not printed).
    """
    import tensorflow as tf

    from tfcompress.export.conversion_errors import captured_stderr

    concrete, function = _concrete_function(unit)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    if dtype == "int8":
        rng = np.random.default_rng(1)

        def representative():
            for _ in range(3):
                yield [rng.standard_normal((1,) + s).astype(np.float32)
                       for s in unit.input_shapes]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with captured_stderr():
        return converter.convert()


def _interpreter(content: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(2)
    for detail in interpreter.get_input_details():
        if np.issubdtype(detail["dtype"], np.integer):
            info = np.iinfo(detail["dtype"])
            value = rng.integers(info.min, info.max, detail["shape"], dtype=detail["dtype"])
        else:
            value = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], value)
    return interpreter


def time_models(contents: Sequence[bytes], threads: int = 1, rounds: int = 7,
                repeat: int = 5, warmup: int = 2) -> List[float]:
    """Milliseconds per ``invoke`` of each TFLite model: the minimum over ``rounds``
    interleaved rounds (each model's place in a round rotates) of the mean of ``repeat``
    back-to-back invokes. The minimum is the statistic least disturbed by other processes.
    """
    interpreters = [_interpreter(c, threads) for c in contents]
    for interpreter in interpreters:
        for _ in range(warmup):
            interpreter.invoke()
    best = [float("inf")] * len(interpreters)
    for r in range(rounds):
        for k in range(len(interpreters)):
            i = (r + k) % len(interpreters)
            invoke = interpreters[i].invoke
            start = time.perf_counter_ns()
            for _ in range(repeat):
                invoke()
            best[i] = min(best[i], (time.perf_counter_ns() - start) / repeat / 1e6)
    return best


@functools.lru_cache(maxsize=None)
def empty_unit() -> Unit:
    """The smallest model (a ReLU of one value): its time is the per-``invoke`` overhead,
    which a whole model pays once, not once per layer."""
    from tfcompress._keras import keras

    return make_unit([(keras.layers.Activation, {"activation": "relu"})], [(1,)])
