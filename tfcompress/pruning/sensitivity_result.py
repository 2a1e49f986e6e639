"""What a sensitivity scan measured: :class:`SensitivityResult` and :class:`GroupSensitivity`.

Plain data with its JSON round trip, a text table and a plot. It imports nothing from the
rest of :mod:`tfcompress.pruning`, so the modules that use it point one way::

    sensitivity_result  <--  allocation  <--  sensitivity
    (this module: data)      (predict,        (the scan function, and ``Sensitivity``:
                              ratios_for)       this class plus predict/ratios_for methods)

Every group is labelled, everywhere a user sees it (dict keys, table, plot legend, JSON), by
its **producer layer**: the first layer whose filters make its channels (``block1a_conv``),
the name ``masks.summary()`` shows and ``fpgm_masks(per_layer=...)`` accepts. Only when two
groups share their first producer (or a group has none) is the group id used instead.

Example:
  >>> group = GroupSensitivity("conv", "conv", size=4, layers=("conv", "out"),
  ...                          selects=("conv",), kept=(2,), drops=(0.25,), macs_saved=(100,))
  >>> result = SensitivityResult(0.9, (0.5,), [group], total_macs=400)
  >>> result.table
  {'conv': {0.5: 0.25}}
  >>> SensitivityResult.from_json(result.to_json()).table == result.table
  True
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from tfcompress._io import JsonDocument, PathLike
from tfcompress._plots import pyplot, save_figure

__all__ = ["GroupSensitivity", "SensitivityResult", "group_label"]

_FORMAT = "tfcompress.pruning.Sensitivity"
_VERSION = 2

_Result = TypeVar("_Result", bound="SensitivityResult")


def group_label(group: Any, groups: Sequence[Any]) -> str:
    """The name users see for ``group`` (a :class:`~tfcompress.pruning.Group` of ``groups``).

    Its first producer layer, unless another group has the same first producer or that name
    as its id; then (and for a group without producers) the group id, which is unique.

    Example:
      >>> from tfcompress.pruning.graph import Group
      >>> a = Group("block1a_conv", ("block1a_conv", "block1a_bn"), 8, True, ("block1a_conv",))
      >>> b = Group("shared", ("shared",), 8, True, ("shared",))
      >>> c = Group("shared#2", ("shared",), 8, True, ("shared",))
      >>> [group_label(g, [a, b, c]) for g in (a, b, c)]
      ['block1a_conv', 'shared', 'shared#2']
    """
    if not group.producers:
        return group.id
    name = group.producers[0]
    clash = any(other.id != group.id and (other.id == name or other.producers[:1] == (name,))
                for other in groups)
    return group.id if clash else name


@dataclasses.dataclass(frozen=True)
class GroupSensitivity:
    """What pruning one channel group costs and saves, at each scanned ratio.

    Attributes:
      name: the group's label (see :func:`group_label`): its producer layer, the key of
        :attr:`SensitivityResult.table` and of ``ratios_for``.
      id: the group id (see :class:`~tfcompress.pruning.Group`, :class:`~tfcompress.pruning.Masks`).
      size: channels of the group.
      layers: every layer of the group.
      selects: names of the scanned groups that ``fpgm_masks(per_layer={name: r})`` prunes,
        measured during the scan (the group itself; also a group whose channels ``name``
        consumes, when ``per_layer`` reads ``name`` as a layer of both).
      kept: channels kept at each ratio.
      drops: ``baseline - evaluate(model)`` at each ratio (positive: the metric got worse).
      macs_saved: MACs removed at each ratio when only this group is pruned.
    """

    name: str
    id: str
    size: int
    layers: Tuple[str, ...]
    selects: Tuple[str, ...]
    kept: Tuple[int, ...]
    drops: Tuple[float, ...]
    macs_saved: Tuple[int, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "GroupSensitivity":
        """Inverse of ``dataclasses.asdict``: one entry of a JSON document's ``groups``."""
        return cls(
            name=str(config["name"]), id=str(config["id"]), size=int(config["size"]),
            layers=tuple(config["layers"]), selects=tuple(config["selects"]),
            kept=tuple(int(k) for k in config["kept"]),
            drops=tuple(float(d) for d in config["drops"]),
            macs_saved=tuple(int(m) for m in config["macs_saved"]))


