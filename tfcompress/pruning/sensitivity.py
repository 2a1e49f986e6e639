"""Sensitivity analysis: how much each channel group costs to prune (PaddleSlim's
``sensitivity``, for tf_keras).

:func:`sensitivity` prunes one group at a time (masks applied to the weights, restored
afterwards) at each ratio and records ``baseline - evaluate(model)``. The result,
:class:`Sensitivity`, also records what each group saves in MACs and, for pairs of groups
that meet in a layer, the exact interaction term, so :meth:`Sensitivity.predict` and
:meth:`Sensitivity.ratios_for` (implemented in :mod:`tfcompress.pruning.allocation`) can
predict any combination of per-group ratios and pick the per-layer ratios that reach a MACs
target for the least predicted loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pathlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfcompress._io import write_text
from tfcompress._keras import keras, require_graph_model
from tfcompress._plots import pyplot, save_figure
from tfcompress.pruning import allocation
from tfcompress.pruning.criteria import Criterion

__all__ = ["Sensitivity", "GroupSensitivity", "sensitivity", "DEFAULT_RATIOS"]

PathLike = Union[str, "pathlib.Path"]
Evaluate = Callable[[Any], float]

#: Ratios scanned by default: 10 % to 90 % of each group's channels.
DEFAULT_RATIOS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_FORMAT = "tfcompress.pruning.Sensitivity"
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GroupSensitivity:
    """What pruning one group costs and saves, at each scanned ratio.

    Attributes:
      id: the group id (see :class:`~tfcompress.pruning.Group`).
      name: a layer of the group that selects it in ``fpgm_masks(per_layer=...)`` and
        ``FPGMPruning(per_layer=...)``; the keys of :meth:`Sensitivity.ratios_for`.
      size: channels of the group.
      layers: every layer of the group (a ``per_layer`` name applies to each group it is in).
      kept: channels kept at each ratio.
      drops: ``baseline - evaluate(model)`` at each ratio (positive: the metric got worse).
      macs_saved: MACs removed at each ratio when only this group is pruned.
    """

    id: str
    name: str
    size: int
    layers: Tuple[str, ...]
    kept: Tuple[int, ...]
    drops: Tuple[float, ...]
    macs_saved: Tuple[int, ...]


class Sensitivity:
    """Per-group metric drop and MACs saved at each pruning ratio (see :func:`sensitivity`).

    Args:
      baseline: ``evaluate(model)`` of the unpruned model.
      ratios: the scanned ratios, increasing.
      groups: one :class:`GroupSensitivity` per scanned group.
      total_macs: MACs of the unpruned model.
      interactions: ``{(group a, group b): w}``: pruning ``da`` channels of ``a`` and ``db``
        of ``b`` together removes ``w * da * db`` fewer MACs than the two savings added.
      criterion: the criterion name used for the masks.
      round_to: the ``round_to`` used for the kept counts.
      model_name: name of the analysed model (informative).

    Raises:
      ValueError: if the per-group sequences do not match ``ratios``.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> model = residual_cnn(width=8)
      >>> x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
      >>> y = model.predict(x, verbose=0)
      >>> scan = sensitivity(model, lambda m: -float(np.abs(m.predict(x, verbose=0) - y).mean()),
      ...                    ratios=(0.25, 0.5), progress=False)
      >>> sorted(scan.table)
      ['block1a_conv', 'block2a_conv', 'block2b_conv', 'stem_conv']
      >>> Sensitivity.from_json(scan.to_json()).table == scan.table
      True
      >>> per_layer = scan.ratios_for(0.6)   # then fpgm_masks(model, 0.0, per_layer=per_layer)
    """

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
        for group in self.groups:
            lengths = {len(group.kept), len(group.drops), len(group.macs_saved)}
            if lengths != {len(self.ratios)}:
                raise ValueError(f"Group {group.id!r} has {sorted(lengths)} values per field but "
                                 f"{len(self.ratios)} ratios were scanned; every field needs one "
                                 "value per ratio.")
        self._by_id = {g.id: g for g in self.groups}

    # ----- views ---------------------------------------------------------------------------
    @property
    def table(self) -> Dict[str, Dict[float, float]]:
        """``{group id: {ratio: metric drop}}``."""
        return {g.id: dict(zip(self.ratios, g.drops)) for g in self.groups}

    @property
    def macs_saved(self) -> Dict[str, Dict[float, int]]:
        """``{group id: {ratio: MACs saved when only that group is pruned}}``."""
        return {g.id: dict(zip(self.ratios, g.macs_saved)) for g in self.groups}

    @property
    def layer_names(self) -> Dict[str, str]:
        """``{group id: the layer name that selects it in per_layer}``."""
        return {g.id: g.name for g in self.groups}

    def group(self, group_id: str) -> GroupSensitivity:
        """The scan of ``group_id``.

        Raises:
          ValueError: if that group was not scanned.
        """
        if group_id not in self._by_id:
            raise ValueError(f"Group {group_id!r} was not scanned; scanned groups: "
                             f"{sorted(self._by_id)}.")
        return self._by_id[group_id]

    # ----- prediction and allocation (see tfcompress.pruning.allocation) -------------------
    def predict(self, per_layer: Mapping[str, float]) -> Tuple[float, float]:
        """Predicted ``(metric drop, fraction of MACs kept)`` of pruning with ``per_layer``.

        Same as :func:`tfcompress.pruning.allocation.predict` (``self`` as ``scan``).
        """
        return allocation.predict(self, per_layer)

    def ratios_for(self, macs_target: float) -> Dict[str, float]:
        """Per-layer ratios that keep at most ``macs_target`` of the MACs, losing the least.

        Same as :func:`tfcompress.pruning.allocation.ratios_for` (``self`` as ``scan``).

        Example:
          >>> per_layer = scan.ratios_for(0.5)  # doctest: +SKIP
          >>> slim = rebuild(model, fpgm_masks(model, 0.0, per_layer=per_layer))  # doctest: +SKIP
        """
        return allocation.ratios_for(self, macs_target)

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
            "groups": [{**dataclasses.asdict(g), "layers": list(g.layers), "kept": list(g.kept),
                        "drops": list(g.drops), "macs_saved": list(g.macs_saved)}
                       for g in self.groups],
            "interactions": [[a, b, w] for (a, b), w in self.interactions.items()],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Sensitivity":
        """Inverse of :meth:`get_config`.

        Raises:
          ValueError: if ``config`` is not a sensitivity document of a known version.
        """
        if not isinstance(config, Mapping) or config.get("format") != _FORMAT:
            raise ValueError("Not a tfcompress sensitivity document (expected "
                             f"{{'format': {_FORMAT!r}, ...}}); create one with "
                             "`sensitivity(model, evaluate).to_json()`.")
        if config.get("version") != _VERSION:
            raise ValueError(f"Sensitivity format version {config.get('version')!r} is not "
                             f"supported (this tfcompress reads version {_VERSION}).")
        groups = [GroupSensitivity(
            id=g["id"], name=g["name"], size=int(g["size"]), layers=tuple(g["layers"]),
            kept=tuple(int(k) for k in g["kept"]), drops=tuple(float(d) for d in g["drops"]),
            macs_saved=tuple(int(m) for m in g["macs_saved"])) for g in config["groups"]]
        return cls(config["baseline"], config["ratios"], groups, config["total_macs"],
                   {(a, b): w for a, b, w in config.get("interactions", [])},
                   criterion=config.get("criterion", "fpgm"),
                   round_to=config.get("round_to", 1), model_name=config.get("model", ""))

    def to_json(self, indent: Optional[int] = None) -> str:
        """The scan as a JSON string."""
        return json.dumps(self.get_config(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Sensitivity":
        """A scan from :meth:`to_json` output.

        Raises:
          ValueError: if ``text`` is not valid JSON or not a sensitivity document.
        """
        try:
            config = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"Sensitivity JSON could not be parsed: {error}.") from error
        return cls.from_config(config)

    def save(self, path: PathLike) -> pathlib.Path:
        """Writes the scan as JSON, atomically. Returns the path."""
        return write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: PathLike) -> "Sensitivity":
        """Reads a scan written by :meth:`save`."""
        return cls.from_json(pathlib.Path(path).read_text())

    # ----- reporting -----------------------------------------------------------------------
    def summary(self) -> str:
        """A text table: one row per group, the metric drop at each ratio."""
        header = ["group", "layer", "channels"] + [f"{r:g}" for r in self.ratios]
        rows = [header] + [[g.id, g.name, str(g.size)] + [f"{d:+.4f}" for d in g.drops]
                           for g in self.groups]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
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
                      label=group.id)
        axes.set_xlabel("fraction of the group's channels pruned")
        axes.set_ylabel(f"metric drop (baseline {self.baseline:.4g})")
        axes.set_title(f"Sensitivity of {self.model_name or 'the model'} ({self.criterion})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", ncol=max(1, len(self.groups) // 12), loc="upper left")
        return save_figure(figure, path, dpi=120)

    def __repr__(self) -> str:
        return (f"Sensitivity({len(self.groups)} groups x {len(self.ratios)} ratios, "
                f"baseline={self.baseline:.4g})")


# ----- the scan ----------------------------------------------------------------------------
def _check_ratios(ratios: Iterable[float]) -> Tuple[float, ...]:
    ratios = list(ratios) if isinstance(ratios, Iterable) else ratios
    try:
        values = sorted({float(r) for r in ratios if not isinstance(r, bool)})
        invalid = [r for r in ratios if isinstance(r, bool) or not 0 < float(r) < 1]
    except (TypeError, ValueError):
        raise ValueError(f"`ratios` must be numbers in (0, 1), got {ratios!r}.") from None
    if not values or invalid:
        raise ValueError(f"`ratios` must be a non-empty sequence of numbers in (0, 1), got "
                         f"{ratios!r}; e.g. (0.1, 0.2, ..., 0.9).")
    return tuple(values)


def _score(evaluate: Evaluate, model: Any) -> float:
    value = evaluate(model)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"`evaluate(model)` must return one number where higher is better "
                        f"(e.g. accuracy), got {value!r:.80}. For a loss, return its negative.")
    if not math.isfinite(float(value)):
        raise ValueError(f"`evaluate(model)` returned {value!r}; it must be finite.")
    return float(value)


def _select_groups(graph: Any, groups: Optional[Iterable[str]]) -> List[Any]:
    prunable = [g for g in graph.groups if g.prunable]
    if groups is None:
        return prunable
    if isinstance(groups, str):
        groups = [groups]
    chosen: List[Any] = []
    by_id = {g.id: g for g in graph.groups}
    for key in groups:
        matches = ([by_id[key]] if key in by_id else
                   [g for g in graph.groups if key in g.producers]
                   or [g for g in graph.groups if key in g.layers])
        if len(matches) != 1:
            raise ValueError(f"`groups` entry {key!r} must be a group id or a layer that "
                             f"produces one group; prunable groups: {[g.id for g in prunable]}.")
        group = matches[0]
        if not group.prunable:
            raise ValueError(f"Group {group.id!r} (from {key!r}) cannot be pruned: blocked by "
                             f"{list(group.barriers)}. Leave it out of `groups`.")
        if group not in chosen:
            chosen.append(group)
    return chosen


def _layer_name(group: Any, prunable: Sequence[Any]) -> str:
    """The layer of ``group`` that touches the fewest other prunable groups (its producer
    when that is unique), so ``per_layer={name: r}`` selects this group alone if possible."""
    candidates = list(dict.fromkeys(group.producers + group.layers))
    return min(candidates, key=lambda name: sum(name in g.layers for g in prunable))


def _snapshot(graph: Any, group: Any) -> List[Tuple[Any, List[np.ndarray]]]:
    layers = {id(graph.records[k].layer): graph.records[k].layer
              for k in group.layers if k in graph.records}
    return [(layer, layer.get_weights()) for layer in layers.values() if layer.weights]


def sensitivity(
    model: Any,
    evaluate: Evaluate,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    groups: Optional[Iterable[str]] = None,
    *,
    criterion: Union[str, Criterion] = "fpgm",
    round_to: int = 1,
    progress: bool = True,
) -> Sensitivity:
    """Measures how much ``evaluate`` drops when each channel group alone is pruned.

    For every group and ratio the group's lowest-scored channels are zeroed in ``model``
    (what :func:`~tfcompress.pruning.apply_masks` does), ``evaluate(model)`` is called, and
    the group's weights are restored, so ``model`` is unchanged afterwards.

    Args:
      model: a built Functional or Sequential tf_keras model.
      evaluate: ``model -> float``, higher is better (accuracy, or minus a loss); called
        ``1 + len(groups) * len(ratios)`` times.
      ratios: fractions of each group's channels to prune, each in (0, 1).
      groups: group ids or producing layer names to scan (default: every prunable group).
      criterion: ``"fpgm"``, ``"l1"``, ``"l2"`` or a function ``filters -> scores``.
      round_to: kept counts are rounded up to a multiple of this, as in ``fpgm_masks``;
        use the same value when applying :meth:`Sensitivity.ratios_for`.
      progress: show a progress bar.

    Returns:
      A :class:`Sensitivity`.

    Raises:
      TypeError: if ``model`` is not a tf_keras model or ``evaluate`` is not callable or
        returns something other than a number.
      ValueError: for an unbuilt or subclassed model, ratios outside (0, 1), a group that
        does not exist or cannot be pruned, an unknown criterion, or a non-finite metric.

    Example:
      >>> from tfcompress.models import residual_cnn
      >>> model = residual_cnn(width=8)
      >>> x = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32")
      >>> y = model.predict(x, verbose=0)
      >>> scan = sensitivity(model, lambda m: -float(np.abs(m.predict(x, verbose=0) - y).mean()),
      ...                    ratios=(0.5,), groups=["stem_conv"], progress=False)
      >>> scan.table["stem_conv"][0.5] > 0
      True
    """
    from tfcompress.pruning.graph import ChannelGraph
    from tfcompress.pruning.masks import Masks

    require_graph_model(model)
    if not callable(evaluate):
        raise TypeError(f"`evaluate` must be a function model -> float (higher is better), "
                        f"got {evaluate!r:.80}.")
    ratios = _check_ratios(ratios)
    graph = ChannelGraph(model)
    scanned = _select_groups(graph, groups)
    prunable = [g for g in graph.groups if g.prunable]
    sizes = {g.id: g.size for g in graph.groups}
    # One scoring pass per ratio; each group's kept channels do not depend on the others.
    all_masks = [graph.compute_masks(r, criterion=criterion, round_to=round_to) for r in ratios]
    total = graph.macs()
    baseline = _score(evaluate, model)

    bar = keras.utils.Progbar(len(scanned) * len(ratios), unit_name="evaluation") \
        if progress else None
    results = []
    for group in scanned:
        kept, drops, saved = [], [], []
        snapshot = _snapshot(graph, group)
        for masks in all_masks:
            only = Masks({group.id: masks.kept[group.id]}, sizes=sizes)
            try:
                graph.apply(only)
                drops.append(baseline - _score(evaluate, model))
            finally:
                for layer, weights in snapshot:
                    layer.set_weights(weights)
            kept.append(len(masks.kept[group.id]))
            saved.append(total - graph.macs(only))
            if bar is not None:
                bar.add(1)
        results.append(GroupSensitivity(group.id, _layer_name(group, prunable), group.size,
                                        tuple(group.layers), tuple(kept), tuple(drops),
                                        tuple(saved)))

    interactions = allocation.interaction_terms(graph, results, sizes, total)
    name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    return Sensitivity(baseline, ratios, results, total, interactions, criterion=name,
                       round_to=round_to, model_name=model.name)

