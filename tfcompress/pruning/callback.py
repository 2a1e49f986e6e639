"""``FPGMPruning``: a Keras callback that prunes filters during ``model.fit``."""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import sys
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import tensorflow as tf

from tfcompress._io import write_text
from tfcompress._keras import (
    callback_bases,
    flavour_of,
    keras,
    read_value,
    require_graph_model,
    serializable,
)
from tfcompress._validate import check_int, check_names, check_ratio, check_ratio_map
from tfcompress.latency.runtime import Runtime
from tfcompress.pruning.counting import graph_macs
from tfcompress.pruning.criteria import check_cuts, latency_plan, resolve_criterion, select_masks
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.schedules import ConstantRatio, PruningSchedule
from tfcompress.pruning.zeroing import BatchZeroing, variable_masks, zero_filters_first

__all__ = ["FPGMPruning"]

_LOG = logging.getLogger(__name__)
_BACKUP_FILE = "fpgm_pruning_state.json"
_DEFAULT_FREQUENCY = 100  # steps between updates when a float schedule meets an unknown epoch size


@dataclasses.dataclass
class _PruningState:
    """What :class:`FPGMPruning` holds for a model: made by ``on_train_begin``, reused by
    later ``fit`` calls; mask updates (and resumes) set ``masks``, ``update_step``, ``metrics``."""

    graph: ChannelGraph  # the model's channel groups
    dense_macs: int  # MACs of the unpruned model, the denominator of macs_ratio
    schedule: PruningSchedule  # of the current fit (a float ratio resolves per fit)
    masks: Optional[Masks] = None  # the masks in force; None before the first update
    update_step: Optional[int] = None  # the step of the update that computed `masks`
    metrics: Dict[str, float] = dataclasses.field(  # of `masks`, written into the logs
        default_factory=lambda: {"pruned_ratio": 0.0, "macs_ratio": 1.0})
    zeroing: Optional[BatchZeroing] = None  # made at the first need; dropped on recompile
    batches: int = 0  # on_train_batch_end calls: the step of a model without optimizer
    first_batch: bool = True  # from on_train_begin to the first on_train_batch_begin
    known_step: Optional[int] = None  # read by the last zeroing, until the next batch begins
    latency_ratios: Optional[Dict[str, float]] = None  # of the latency plan (target_latency)


