"""Running and timing ``.tflite`` files with the LiteRT interpreter (``ai_edge_litert``).

Files with TF Select (flex) ops need an interpreter that links the flex delegate: LiteRT's
pip package does not, and TensorFlow's deprecated ``tf.lite.Interpreter`` does only in
TensorFlow builds that export ``TF_AcquireFlexDelegate`` (TF 2.21's pip package does not).
Both are tried; if neither can, :class:`FlexRuntimeError` says so.

Quantized model inputs and outputs are handled for the caller: float data is quantized
with the input tensor's scale and zero point, integer outputs are dequantized, so
:func:`run` always takes and returns float arrays like ``keras.Model.predict``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import sys
import time
import warnings
from typing import List, NoReturn, Optional, Sequence

import numpy as np

from tfcompress._io import PathLike
from tfcompress.export.flatbuffer import flex_ops, read_tflite, tflite_ops

__all__ = ["FlexRuntimeError", "Latency", "run", "latency", "compare_latency"]


_QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.type in _QUANTIZED_DTYPES and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if y.dtype.type in _QUANTIZED_DTYPES and scale:
        return (y.astype(np.float32) - zero_point) * np.float32(scale)
    return y


class FlexRuntimeError(RuntimeError):
    """The file has TF Select (flex) ops and no interpreter here has the flex delegate.

    Attributes:
      ops: the file's flex ops, e.g. ``("FlexMaxPool3D",)``.
    """

    def __init__(self, message: str, ops: Sequence[str] = ()):
        super().__init__(message)
        self.ops = tuple(ops)


_NO_FLEX = "Select TensorFlow op"


def _interpreter_classes() -> List[tuple]:
    """``(name, Interpreter class)`` candidates for a flex file: LiteRT's, then TensorFlow's
    deprecated ``tf.lite.Interpreter`` (TensorFlow builds that link the flex delegate run
    flex ops with it), if TensorFlow is already loaded."""
    from ai_edge_litert.interpreter import Interpreter

    candidates = [("ai_edge_litert.interpreter.Interpreter", Interpreter)]
    tf = sys.modules.get("tensorflow")
    legacy = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if legacy is not None:
        candidates.append(("tf.lite.Interpreter", legacy))
    return candidates


def _flex_interpreter(path: pathlib.Path, content: bytes, flex: List[str], threads):
    """The first interpreter that can allocate the flex file's tensors.

    Raises:
      FlexRuntimeError: if none can.
    """
    tried = []
    for name, cls in _interpreter_classes():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = cls(model_content=content, num_threads=threads)
        try:
            interpreter.allocate_tensors()
            return interpreter
        except RuntimeError as error:
            if _NO_FLEX not in str(error):
                raise
            tried.append(name)
    raise FlexRuntimeError(
        f"{path.name} uses TF Select (flex) ops ({', '.join(flex)}), and no LiteRT interpreter "
        f"in this Python links the flex delegate (tried {' and '.join(tried)}). Run it where "
        "the flex runtime is linked (Android: tensorflow-lite-select-tf-ops), or export "
        "without select_tf_ops.", flex)


class _Runner:
    """One interpreter for a single-input, single-output model; resizes its input on demand
    (a static-batch input takes exactly its batch size)."""

    def __init__(self, path: PathLike, threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        path = pathlib.Path(path)
        content = read_tflite(path)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"`threads` must be a positive int, got {threads!r}.")
        self.path = path
        flex = flex_ops(tflite_ops(path))
        if flex:
            self.interpreter = _flex_interpreter(path, content, flex, threads)
        else:
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; tfcompress runs "
                "single-input, single-output models only. Use ai_edge_litert's "
                "`Interpreter.get_signature_runner()` for others."
            )
        self.input, self.output = inputs[0], outputs[0]
        self.allocated = False

    @property
    def static_batch(self) -> Optional[int]:
        """The batch size the file was exported with, or None for a dynamic batch."""
        batch = int(self.input.get("shape_signature", self.input["shape"])[0])
        return batch if batch > 0 else None

    @property
    def sample_shape(self) -> tuple:
        """Input shape without the batch dimension.

        Raises:
          ValueError: if a dimension other than the batch is unknown.
        """
        signature = tuple(int(d) for d in self.input.get("shape_signature", self.input["shape"]))
        if any(d < 1 for d in signature[1:]):
            raise ValueError(
                f"{self.path.name} takes inputs of shape {signature} (-1: unknown), so no "
                "stand-in input can be made. Pass `x`, one batch of real input."
            )
        return signature[1:]

    def set_input(self, x: np.ndarray) -> None:
        signature = [int(d) for d in self.input.get("shape_signature", self.input["shape"])[1:]]
        if len(signature) != x.ndim - 1 or any(
            want not in (-1, got) for want, got in zip(signature, x.shape[1:])
        ):
            expected = (None,) + tuple(d if d > 0 else None for d in signature)
            raise ValueError(
                f"Input of shape {x.shape} does not fit {self.path.name}, which expects "
                f"{expected}. Pass data with the model's input shape."
            )
        if self.static_batch is not None and len(x) != self.static_batch:
            raise ValueError(
                f"{self.path.name} was exported with a static batch of {self.static_batch}; "
                f"pass batches of exactly {self.static_batch} samples, not {len(x)}."
            )
        if not self.allocated or tuple(x.shape) != tuple(self.input["shape"]):
            try:
                self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as error:
                self._fail(x, error)
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.allocated = True
        self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def get_output(self) -> np.ndarray:
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Outputs for ``x``, computed from a fresh state: variable tensors (the state of
        fused LSTM kernels, which persists across invokes) are reset first."""
        self.set_input(x)
        self.interpreter.reset_all_variables()
        try:
            self.invoke()
        except RuntimeError as error:
            self._fail(x, error)
        return self.get_output()

    def _fail(self, x: np.ndarray, error: Exception) -> NoReturn:
        """Raises the error of a failed resize, allocation or invoke, in our words."""
        if _NO_FLEX in str(error):
            raise FlexRuntimeError(f"{self.path.name}: {error}") from error
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(
            f"LiteRT cannot run {self.path.name} on inputs of shape {x.shape}: {reason[:200]}. "
            "Check the input shape" + ("" if self.static_batch else ", or export a static "
                                       "batch (to_tflite(..., batch_size=1))") + "."
        ) from error

    def run(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs for all of ``x``, ``batch_size`` samples per call; a static-batch file
        takes its own batch size, the last batch padded with zeros."""
        size = self.static_batch or batch_size
        chunks = []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            pad = size - len(chunk) if self.static_batch else 0
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            chunks.append(self(chunk)[: size - pad].copy())
        if not chunks:
            raise ValueError("`x` is empty. Pass at least one sample.")
        return np.concatenate(chunks)


def _as_batch(x, argument: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0 or x.dtype == object:
        raise ValueError(
            f"`{argument}` must be a numeric array with a batch dimension, got {x!r:.80}."
        )
    return x


def run(path: PathLike, x, batch_size: int = 256, threads: Optional[int] = None) -> np.ndarray:
    """Runs a ``.tflite`` model on a batch of samples, like ``keras.Model.predict``.

    Args:
      path: a single-input, single-output TFLite file.
      x: array of shape ``(n, *input_shape)``; float data is quantized for int8 inputs.
      batch_size: samples per interpreter call; the input tensor is resized to it. A file
        exported with a static batch runs that many per call instead (the last call padded).
      threads: interpreter threads (``None``: the runtime's default).

    Each call starts from reset variable tensors (the state of fused LSTM kernels), so every
    batch is computed as ``predict`` computes it.

    Returns:
      Float outputs of shape ``(n, *output_shape)`` (integer outputs are dequantized).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for a model with several inputs or outputs, or data of the wrong shape.
      FlexRuntimeError: (a ``RuntimeError``) for a file with TF Select ops when no
        interpreter here links the flex delegate.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> path = to_tflite(model, tempfile.mkdtemp() + "/m.tflite", None)
      >>> x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
      >>> logits = run(path, x, batch_size=4)  # three interpreter calls: 4 + 4 + 2 samples
      >>> logits.shape, bool(np.allclose(logits, model.predict(x, verbose=0), atol=1e-5))
      ((10, 2), True)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    x = _as_batch(x)
    return _Runner(path, threads).run(x, batch_size)


@dataclasses.dataclass(frozen=True)
class Latency:
    """Latency of one invoke of a model on one batch, over ``runs`` timed runs."""

    path: str
    median_ms: float
    min_ms: float
    runs: int
    threads: int


def latency(
    path: PathLike, x=None, *, threads: int = 1, runs: int = 50, warmup: int = 5
) -> Latency:
    """Median latency of one model; see :func:`compare_latency`.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> result = latency(to_tflite(model, tempfile.mkdtemp() + "/m.tflite", None), runs=5)
      >>> result.runs, result.threads, 0 < result.min_ms <= result.median_ms
      (5, 1, True)
    """
    return compare_latency([path], x, threads=threads, runs=runs, warmup=warmup)[0]


def compare_latency(
    paths: Sequence[PathLike],
    x=None,
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    repeat: int = 1,
    progress: bool = False,
) -> List[Latency]:
    """Times several models with interleaved runs, so that slow drifts of the machine
    (frequency scaling, other processes) hit every model alike.

    Each round invokes every model ``repeat`` times back to back, in an order that rotates
    from round to round; a round's time is the mean of its invokes. With ``repeat=1`` every
    invoke follows another model's (cold caches); with ``repeat > 1`` the later invokes find
    the model's weights and buffers in the caches, as when one model runs continuously
    (the steady state of a camera or audio loop). Only ``invoke`` is timed; setting the
    input is not.

    Args:
      paths: TFLite files taking the same input.
      x: one input batch (default: one standard-normal sample of each model's input shape).
      threads: interpreter threads per model.
      runs: timed rounds; the median is reported.
      warmup: untimed rounds first.
      repeat: back-to-back invokes of each model per round.
      progress: show a progress bar.

    Returns:
      One :class:`Latency` per path, in the order given.

    Raises:
      ValueError: for an empty ``paths``, ``runs < 1``, ``warmup < 0`` or ``repeat < 1``.

    Example:
      >>> import tempfile
      >>> import tf_keras as keras
      >>> from tfcompress.export import to_tflite
      >>> folder = tempfile.mkdtemp()
      >>> wide, narrow = (to_tflite(keras.Sequential([keras.Input((64,)), keras.layers.Dense(n)]),
      ...                           f"{folder}/dense{n}.tflite", None) for n in (256, 8))
      >>> base, small = compare_latency([wide, narrow], runs=5)
      >>> [pathlib.Path(r.path).name for r in (base, small)]
      ['dense256.tflite', 'dense8.tflite']
      >>> ratio = small.median_ms / base.median_ms  # the speedup is 1 / ratio
    """
    if not paths:
        raise ValueError("`paths` is empty. Pass at least one .tflite file.")
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"`runs` must be an int >= 1, got {runs!r}.")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup` must be an int >= 0, got {warmup!r}.")
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"`repeat` must be an int >= 1, got {repeat!r}.")
    runners = [_Runner(p, threads) for p in paths]
    rng = np.random.default_rng(0)
    for runner in runners:
        if x is None:  # one stand-in sample (a static batch: that many)
            sample = rng.standard_normal((runner.static_batch or 1,) + runner.sample_shape)
        else:
            sample = _as_batch(x)
        runner.set_input(sample.astype(np.float32))
    bar = None
    if progress:
        from tfcompress._keras import keras

        bar = keras.utils.Progbar(warmup + runs, unit_name="round")
    times = [[] for _ in runners]
    for round_index in range(warmup + runs):
        for k in range(len(runners)):
            i = (round_index + k) % len(runners)
            invoke = runners[i].invoke
            start = time.perf_counter_ns()
            for _ in range(repeat):
                invoke()
            elapsed = time.perf_counter_ns() - start
            if round_index >= warmup:
                times[i].append(elapsed / repeat / 1e6)
        if bar is not None:
            bar.update(round_index + 1)
    return [
        Latency(str(r.path), statistics.median(t), min(t), runs, threads)
        for r, t in zip(runners, times)
    ]
