"""The demo's steps: train, prune during fit, rebuild, PACT QAT, export, measure.

Each step is a small function over plain data (:class:`DemoConfig` in, :class:`StageResult`
rows out), so the CLI, the examples and the tests drive the same code. :func:`run_demo`
chains them and returns a :class:`DemoResult` that :mod:`tfcompress.demo.report` renders.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tfcompress._io import PathLike
from tfcompress._validate import check_int, check_ratio
from tfcompress.datasets import load_digits
from tfcompress.export import ParityReport, litert, tflite_ops, to_saved_model, to_tflite, verify
from tfcompress.export.flatbuffer import CONVERSION_OPS
from tfcompress.models import compile_classifier, residual_cnn, resolve_flavour
from tfcompress.pruning import FPGMPruning, PolynomialRatio, count_macs, count_params, rebuild
from tfcompress.quantization import quantize_model

__all__ = ["DemoConfig", "DemoResult", "StageResult", "run_demo"]

Data = Tuple[np.ndarray, np.ndarray]
#: Per-epoch curves of all stages: ``stage``, ``accuracy``, ``val_accuracy``, ``pruned_ratio``.
History = Dict[str, list]

#: Layer types whose output channels the channel plot shows.
_CHANNEL_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
_QUICK_SAMPLES = 256
_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What :func:`run_demo` does.

    Attributes:
      output: folder for the model files, the report and the plots (created if missing).
      bits: PACT weight and activation bits for quantization-aware training, 2 to 8; the
        TFLite file is int8 either way (lower bits use fewer of its levels).
      ratio: final fraction of each prunable group's channels that FPGM removes, in [0, 1).
      epochs: epochs of float training; pruning gets as many (the ratio ramps over the first
        two thirds, the rest fine-tunes the pruned model) and QAT half as many.
      quick: a 256-sample training subset, one epoch per stage, few latency runs (CI).
      width: channels of the residual CNN's first stage (the second has twice as many).
      latency_runs: interleaved LiteRT timing rounds (the median is reported).
      seed: seeds Keras, NumPy and TensorFlow before training.
      keras: which Keras builds and trains the model: ``"tf_keras"`` (Keras 2, QAT through
        tfmot) or ``"keras3"`` (``import keras``, QAT with tfcompress' native layers).
      shuffle: ``fit``'s shuffling of the training data each epoch. Each Keras draws its own
        order, so runs in the two Kerases see different batches; ``False`` (with data
        shuffled once beforehand) gives both the same batches.

    Raises:
      TypeError: for a value of the wrong type (``bits=4.0``, ``ratio="0.5"``).
      ValueError: for a value out of range, naming it and the accepted range.

    Example:
      >>> DemoConfig(epochs=9).stage_epochs()
      {'float': 9, 'prune': 6, 'finetune': 3, 'qat': 4}
      >>> DemoConfig(bits=9)
      Traceback (most recent call last):
      ...
      ValueError: `bits` must be an integer >= 2 and <= 8, got 9.
    """

    output: PathLike = "tfcompress-demo"
    bits: int = 8
    ratio: float = 0.5
    epochs: int = 12
    quick: bool = False
    width: int = 32
    latency_runs: int = 200
    seed: int = 0
    keras: str = "tf_keras"
    shuffle: bool = True

    def __post_init__(self):
        check_int(self.bits, "bits", 2, 8)
        check_int(self.epochs, "epochs", 1)
        check_int(self.width, "width", 1)
        check_int(self.latency_runs, "latency_runs", 1)
        check_int(self.seed, "seed", 0)
        check_ratio(self.ratio, "ratio")
        object.__setattr__(self, "keras", resolve_flavour(self.keras).name)
        if not isinstance(self.shuffle, bool):
            raise TypeError(f"`shuffle` must be True or False, got {self.shuffle!r}.")

    def stage_epochs(self) -> Dict[str, int]:
        """Epochs per stage: ``float``, ``prune`` (ramp), ``finetune`` and ``qat``."""
        if self.quick:
            return {"float": 1, "prune": 1, "finetune": 1, "qat": 1}
        ramp = max(1, math.ceil(2 * self.epochs / 3))
        return {"float": self.epochs, "prune": ramp, "finetune": max(1, self.epochs - ramp),
                "qat": max(1, self.epochs // 2)}


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One row of the demo's table.

    Attributes:
      name: the stage, e.g. ``"slim (rebuilt)"``.
      accuracy: test accuracy.
      params: parameters of the model the stage ships (masked channels still count for
        the masked model: it is not smaller yet).
      macs: multiply-accumulates per sample (pruned channels excluded for the masked model).
      file: the ``.tflite`` file of the stage, if it writes one (the float, slim float and
        slim int8 stages), so that the sizes in the table compare like with like.
      latency_ms: LiteRT median latency, batch 1, one thread, of :attr:`file`.
    """

    name: str
    accuracy: float
    params: int
    macs: int
    file: Optional[pathlib.Path] = None
    latency_ms: Optional[float] = None

    @property
    def size_bytes(self) -> Optional[int]:
        """Size on disk of :attr:`file` (all files of a folder), ``None`` without one."""
        if self.file is None:
            return None
        if self.file.is_dir():
            return sum(p.stat().st_size for p in self.file.rglob("*") if p.is_file())
        return self.file.stat().st_size


@dataclasses.dataclass
class DemoResult:
    """Everything :func:`run_demo` measured.

    Attributes:
      config: the configuration it ran.
      stages: the table rows, in pipeline order: float, pruned (masked), slim (rebuilt),
        QAT, TFLite int8.
      history: per-epoch training curves of all stages in sequence: ``stage`` (name per
        epoch), ``accuracy``, ``val_accuracy`` and ``pruned_ratio``.
      channels: ``{layer name: (channels before, channels after)}`` of the conv and dense
        layers.
      parity: :func:`tfcompress.export.verify` of the int8 file against the QAT model.
      int8_compute_ops: names of the int8 file's ops that compute on integer activations.
      saved_model: the slim model's SavedModel folder (a serving format: its size is not
        comparable with the ``.tflite`` files of the table).
      report: the Markdown report, once :func:`tfcompress.demo.report.write_report` wrote it.
    """

    config: DemoConfig
    stages: List[StageResult]
    history: History
    channels: Dict[str, Tuple[int, int]]
    parity: ParityReport
    int8_compute_ops: List[str]
    saved_model: Optional[pathlib.Path] = None
    report: Optional[pathlib.Path] = None

    def stage(self, name: str) -> StageResult:
        """The row whose name starts with ``name`` (e.g. ``"slim"``)."""
        for row in self.stages:
            if row.name.startswith(name):
                return row
        raise KeyError(f"No stage {name!r}; stages are {[row.name for row in self.stages]}.")

    @property
    def speedup(self) -> float:
        """Original float TFLite latency divided by slim int8 TFLite latency."""
        return self.stages[0].latency_ms / self.stages[-1].latency_ms

    @property
    def pruning_speedup(self) -> float:
        """Original float TFLite latency divided by slim float TFLite latency."""
        return self.stages[0].latency_ms / self.stage("slim").latency_ms


def _append_history(history: History, stage: str, fit_history, pruned: float) -> None:
    """Appends a ``fit``'s epochs; ``pruned`` is the ratio of stages that do not log one."""
    logs = fit_history.history
    for epoch in range(len(logs["loss"])):
        history["stage"].append(stage)
        history["accuracy"].append(float(logs["accuracy"][epoch]))
        history["val_accuracy"].append(float(logs["val_accuracy"][epoch]))
        ratios = logs.get("pruned_ratio")
        history["pruned_ratio"].append(pruned if ratios is None else float(ratios[epoch]))


def _accuracy(model, data: Data) -> float:
    return float(model.evaluate(*data, batch_size=256, verbose=0)[1])


def _tflite_accuracy(path: pathlib.Path, data: Data) -> float:
    x, y = data
    return float(np.mean(np.argmax(litert.run(path, x), axis=-1) == y))


def channels_per_layer(before: Any, after: Any) -> Dict[str, Tuple[int, int]]:
    """``{layer name: (output channels in before, in after)}`` of conv and dense layers.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> channels = channels_per_layer(residual_cnn(width=8), residual_cnn(width=4))
      >>> channels["stem_conv"], channels["block2b_conv"], channels["logits"]
      ((8, 4), (16, 8), (10, 10))
    """
    slim = {layer.name: layer for layer in after.layers}
    return {
        layer.name: (int(layer.output.shape[-1]), int(slim[layer.name].output.shape[-1]))
        for layer in before.layers
        if type(layer).__name__ in _CHANNEL_LAYERS and layer.name in slim
    }


def train_float(config: DemoConfig, train: Data, test: Data, verbose: int,
                history: History) -> Any:
    """Trains the residual CNN in float; returns it compiled."""
    model = compile_classifier(residual_cnn(train[0].shape[1:], width=config.width,
                                            flavour=config.keras))
    fit = model.fit(*train, batch_size=_BATCH_SIZE, epochs=config.stage_epochs()["float"],
                    shuffle=config.shuffle,
                    validation_data=test, verbose=verbose)
    _append_history(history, "float", fit, 0.0)
    return model


def prune_during_fit(config: DemoConfig, model: Any, train: Data, test: Data,
                     verbose: int, history: History) -> FPGMPruning:
    """FPGM pruning while training: the ratio ramps from 0 to ``config.ratio`` with one mask
    update per epoch, then the masked model fine-tunes. ``model`` ends up masked; the
    returned callback holds the final masks."""
    epochs = config.stage_epochs()
    steps = math.ceil(len(train[0]) / _BATCH_SIZE)
    end_step = max(1, (epochs["prune"] - 1) * steps)  # end_step is always an update step
    pruning = FPGMPruning(PolynomialRatio(0.0, config.ratio, begin_step=0, end_step=end_step,
                                          frequency=steps))
    compile_classifier(model, learning_rate=5e-4)
    fit = model.fit(*train, batch_size=_BATCH_SIZE, epochs=epochs["prune"] + epochs["finetune"],
                    shuffle=config.shuffle,
                    validation_data=test, callbacks=[pruning], verbose=verbose)
    _append_history(history, "prune", fit, config.ratio)
    return pruning


def quantize(config: DemoConfig, slim: Any, train: Data, test: Data, verbose: int,
             history: History) -> Any:
    """PACT quantization-aware fine-tuning of the slim model at ``config.bits`` bits."""
    qat = compile_classifier(quantize_model(slim, config.bits, config.bits), learning_rate=2e-4)
    fit = qat.fit(*train, batch_size=_BATCH_SIZE, epochs=config.stage_epochs()["qat"],
                  shuffle=config.shuffle,
                  validation_data=test, verbose=verbose)
    _append_history(history, f"QAT {config.bits}-bit", fit, config.ratio)
    return qat


def _make_output(config: DemoConfig) -> pathlib.Path:
    out = pathlib.Path(config.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create the output folder {str(out)!r} ({error.strerror}). "
                         "Pass --output with a writable folder.") from error
    return out


def time_files(config: DemoConfig, stages: List[StageResult], verbose: int
               ) -> List[StageResult]:
    """The stages with a ``.tflite`` file, timed together (LiteRT, one thread, interleaved
    rounds), with their ``latency_ms`` filled in; the other stages unchanged."""
    timed = [i for i, stage in enumerate(stages) if stage.file is not None]
    runs = 20 if config.quick else config.latency_runs
    latencies = litert.compare_latency([stages[i].file for i in timed], threads=1, runs=runs,
                                       warmup=max(2, runs // 10), progress=verbose == 1)
    stages = list(stages)
    for i, latency in zip(timed, latencies):
        stages[i] = dataclasses.replace(stages[i], latency_ms=latency.median_ms)
    return stages


def run_demo(config: Optional[DemoConfig] = None, *, verbose: int = 2,
             log: Callable[[str], None] = print) -> DemoResult:
    """Runs the whole pipeline on sklearn's digits and writes the model files.

    Steps: train float -> FPGM pruning during fit (``PolynomialRatio(0 -> ratio)``) and
    fine-tuning -> ``rebuild`` -> PACT QAT -> export the original float TFLite, the slim
    float TFLite, the slim SavedModel and the slim int8 TFLite -> parity check -> LiteRT
    latency of the three ``.tflite`` files (one thread, median of interleaved runs). Files
    written to ``config.output``: ``float.tflite``, ``slim_float.tflite``,
    ``slim_saved_model/``, ``slim_int8.tflite``.

    Args:
      config: the :class:`DemoConfig` (default: ``DemoConfig()``).
      verbose: Keras ``fit`` verbosity (0 silent, 1 progress bars, also for the latency
        rounds, 2 one line per epoch).
      log: receives one line per step.

    Returns:
      The :class:`DemoResult`; render it with :func:`tfcompress.demo.report.write_report`.

    Raises:
      ValueError: if the output folder cannot be created or written.

    Example (about a minute, so not run as a doctest):
      >>> from tfcompress.demo import DemoConfig, run_demo
      >>> result = run_demo(DemoConfig(output="/tmp/demo", quick=True), verbose=0)  # doctest: +SKIP
      >>> result.stage("slim").params < result.stage("float").params  # doctest: +SKIP
      True
    """
    config = config or DemoConfig()
    out = _make_output(config)
    resolve_flavour(config.keras).module.utils.set_random_seed(config.seed)
    train, test = load_digits(size=16)
    if config.quick:
        train = (train[0][:_QUICK_SAMPLES], train[1][:_QUICK_SAMPLES])
    history: History = {"stage": [], "accuracy": [], "val_accuracy": [], "pruned_ratio": []}

    log(f"[1/6] training the float residual CNN (width {config.width}, {config.keras}) on "
        f"{len(train[0])} digits")
    model = train_float(config, train, test, verbose, history)
    float_row = StageResult("float", _accuracy(model, test), count_params(model),
                            count_macs(model), to_tflite(model, out / "float.tflite", None))

    log(f"[2/6] FPGM pruning during fit to ratio {config.ratio}, then fine-tuning")
    pruning = prune_during_fit(config, model, train, test, verbose, history)
    masked_row = StageResult("pruned (masked)", _accuracy(model, test), count_params(model),
                             round(pruning.macs_ratio * float_row.macs))

    log("[3/6] rebuilding the slim model")
    slim = compile_classifier(rebuild(model, pruning.masks))
    slim_row = StageResult("slim (rebuilt)", _accuracy(slim, test), count_params(slim),
                           count_macs(slim), to_tflite(slim, out / "slim_float.tflite", None))
    saved_model = to_saved_model(slim, out / "slim_saved_model")

    log(f"[4/6] PACT quantization-aware training, {config.bits}-bit weights and activations")
    qat = quantize(config, slim, train, test, verbose, history)
    qat_row = StageResult(f"QAT {config.bits}-bit (Keras)", _accuracy(qat, test),
                          slim_row.params, slim_row.macs)

    log("[5/6] exporting the slim int8 TFLite file and checking parity")
    int8_path = to_tflite(qat, out / "slim_int8.tflite", "int8")
    parity = verify(qat, int8_path, test[0], raise_on_failure=False)
    int8_ops = [op.name for op in tflite_ops(int8_path)
                if op.name not in CONVERSION_OPS and not op.computes_in_float]
    int8_row = StageResult("TFLite int8", _tflite_accuracy(int8_path, test), slim_row.params,
                           slim_row.macs, int8_path)

    log("[6/6] timing the float, slim float and slim int8 TFLite files (LiteRT, 1 thread)")
    stages = time_files(config, [float_row, masked_row, slim_row, qat_row, int8_row], verbose)
    return DemoResult(config, stages, history, channels_per_layer(model, slim), parity,
                      int8_ops, saved_model)
