"""Pruning schedules: which training steps update the masks, and to which channel ratio.

The quantity is a *channel ratio*: the fraction of each group's prunable channels that
:class:`~tfcompress.pruning.FPGMPruning` removes. Semantics follow tfmot's
``ConstantSparsity`` and ``PolynomialDecay`` (updates at ``begin_step``, then every
``frequency`` steps until ``end_step``), with one deliberate difference: ``end_step`` itself is
always an update step, so the final ratio is reached even when ``end_step - begin_step`` is not
a multiple of ``frequency`` (with tfmot it silently is not).

Schedules are plain Python objects of Python numbers: the callback asks them once per training
step, outside any ``tf.function``, so there is nothing to trace.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Tuple

from tfcompress._keras import serializable
from tfcompress._validate import check_int, check_number, check_ratio

__all__ = ["PruningSchedule", "ConstantRatio", "PolynomialRatio"]


class PruningSchedule(abc.ABC):
    """Decides, for each training step, whether to recompute the masks and with which ratio.

    When the framework calls each method:

    * ``__call__(step)``: by :class:`~tfcompress.pruning.FPGMPruning` at the beginning of every
      training batch, with ``step`` = the optimizer's ``iterations`` (the number of updates
      already applied). If it returns ``should_update=True`` the callback recomputes the masks
      on the current weights with ``ratio`` before the batch runs (tfmot's convention).
    * ``last_update_step(step)``: once, when training resumes at ``step > 0`` (e.g. after
      ``BackupAndRestore``), to find the masks the interrupted run was using.
    * ``get_config()`` / ``from_config(config)``: by Keras serialization and the callback's own
      ``get_config``.

    Subclasses implement ``__call__`` and ``get_config`` (a flat dict of constructor
    arguments) and register themselves with
    ``keras.utils.register_keras_serializable(package="tfcompress")``.

    Example:
      >>> schedule = ConstantRatio(0.5, begin_step=10, frequency=5)
      >>> schedule(10), schedule(11)
      ((True, 0.5), (False, 0.5))
    """

    @abc.abstractmethod
    def __call__(self, step: int) -> Tuple[bool, float]:
        """Returns ``(should_update, ratio)`` for training step ``step``.

        Args:
          step: the number of optimizer updates already applied (a Python int).

        Returns:
          ``should_update``: whether the masks are recomputed at this step; ``ratio``: the
          channel ratio in ``[0, 1)`` the masks have at this step.
        """

    @abc.abstractmethod
    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments as a flat JSON-serializable dict."""

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PruningSchedule":
        """Recreates a schedule from :meth:`get_config`'s output."""
        return cls(**config)

    @property
    def final_ratio(self) -> Optional[float]:
        """The ratio the schedule ends at, or ``None`` if it has no fixed end.

        The callback ramps its ``per_layer`` ratios in proportion to ``ratio / final_ratio``;
        with ``None`` they apply unchanged from the first update on.
        """
        return None

    @property
    def final_step(self) -> Optional[int]:
        """The last update step, or ``None`` if updates never stop.

        After it, the callback keeps pruned channels at zero in every mode: there is no
        later update that could use regrown filters.
        """
        return None

    def last_update_step(self, step: int) -> Optional[int]:
        """Returns the latest update step ``<= step``, or ``None`` if there was none yet.

        The default scans backwards; subclasses with a closed form override it.
        """
        for candidate in range(int(step), -1, -1):
            if self(candidate)[0]:
                return candidate
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _PeriodicSchedule(PruningSchedule):
    """Shared step logic: updates at ``begin_step + k * frequency`` and at ``end_step``."""

    def __init__(self, begin_step: int, end_step: int, frequency: int, open_ended: bool):
        self.begin_step = check_int(begin_step, "begin_step", minimum=0)
        self.end_step = check_int(end_step, "end_step", minimum=-1 if open_ended else 0)
        self.frequency = check_int(frequency, "frequency", minimum=1)
        if self.end_step != -1 and self.end_step <= self.begin_step:
            raise ValueError(
                f"`end_step` ({self.end_step}) must be greater than `begin_step` "
                f"({self.begin_step})"
                + (", or -1 to never stop." if open_ended else ".")
            )

    @property
    def final_step(self) -> Optional[int]:
        return None if self.end_step == -1 else self.end_step

    def _should_update(self, step: int) -> bool:
        if step < self.begin_step or (self.end_step != -1 and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step

    def last_update_step(self, step: int) -> Optional[int]:
        step = int(step)
        if step < self.begin_step:
            return None
        if self.end_step != -1 and step >= self.end_step:
            return self.end_step
        return step - (step - self.begin_step) % self.frequency


@serializable()
class ConstantRatio(_PeriodicSchedule):
    """Prunes a constant ratio of channels, recomputing the masks every ``frequency`` steps.

    The analogue of tfmot's ``ConstantSparsity``.

    Args:
      ratio: fraction of each group's prunable channels to remove, in ``[0, 1)``.
      begin_step: first step at which the masks are computed.
      end_step: last step at which the masks are recomputed; ``-1`` never stops (in soft
        mode the masks then keep following the weights until training ends).
      frequency: number of steps between two mask updates.

    Raises:
      TypeError: if a step argument is not an int or ``ratio`` is not a number.
      ValueError: if ``ratio`` is outside ``[0, 1)``, a step is negative, ``frequency < 1``
        or ``end_step <= begin_step``.

    Example:
      >>> schedule = ConstantRatio(0.3, begin_step=0, end_step=300, frequency=100)
      >>> [schedule(step)[0] for step in (0, 50, 100, 300, 400)]
      [True, False, True, True, False]
    """

    def __init__(self, ratio: float, begin_step: int = 0, end_step: int = -1,
                 frequency: int = 100):
        super().__init__(begin_step, end_step, frequency, open_ended=True)
        self.ratio = check_ratio(ratio, "ratio")

    def __call__(self, step: int) -> Tuple[bool, float]:
        return self._should_update(int(step)), self.ratio

    @property
    def final_ratio(self) -> float:
        return self.ratio

    def get_config(self) -> Dict[str, Any]:
        return {"ratio": self.ratio, "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}


@serializable()
class PolynomialRatio(_PeriodicSchedule):
    """Ramps the ratio from ``initial_ratio`` to ``final_ratio`` along a polynomial.

    The analogue of tfmot's ``PolynomialDecay``::

        p = clip((step - begin_step) / (end_step - begin_step), 0, 1)
        ratio = final_ratio + (initial_ratio - final_ratio) * (1 - p) ** power

    ``power=3`` prunes fast at first, while many channels are redundant, and slowly near the
    end. The masks are updated at ``begin_step``, every ``frequency`` steps, and at
    ``end_step``, where the ratio is exactly ``final_ratio``.

    Args:
      initial_ratio: ratio at ``begin_step``, in ``[0, 1)``.
      final_ratio: ratio from ``end_step`` on, in ``[0, 1)``.
      begin_step: first update step.
      end_step: last update step (required, ``> begin_step``).
      power: exponent of the polynomial (``1`` is linear); must be positive.
      frequency: number of steps between two mask updates.

    Raises:
      TypeError: if a step argument is not an int, or a ratio or ``power`` not a number.
      ValueError: if a ratio is outside ``[0, 1)``, ``end_step <= begin_step``,
        ``frequency < 1`` or ``power <= 0``.

    Example:
      >>> schedule = PolynomialRatio(0.0, 0.5, begin_step=0, end_step=100, power=1,
      ...                            frequency=50)
      >>> [schedule(step) for step in (0, 50, 75, 100)]
      [(True, 0.0), (True, 0.25), (False, 0.375), (True, 0.5)]
    """

    def __init__(self, initial_ratio: float, final_ratio: float, begin_step: int,
                 end_step: int, power: float = 3, frequency: int = 100):
        super().__init__(begin_step, end_step, frequency, open_ended=False)
        self.initial_ratio = check_ratio(initial_ratio, "initial_ratio")
        self._final_ratio = check_ratio(final_ratio, "final_ratio")
        check_number(power, "power", "a positive number (3 is the usual choice, 1 gives a "
                     "linear ramp)", valid=lambda v: v > 0, example=3)
        self.power = power

    def __call__(self, step: int) -> Tuple[bool, float]:
        step = int(step)
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, progress))
        remaining = (1.0 - progress) ** self.power
        ratio = self.final_ratio + (self.initial_ratio - self.final_ratio) * remaining
        return self._should_update(step), float(ratio)

    @property
    def final_ratio(self) -> float:
        return self._final_ratio

    def get_config(self) -> Dict[str, Any]:
        return {"initial_ratio": self.initial_ratio, "final_ratio": self.final_ratio,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}