@serializable()
class FPGMPruning(*callback_bases()):
    """Prunes whole filters during training: FPGM (or l1/l2) masks updated on a schedule.

    No wrapper layers: the callback traces the model once into channel groups
    (:class:`~tfcompress.pruning.ChannelGraph`), and at every step where ``schedule`` says
    so it recomputes the masks on the current weights and zeroes the pruned channels of every
    group member (kernels, biases, BatchNorm gamma/beta, ...). After training the model is
    masked with the final masks, which :attr:`masks` holds; ``rebuild(model, callback.masks)``
    then gives the slim model, computing exactly what the masked one computes.

    When Keras calls each hook, and what it does:

    * ``on_train_begin`` (once per ``fit``): traces a model not seen before; resolves a float
      ``schedule`` with this ``fit``'s epoch size.
    * ``on_train_batch_begin`` (before each batch): reads the step (the optimizer's
      ``iterations``); at the first batch of a ``fit`` that starts mid-schedule, restores the
      masks in force (see *Resuming*); if ``schedule(step)`` says so, recomputes the masks and
      zeroes them before the batch runs (tfmot's convention).
    * ``on_train_batch_end``: in ``"hard"`` mode (in soft mode once the schedule's last update
      has run) zeroes the pruned channels again in one compiled call; writes ``pruned_ratio``
      (prunable channels removed) and ``macs_ratio`` (MACs kept / dense MACs) into the logs.
    * ``on_epoch_end``: the same logs for History, CSVLogger and TensorBoard; with
      ``backup_dir``, saves the masks. (``on_epoch_begin`` only forgets a cached step.)
    * ``on_train_end``: zeroes the final masks; deletes the ``backup_dir`` file.

    Modes: ``"soft"`` is soft filter pruning as in the FPGM paper: an update zeroes only the
    pruned filters of the producers (Conv/Dense kernels and biases), so they may regrow until
    the next update, which may choose other filters (all-zero filters are pruned first). After
    the schedule's last update (``schedule.final_step``) soft mode keeps pruned channels zero
    like hard mode, so the remaining epochs fine-tune the pruned model. ``"hard"`` keeps them
    zero after every batch from the first update on (optimizer moments are left alone: they
    only move weights that are zeroed again before any forward pass uses them).

    Resuming: the schedule runs on the optimizer's ``iterations``, which ``BackupAndRestore``
    and checkpoints restore, so a resumed ``fit`` continues the schedule where it stopped,
    with the masks of the last update before it: saved in ``backup_dir`` (e.g. the folder of
    ``BackupAndRestore``) at each epoch end, so the resumed run matches an uninterrupted one;
    without it, recomputed on the restored weights: the same masks in hard mode (zero filters
    are pruned first), possibly other channels in soft mode.

    Custom training loops: call ``on_train_begin``, then ``on_train_batch_begin`` and
    ``on_train_batch_end`` around each training step, then ``on_train_end`` (which applies the
    final masks), e.g. through a ``keras.callbacks.CallbackList`` as in
    ``examples/custom_training_loop.py``. The step is the ``iterations`` of ``model.optimizer``
    when the model was compiled, otherwise the number of ``on_train_batch_end`` calls so far.

    Args:
      schedule: a :class:`~tfcompress.pruning.PruningSchedule`, or a float ratio meaning
        ``ConstantRatio(ratio, frequency=steps_per_epoch)``: masks recomputed at the start
        of every epoch (every 100 steps when the epoch size is unknown).
      criterion: how filters are ranked within a group: ``"fpgm"``, ``"l1"``, ``"l2"`` or a
        function ``filters -> scores``.
      mode: ``"soft"`` or ``"hard"`` (see above).
      per_layer: layer name -> ratio overriding ``schedule``'s for that layer's group, ramping
        with it (times ``ratio / schedule.final_ratio``); 1.0 cuts a residual branch group.
      exclude: names of layers whose channels are never pruned.
      round_to: kept channels per group are rounded up to a multiple of this.
      min_channels: every group keeps at least this many channels.
      backup_dir: folder where the masks are saved at each epoch end so that a resumed
        ``fit`` continues with them; the file is deleted when training ends normally.
      verbose: ``1`` reports each mask update as Keras callbacks do: on stdout, or to this
        module's logger (INFO) after ``keras.utils.disable_interactive_logging()``.
      target_latency, runtime, threads: prune for this fraction of the model's latency
        instead (see ``fpgm_masks``): ratios planned when training begins, ramping with
        ``schedule`` like ``per_layer`` (a float schedule: in full from the start).

    Raises:
      TypeError: if an argument has the wrong type (e.g. ``round_to`` not an int).
      ValueError: for an unknown ``mode`` or ``criterion``, a ratio outside ``[0, 1)`` (but
        ``per_layer``'s 1.0), ``round_to < 1``, ``min_channels < 1``; a 1.0 that cannot cut.

    Example:
      >>> import numpy as np
      >>> from tfcompress.models import residual_cnn, compile_classifier
      >>> from tfcompress.pruning import FPGMPruning, PolynomialRatio, rebuild
      >>> model = compile_classifier(residual_cnn(width=8))
      >>> x, y = np.zeros((8, 16, 16, 1), "float32"), np.zeros(8, "int64")
      >>> pruning = FPGMPruning(PolynomialRatio(0.0, 0.5, begin_step=0, end_step=2,
      ...                                       frequency=1), mode="hard", verbose=1)
      >>> history = model.fit(x, y, epochs=3, batch_size=8, callbacks=[pruning], verbose=0)
      FPGMPruning: step 0: ratio 0.000, 0.0% of prunable channels pruned, 100.0% of MACs kept
      FPGMPruning: step 1: ratio 0.438, 41.7% of prunable channels pruned, 38.1% of MACs kept
      FPGMPruning: step 2: ratio 0.500, 50.0% of prunable channels pruned, 26.7% of MACs kept
      >>> [round(ratio, 3) for ratio in history.history["pruned_ratio"]]  # one value per epoch
      [0.0, 0.417, 0.5]
      >>> rebuild(model, pruning.masks).get_layer("stem_conv").filters
      4
    """

    def __init__(
        self,
        schedule: Union[float, PruningSchedule],
        *,
        criterion: Any = "fpgm",
        mode: str = "soft",
        per_layer: Optional[Mapping[str, float]] = None,
        exclude: Optional[Iterable[str]] = None,
        round_to: int = 1,
        min_channels: int = 1,
        backup_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        verbose: int = 0,
        target_latency: Optional[float] = None,
        runtime: str = "litert-int8",
        threads: int = 1,
    ):
        super().__init__()
        if isinstance(schedule, bool) or not isinstance(schedule, (numbers.Real, PruningSchedule)):
            raise TypeError(f"`schedule` must be a float ratio or a PruningSchedule, got "
                            f"{schedule!r}. Pass e.g. `0.5` or `PolynomialRatio(0.0, 0.5, "
                            "begin_step=0, end_step=1000)`.")
        if not isinstance(schedule, PruningSchedule):
            schedule = check_ratio(schedule, "schedule")
        if mode not in ("soft", "hard"):
            raise ValueError(f"`mode` must be 'soft' or 'hard', got {mode!r}. 'soft' lets pruned "
                             "filters regrow between updates (FPGM paper); 'hard' keeps them zero.")
        if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
            raise TypeError(f"`backup_dir` must be a folder path (str or os.PathLike), got "
                            f"{backup_dir!r}. Pass e.g. the folder of BackupAndRestore.")
        self.schedule = schedule
        self.criterion = criterion
        self.mode = mode
        self.per_layer = check_ratio_map(per_layer, "per_layer")
        self.exclude = check_names(exclude, "exclude")
        self.round_to = check_int(round_to, "round_to", minimum=1)
        self.min_channels = check_int(min_channels, "min_channels", minimum=1)
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.verbose = check_int(verbose, "verbose", minimum=0)
        self.target_latency, self.runtime, self.threads = target_latency, runtime, threads
        if target_latency is not None:
            Runtime.resolve(runtime, threads)  # fails now, not at the first batch
        self._score = zero_filters_first(resolve_criterion(criterion))
        self._supports_tf_logs = True  # lets the batch-log values reach every epoch callback
        self._state: Optional[_PruningState] = None

    @property
    def masks(self) -> Optional[Masks]:
        """The masks in force (``None`` before the first update)."""
        return None if self._state is None else self._state.masks

    @property
    def graph(self) -> Optional[ChannelGraph]:
        """The :class:`~tfcompress.pruning.ChannelGraph` traced from the model."""
        return None if self._state is None else self._state.graph

    @property
    def pruned_ratio(self) -> float:
        """Fraction of the prunable channels the current masks remove."""
        return 0.0 if self._state is None else self._state.metrics["pruned_ratio"]

    @property
    def macs_ratio(self) -> float:
        """MACs of the masked model divided by the MACs of the dense model."""
        return 1.0 if self._state is None else self._state.metrics["macs_ratio"]

    # ---------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs=None):
        """Traces a model not seen before; resolves the schedule for this ``fit``."""
        model = require_graph_model(self.model)
        state = self._state
        if state is None or state.graph.model is not model:
            graph = ChannelGraph(model)
            check_cuts(graph, self.per_layer, self.exclude)  # now, not at the last update
            state = self._state = _PruningState(graph, graph_macs(graph), self._fit_schedule())
            if self.target_latency is not None:
                state.latency_ratios = self._plan_latency(graph)
        state.schedule = self._fit_schedule()
        state.first_batch, state.known_step = True, None  # BackupAndRestore may restore the step
        if state.zeroing is not None and state.zeroing.step is not self._step_variable():
            state.zeroing = None  # recompiled with another optimizer: zero and read anew

    def on_train_batch_begin(self, batch, logs=None):
        """Restores the masks of a resumed run (first batch); updates them if scheduled."""
        state = self._state
        step = state.known_step if state.known_step is not None else self._read_step()
        state.known_step = None
        should_update, ratio = state.schedule(step)
        if state.first_batch:
            state.first_batch = False
            if not should_update:
                self._restore(step)
        if should_update:
            self._update(step, ratio)

    def on_train_batch_end(self, batch, logs=None):
        """Zeroes the pruned channels again when they must stay zero; logs the ratios."""
        self._state.batches += 1
        if self._keeps_zero():
            self._state.known_step = self._zero()
        if logs is not None:
            logs.update(self._state.metrics)

    def on_epoch_begin(self, epoch, logs=None):
        """Forgets the step read after the last batch: other callbacks may have moved it."""
        self._state.known_step = None

    def on_epoch_end(self, epoch, logs=None):
        """Logs the ratios; saves the masks into ``backup_dir``."""
        if logs is not None:
            logs.update(self._state.metrics)
        if self.backup_dir is not None and self._state.masks is not None:
            self._save_backup()

    def on_train_end(self, logs=None):
        """Zeroes the final masks (soft mode leaves regrown filters until here)."""
        self._state.known_step = None
        if self._state.masks is not None:
            self._zero()
        if self.backup_dir is not None and os.path.exists(self._backup_path()):
            os.remove(self._backup_path())

    # ---------------------------------------------------------------- internals
    def _fit_schedule(self) -> PruningSchedule:
        if isinstance(self.schedule, PruningSchedule):
            return self.schedule
        steps = (self.params or {}).get("steps")
        return ConstantRatio(self.schedule, frequency=int(steps) if steps else _DEFAULT_FREQUENCY)

    def _keeps_zero(self) -> bool:
        """Whether pruned channels must be zero after every batch (hard mode, or soft mode
        once the schedule's last update has run)."""
        state, final = self._state, self._state.schedule.final_step
        return state.masks is not None and (
            self.mode == "hard" or (final is not None and state.update_step >= final))

    def _step_variable(self) -> Optional[tf.Variable]:
        return getattr(getattr(self.model, "optimizer", None), "iterations", None)

    def _read_step(self) -> int:
        variable = self._step_variable()
        if variable is None:
            return self._state.batches
        return int(read_value(variable))  # a MirroredVariable too (int() fails on it)

    def _plan_latency(self, graph: ChannelGraph) -> Dict[str, float]:
        plan = latency_plan(graph, self.target_latency, self.runtime, self.threads,
                            criterion=self.criterion, exclude=self.exclude,
                            round_to=self.round_to, min_channels=self.min_channels)
        self._report(f"FPGMPruning: latency plan: {plan.summary()}")
        return plan.ratios()

    def _select(self, ratio: float) -> Masks:
        final, per_layer = self._state.schedule.final_ratio, None
        given = self.per_layer if self.target_latency is None else self._state.latency_ratios
        if given is not None:  # ramps with the schedule, never above the value given
            scale = ratio / final if final else 1.0
            per_layer = {name: min(value * scale, value) for name, value in given.items()}
            ratio = ratio if self.target_latency is None else None
        return select_masks(self._state.graph, ratio, criterion=self._score, per_layer=per_layer,
                            exclude=self.exclude, round_to=self.round_to,
                            min_channels=self.min_channels)

    def _set_masks(self, masks: Masks, step: int) -> None:
        state = self._state
        if state.masks is None or masks != state.masks:
            state.masks = masks
            macs = graph_macs(state.graph, masks)
            state.metrics = {"pruned_ratio": float(masks.pruned_ratio),
                             "macs_ratio": macs / state.dense_macs if state.dense_macs else 1.0}
        state.update_step = step

    def _zero(self) -> Optional[int]:
        """Zeroes the pruned channels of every group member; returns the step read."""
        state = self._state
        if state.zeroing is None:
            state.zeroing = BatchZeroing(state.graph, self._step_variable())
        state.zeroing.set_masks(state.masks)
        return state.zeroing()

    def _zero_producers(self) -> None:
        """A soft update: zeroes only the producers' filters, so gradients still reach them."""
        graph = self._state.graph
        producers = {key for group in graph.groups for key in group.producers}
        for variable, mask in variable_masks(graph, self._state.masks, producers).values():
            variable.assign(variable * tf.cast(mask, variable.dtype))

    def _update(self, step: int, ratio: float) -> None:
        self._set_masks(self._select(ratio), step)
        if self._keeps_zero():
            self._zero()
        else:
            self._zero_producers()
        self._report(f"FPGMPruning: step {step}: ratio {ratio:.3f}, {self.pruned_ratio:.1%} of "
                     f"prunable channels pruned, {self.macs_ratio:.1%} of MACs kept")

    def _restore(self, step: int) -> None:
        """Restores the masks in force at ``step`` when a ``fit`` starts mid-schedule."""
        state = self._state
        last = state.schedule.last_update_step(step - 1) if step > 0 else None
        if last is None or last == state.update_step:
            return  # nothing pruned yet, or this callback already holds those masks
        entry = self._read_backup().get(str(last))
        masks = Masks.from_config(entry) if entry else self._select(state.schedule(last)[1])
        self._set_masks(masks, last)
        if self._keeps_zero():
            self._zero()

    def _report(self, message: str) -> None:
        """Keras callbacks' ``print_msg``: stdout, or logging when interactive logging is off."""
        if self.verbose and flavour_of(self.model).module.utils.is_interactive_logging_enabled():
            sys.stdout.write(message + "\n")
            sys.stdout.flush()
        else:
            _LOG.log(logging.INFO if self.verbose else logging.DEBUG, message)

    def _backup_path(self) -> str:
        return os.path.join(self.backup_dir, _BACKUP_FILE)

    def _read_backup(self) -> Dict[str, Any]:
        """``{str(update step): masks config}`` saved in ``backup_dir`` (empty without one)."""
        if self.backup_dir is None or not os.path.exists(self._backup_path()):
            return {}
        with open(self._backup_path()) as file:
            return json.load(file)

    def _save_backup(self) -> None:
        step = self._state.update_step
        entries = {key: value for key, value in self._read_backup().items()
                   if int(key) < step}  # drops a stale file's later entries
        entries[str(step)] = self._state.masks.get_config()
        keep = sorted(entries, key=int)[-2:]  # a crash may separate our save from the checkpoint
        os.makedirs(self.backup_dir, exist_ok=True)
        write_text(self._backup_path(), json.dumps({key: entries[key] for key in keep}))

    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments; the schedule is Keras-serialized."""
        schedule = self.schedule
        if isinstance(schedule, PruningSchedule):
            schedule = keras.utils.serialize_keras_object(schedule)
        return {"schedule": schedule, "criterion": self.criterion, "mode": self.mode,
                "per_layer": self.per_layer, "exclude": self.exclude, "round_to": self.round_to,
                "min_channels": self.min_channels, "backup_dir": self.backup_dir,
                "verbose": self.verbose, "target_latency": self.target_latency,
                "runtime": self.runtime, "threads": self.threads}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "FPGMPruning":
        """Recreates the callback from :meth:`get_config`'s output."""
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.utils.deserialize_keras_object(config["schedule"])
        return cls(**config)