class SensitivityResult(JsonDocument):
    """Per-group metric drop and MACs saved at each pruning ratio (what a scan measured).

    Users get the subclass :class:`~tfcompress.pruning.sensitivity.Sensitivity` from
    :func:`~tfcompress.pruning.sensitivity`, which adds ``predict`` and ``ratios_for``.

    Args:
      baseline: ``evaluate(model)`` of the unpruned model.
      ratios: the scanned ratios, increasing.
      groups: one :class:`GroupSensitivity` per scanned group.
      total_macs: MACs of the unpruned model.
      interactions: ``{(name a, name b): w}``: pruning ``da`` channels of ``a`` and ``db``
        of ``b`` together removes ``w * da * db`` fewer MACs than the two savings added.
      criterion: the criterion name used for the masks.
      round_to: the ``round_to`` used for the kept counts.
      model_name: name of the analysed model (informative).

    Raises:
      ValueError: if two groups have the same name, or the per-group sequences do not
        match ``ratios``.

    Example:
      >>> group = GroupSensitivity("c1", "c1", 4, ("c1", "c2"), ("c1",), kept=(3, 2),
      ...                          drops=(0.1, 0.3), macs_saved=(50, 100))
      >>> result = SensitivityResult(1.0, (0.25, 0.5), [group], total_macs=200)
      >>> result.macs_saved["c1"][0.5], result.group("c1").kept
      (100, (3, 2))
      >>> result
      SensitivityResult(1 groups x 2 ratios, baseline=1: c1)
    """

    KIND = "Sensitivity"

    def __init__(
        self,
        baseline: float,
        ratios: Sequence[float],
        groups: Sequence[GroupSensitivity],
        total_macs: int,
        interactions: Optional[Mapping[Tuple[str, str], float]] = None,
        *,
        criterion: str = "fpgm",
        round_to: int = 1,
        model_name: str = "",
    ) -> None:
        self.baseline = float(baseline)
        self.ratios: Tuple[float, ...] = tuple(float(r) for r in ratios)
        self.groups: Tuple[GroupSensitivity, ...] = tuple(groups)
        self.total_macs = int(total_macs)
        self.interactions: Dict[Tuple[str, str], float] = {
            (str(a), str(b)): float(w) for (a, b), w in (interactions or {}).items()}
        self.criterion = criterion
        self.round_to = int(round_to)
        self.model_name = model_name
        self._by_name = {g.name: g for g in self.groups}
        if len(self._by_name) != len(self.groups):
            raise ValueError(f"Group names must be unique, got {[g.name for g in self.groups]}.")
        for group in self.groups:
            lengths = {len(group.kept), len(group.drops), len(group.macs_saved)}
            if lengths != {len(self.ratios)}:
                raise ValueError(f"Group {group.name!r} has {sorted(lengths)} values per field "
                                 f"but {len(self.ratios)} ratios were scanned; every field "
                                 "needs one value per ratio.")

    # ----- views ---------------------------------------------------------------------------
    @property
    def names(self) -> Tuple[str, ...]:
        """The scanned groups' names, in trace order."""
        return tuple(self._by_name)

    @property
    def table(self) -> Dict[str, Dict[float, float]]:
        """``{name: {ratio: metric drop}}``."""
        return {g.name: dict(zip(self.ratios, g.drops)) for g in self.groups}

    @property
    def macs_saved(self) -> Dict[str, Dict[float, int]]:
        """``{name: {ratio: MACs saved when only that group is pruned}}``."""
        return {g.name: dict(zip(self.ratios, g.macs_saved)) for g in self.groups}

    def group(self, key: str) -> GroupSensitivity:
        """The scan of the group named (or with the group id) ``key``.

        Raises:
          ValueError: if no scanned group has that name or id.
        """
        if key in self._by_name:
            return self._by_name[key]
        for group in self.groups:
            if group.id == key:
                return group
        raise ValueError(f"Group {key!r} was not scanned; scanned groups: {list(self.names)}.")

    # ----- serialization -------------------------------------------------------------------
    def get_config(self) -> Dict[str, Any]:
        """A JSON-compatible dict (see :meth:`from_config`)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "model": self.model_name,
            "criterion": self.criterion,
            "round_to": self.round_to,
            "baseline": self.baseline,
            "total_macs": self.total_macs,
            "ratios": list(self.ratios),
            "groups": [{key: list(value) if isinstance(value, tuple) else value
                        for key, value in dataclasses.asdict(g).items()} for g in self.groups],
            "interactions": [[a, b, w] for (a, b), w in self.interactions.items()],
        }

    @classmethod
    def from_config(cls: Type[_Result], config: Mapping[str, Any]) -> _Result:
        """Inverse of :meth:`get_config`.

        Raises:
          ValueError: if ``config`` is not a sensitivity document of this version.
        """
        if not isinstance(config, Mapping) or config.get("format") != _FORMAT:
            raise ValueError("Not a tfcompress sensitivity document (expected "
                             f"{{'format': {_FORMAT!r}, ...}}); create one with "
                             "`sensitivity(model, evaluate).to_json()`.")
        if config.get("version") != _VERSION:
            raise ValueError(f"Sensitivity format version {config.get('version')!r} is not "
                             f"supported (this tfcompress reads version {_VERSION}); run "
                             "`sensitivity(model, evaluate)` again to get a current document.")
        groups = [GroupSensitivity.from_config(g) for g in config["groups"]]
        return cls(config["baseline"], config["ratios"], groups, config["total_macs"],
                   {(a, b): w for a, b, w in config.get("interactions", [])},
                   criterion=config.get("criterion", "fpgm"),
                   round_to=config.get("round_to", 1), model_name=config.get("model", ""))

    # ----- reporting -----------------------------------------------------------------------
    def summary(self) -> str:
        """A text table: one row per group, the metric drop at each ratio.

        Example:
          >>> group = GroupSensitivity("conv", "conv", 4, ("conv",), ("conv",), (2,), (0.5,),
          ...                          (10,))
          >>> print(SensitivityResult(1.0, (0.5,), [group], total_macs=20).summary())
          layer  channels      0.5
          ------------------------
          conv          4  +0.5000
          metric drop vs baseline 1.0000 (positive: worse); 20 MACs unpruned
        """
        header = ["layer", "channels"] + [f"{r:g}" for r in self.ratios]
        rows = [header] + [[g.name, str(g.size)] + [f"{d:+.4f}" for d in g.drops]
                           for g in self.groups]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"metric drop vs baseline {self.baseline:.4f} (positive: worse); "
                     f"{self.total_macs:,} MACs unpruned")
        return "\n".join(lines)

    def plot(self, path: PathLike) -> pathlib.Path:
        """Draws the metric drop against the ratio, one line per group, as a PNG (atomic).

        Raises:
          ImportError: if matplotlib is not installed.
        """
        plt = pyplot()
        if plt is None:
            raise ImportError("Sensitivity.plot needs matplotlib: `pip install matplotlib`.")
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for group in self.groups:
            axes.plot((0.0,) + self.ratios, (0.0,) + group.drops, marker="o", markersize=3,
                      label=group.name)
        axes.set_xlabel("fraction of the group's channels pruned")
        axes.set_ylabel(f"metric drop (baseline {self.baseline:.4g})")
        axes.set_title(f"Sensitivity of {self.model_name or 'the model'} ({self.criterion})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", ncol=max(1, len(self.groups) // 12), loc="upper left")
        return save_figure(figure, path, dpi=120)

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:6]) + (", ..." if len(self.names) > 6 else "")
        return (f"{type(self).__name__}({len(self.groups)} groups x {len(self.ratios)} ratios, "
                f"baseline={self.baseline:.4g}: {shown})")
