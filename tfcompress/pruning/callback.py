"""``FPGMPruning``: a Keras callback that prunes filters during ``model.fit``."""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from tfcompress._io import write_text
from tfcompress._keras import keras, require_graph_model
from tfcompress.pruning.criteria import CRITERIA
from tfcompress.pruning.graph import ChannelGraph
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.schedules import ConstantRatio, PruningSchedule
from tfcompress.pruning.zeroing import Zeroing, variable_masks, zero_filters_first

__all__ = ["FPGMPruning"]

_MODES = ("soft", "hard")
_STATE_FILE = "fpgm_pruning_state.json"
_DEFAULT_FREQUENCY = 100  # steps between updates when a float schedule meets an unknown epoch size


@keras.utils.register_keras_serializable(package="tfcompress")
class FPGMPruning(keras.callbacks.Callback):
    """Prunes whole filters during training: FPGM (or l1/l2) masks updated on a schedule.

    No wrapper layers: the callback traces the model once into channel groups
    (:class:`~tfcompress.pruning.ChannelGraph`), and at every step where ``schedule`` says
    so it recomputes the masks on the current weights and zeroes the pruned channels of every
    group member (kernels, biases, BatchNorm gamma/beta, ...). After training the model is
    masked with the final masks, which :attr:`masks` holds; ``rebuild(model, callback.masks)``
    then gives the slim model, computing exactly what the masked one computes.

    When Keras calls each hook:

    * ``on_train_begin``: traces the model (once per model, reused by later ``fit`` calls).
    * ``on_train_batch_begin``: reads the step (the optimizer's ``iterations``); at the
      first batch of a ``fit`` that resumes mid-schedule it restores the masks in force (see
      *Resuming*); if ``schedule(step)`` says so, recomputes and applies the masks, before the
      batch runs (tfmot's convention).
    * ``on_train_batch_end``: in ``"hard"`` mode (and in soft mode after the last update)
      re-zeroes the pruned channels, so they are exactly zero after every batch; writes
      ``pruned_ratio``/``macs_ratio`` into the logs.
    * ``on_epoch_end``: writes ``pruned_ratio`` (fraction of prunable channels removed) and
      ``macs_ratio`` (MACs kept / dense MACs) into ``logs`` for History, CSVLogger and
      TensorBoard; with ``backup_dir``, saves the masks.
    * ``on_train_end``: applies the final masks.

    Modes: ``"soft"`` is soft filter pruning as in the FPGM paper: an update zeroes only the
    pruned filters of the producers (Conv/Dense kernels and biases), so gradients still reach
    them through BatchNorm and they may regrow until the next update, which may then choose
    other filters (all-zero filters are pruned first and left out of the scoring). Once the schedule's last update (``schedule.final_step``) has run, soft mode keeps the
    pruned channels at zero like hard mode, so the remaining epochs fine-tune the pruned
    model. ``"hard"`` keeps them at zero after every batch from the first update on (the
    optimizer's moment estimates of pruned weights are left alone: they only move weights
    that are zeroed again before any forward pass uses them).

    Resuming: the schedule runs on the optimizer's ``iterations``, which ``BackupAndRestore``
    and checkpoints restore, so a resumed ``fit`` continues the schedule where it stopped.
    The masks in force at that point are the ones computed at the last update before it: give
    ``backup_dir`` (for instance the folder of ``BackupAndRestore``) and the callback saves
    them at each epoch end and reloads them, so the resumed run matches an uninterrupted one.
    Without it, the callback recomputes them on the restored weights with the ratio of that
    update: the same masks in hard mode (the restored pruned filters are zero, and zero
    filters are pruned first), possibly other channels in soft mode.

    Custom training loops: call the hooks yourself, e.g. through a ``CallbackList``. The step
    is the ``iterations`` of ``model.optimizer`` when the model was compiled, otherwise the
    number of ``on_train_batch_end`` calls so far::

        callbacks = keras.callbacks.CallbackList([pruning], model=model)
        callbacks.on_train_begin()
        for step, (x, y) in enumerate(dataset):
            callbacks.on_train_batch_begin(step)
            train_step(x, y)          # your tf.function, applying model.optimizer
            callbacks.on_train_batch_end(step)
        callbacks.on_train_end()       # applies the final masks

    Args:
      schedule: a :class:`~tfcompress.pruning.PruningSchedule`, or a float ratio meaning
        ``ConstantRatio(ratio, frequency=steps_per_epoch)``: masks recomputed at the start
        of every epoch (every 100 steps when the epoch size is unknown).
      criterion: how filters are ranked within a group: ``"fpgm"``, ``"l1"`` or ``"l2"``.
      mode: ``"soft"`` or ``"hard"`` (see above).
      per_layer: layer name -> ratio overriding ``schedule``'s ratio for that layer's group.
        The ratios ramp with the schedule, in proportion to ``ratio / schedule.final_ratio``.
      exclude: names of layers whose channels are never pruned.
      round_to: kept channels per group are rounded up to a multiple of this.
      min_channels: every group keeps at least this many channels.
      backup_dir: folder where the masks are saved at each epoch end so that a resumed
        ``fit`` continues with them; the file is deleted when training ends normally.
      verbose: 1 prints a line at each mask update.

    Raises:
      TypeError: if ``schedule`` is neither a number nor a ``PruningSchedule``, or an
        argument has the wrong type.
      ValueError: for an unknown ``mode`` or ``criterion``, a ratio outside ``[0, 1)``,
        ``round_to < 1`` or ``min_channels < 1``.

    Example:
      >>> import numpy as np
      >>> from tfcompress.models import residual_cnn, compile_classifier
      >>> from tfcompress.pruning import FPGMPruning, PolynomialRatio, rebuild
      >>> model = compile_classifier(residual_cnn(width=8))
      >>> x, y = np.zeros((8, 16, 16, 1), "float32"), np.zeros(8, "int64")
      >>> pruning = FPGMPruning(PolynomialRatio(0.0, 0.5, begin_step=0, end_step=2,
      ...                                       frequency=1))
      >>> history = model.fit(x, y, epochs=3, batch_size=8, callbacks=[pruning], verbose=0)
      >>> history.history["pruned_ratio"][-1]
      0.5
      >>> slim = rebuild(model, pruning.masks)
    """

    def __init__(
        self,
        schedule: Union[float, PruningSchedule],
        *,
        criterion: str = "fpgm",
        mode: str = "soft",
        per_layer: Optional[Mapping[str, float]] = None,
        exclude: Optional[Iterable[str]] = None,
        round_to: int = 1,
        min_channels: int = 1,
        backup_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        verbose: int = 0,
    ):
        super().__init__()
        if isinstance(schedule, bool) or not isinstance(schedule, (numbers.Real, PruningSchedule)):
            raise TypeError(
                f"`schedule` must be a float ratio or a PruningSchedule, got {schedule!r}. "
                "Pass e.g. `0.5` or `PolynomialRatio(0.0, 0.5, begin_step=0, end_step=1000)`."
            )
        if isinstance(schedule, numbers.Real):
            ConstantRatio(schedule)  # validates the ratio with the schedule's own message
            schedule = float(schedule)
        if mode not in _MODES:
            raise ValueError(f"`mode` must be 'soft' or 'hard', got {mode!r}. 'soft' lets pruned "
                             "filters regrow between updates (FPGM paper); 'hard' keeps them zero.")
        _check_criterion(criterion)
        self.schedule = schedule
        self.criterion = criterion
        self.mode = mode
        self.per_layer = _check_per_layer(per_layer)
        self.exclude = _check_exclude(exclude)
        self.round_to = _check_positive_int("round_to", round_to)
        self.min_channels = _check_positive_int("min_channels", min_channels)
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.verbose = int(verbose)
        self._supports_tf_logs = True  # lets the batch-log values reach every epoch callback
        self._graph = None
        self._graph_model = None
        self._schedule: Optional[PruningSchedule] = None
        self._masks = None
        self._update_step: Optional[int] = None
        self._metrics: Dict[str, float] = {"pruned_ratio": 0.0, "macs_ratio": 1.0}
        self._batches_seen = 0
        self._synced = False
        self._zeroings: Dict[bool, Zeroing] = {}  # full or producers-only zeroing
        self._zeroed_masks: Dict[bool, Any] = {}  # the masks each zeroing currently holds

    # ---------------------------------------------------------------- public state
    @property
    def masks(self):
        """The masks in force (``None`` before the first update)."""
        return self._masks

    @property
    def graph(self):
        """The :class:`~tfcompress.pruning.ChannelGraph` traced from the model."""
        return self._graph

    @property
    def pruned_ratio(self) -> float:
        """Fraction of the prunable channels the current masks remove."""
        return self._metrics["pruned_ratio"]

    @property
    def macs_ratio(self) -> float:
        """MACs of the masked model divided by the MACs of the dense model."""
        return self._metrics["macs_ratio"]

    # ---------------------------------------------------------------- Keras hooks
    def on_train_begin(self, logs=None):
        model = require_graph_model(self.model)
        if self._graph is None or self._graph_model is not model:
            self._graph = ChannelGraph(model)
            self._graph_model = model
            self._dense_macs = self._graph.macs()
            self._masks, self._update_step = None, None
            self._zeroings, self._zeroed_masks = {}, {}
        self._schedule = self._resolve_schedule()
        self._synced = False  # BackupAndRestore may restore `iterations` after this hook

    def on_train_batch_begin(self, batch, logs=None):
        step = self._current_step()
        should_update, ratio = self._schedule(step)
        if not self._synced:
            self._synced = True
            if not should_update:
                self._sync(step)
        if should_update:
            self._update(step, ratio)

    def on_train_batch_end(self, batch, logs=None):
        self._batches_seen += 1
        if self._masks is not None and (self.mode == "hard" or self._schedule_over()):
            self._zero(full=True)
        if logs is not None:
            logs.update(self._metrics)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._metrics)
        if self.backup_dir is not None and self._masks is not None:
            self._save_state()

    def on_train_end(self, logs=None):
        if self._masks is not None:
            self._zero(full=True)
        if self.backup_dir is not None:
            path = os.path.join(self.backup_dir, _STATE_FILE)
            if os.path.exists(path):
                os.remove(path)

    # ---------------------------------------------------------------- internals
    def _resolve_schedule(self) -> PruningSchedule:
        if isinstance(self.schedule, PruningSchedule):
            return self.schedule
        steps = (self.params or {}).get("steps")
        frequency = int(steps) if steps else _DEFAULT_FREQUENCY
        return ConstantRatio(self.schedule, frequency=frequency)

    def _schedule_over(self) -> bool:
        final = self._schedule.final_step
        return final is not None and self._update_step is not None and self._update_step >= final

    def _current_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return self._batches_seen
        # get_value reads a MirroredVariable too (int() of one fails under tf.distribute).
        return int(keras.backend.get_value(iterations))

    def _per_layer(self, ratio: float) -> Optional[Dict[str, float]]:
        if not self.per_layer:
            return None
        final = self._schedule.final_ratio
        scale = ratio / final if final else 1.0
        return {name: min(value * scale, value) for name, value in self.per_layer.items()}

    def _compute(self, ratio: float):
        score = CRITERIA[self.criterion] if isinstance(self.criterion, str) else self.criterion
        return self._graph.compute_masks(
            ratio, criterion=zero_filters_first(score), per_layer=self._per_layer(ratio),
            exclude=self.exclude, round_to=self.round_to, min_channels=self.min_channels)

    def _update(self, step: int, ratio: float) -> None:
        self._set_masks(self._compute(ratio), step)
        self._zero(full=self.mode == "hard" or self._schedule_over())
        if self.verbose:
            print(f"FPGMPruning: step {step}: ratio {ratio:.3f}, {self.pruned_ratio:.1%} of "
                  f"prunable channels pruned, {self.macs_ratio:.1%} of MACs kept")

    def _set_masks(self, masks, step: Optional[int]) -> None:
        self._masks, self._update_step = masks, step
        macs = self._graph.macs(masks)
        self._metrics = {"pruned_ratio": float(masks.pruned_ratio),
                         "macs_ratio": float(macs / self._dense_macs) if self._dense_macs else 1.0}

    def _zero(self, full: bool) -> None:
        """Zeroes the pruned channels: of every group member (``full``), or, for a soft
        update, only the producers' filters, so that gradients still reach them."""
        zeroing = self._zeroings.setdefault(full, Zeroing())
        if self._zeroed_masks.get(full) is not self._masks:
            layers = None
            if not full:
                layers = {key for group in self._graph.groups for key in group.producers}
            zeroing.set_masks(variable_masks(self._graph, self._masks, layers))
            self._zeroed_masks[full] = self._masks
        zeroing()

    def _sync(self, step: int) -> None:
        """Restores the masks in force at ``step`` when a ``fit`` starts mid-schedule."""
        last = self._schedule.last_update_step(step - 1) if step > 0 else None
        if last is None or last == self._update_step:
            return  # nothing pruned yet, or this callback already holds those masks
        masks = self._load_state(last)
        if masks is None:
            masks = self._compute(self._schedule(last)[1])
        self._set_masks(masks, last)
        if self.mode == "hard" or self._schedule_over():
            self._zero(full=True)

    def _save_state(self) -> None:
        path = os.path.join(self.backup_dir, _STATE_FILE)
        entries = {key: value for key, value in self._read_state().items()
                   if int(key) < self._update_step}  # drops a stale file's later entries
        entries[str(self._update_step)] = self._masks.get_config()
        keep = sorted(entries, key=int)[-2:]  # a crash may separate our save from the checkpoint
        os.makedirs(self.backup_dir, exist_ok=True)
        write_text(path, json.dumps({key: entries[key] for key in keep}))

    def _read_state(self) -> Dict[str, Any]:
        path = os.path.join(self.backup_dir, _STATE_FILE) if self.backup_dir else None
        if path is None or not os.path.exists(path):
            return {}
        with open(path) as file:
            return json.load(file)

    def _load_state(self, update_step: int):
        entry = self._read_state().get(str(update_step))
        return None if entry is None else Masks.from_config(entry)

    # ---------------------------------------------------------------- serialization
    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments; the schedule is Keras-serialized."""
        schedule = self.schedule
        if isinstance(schedule, PruningSchedule):
            schedule = keras.utils.serialize_keras_object(schedule)
        return {"schedule": schedule, "criterion": self.criterion, "mode": self.mode,
                "per_layer": self.per_layer, "exclude": self.exclude, "round_to": self.round_to,
                "min_channels": self.min_channels, "backup_dir": self.backup_dir,
                "verbose": self.verbose}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "FPGMPruning":
        """Recreates the callback from :meth:`get_config`'s output."""
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.utils.deserialize_keras_object(config["schedule"])
        return cls(**config)


def _check_criterion(criterion: Any) -> None:
    if not callable(criterion) and criterion not in CRITERIA:
        raise ValueError(f"Unknown `criterion` {criterion!r}. Use one of {sorted(CRITERIA)} or "
                         "a function filters -> scores.")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


def _check_per_layer(per_layer: Any) -> Optional[Dict[str, float]]:
    if per_layer is None:
        return None
    if not isinstance(per_layer, Mapping):
        raise TypeError(f"`per_layer` must map layer names to ratios, got {per_layer!r}. "
                        "Pass e.g. `{'block2a_conv': 0.7}`.")
    return {str(name): ConstantRatio(ratio).ratio for name, ratio in per_layer.items()}


def _check_exclude(exclude: Any) -> Optional[list]:
    if exclude is None:
        return None
    names = [exclude] if isinstance(exclude, str) else exclude
    if not isinstance(names, Iterable) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"`exclude` must be a list of layer names, got {exclude!r}. "
                        "Pass e.g. `['stem_conv', 'logits']`.")
    return list(names)
