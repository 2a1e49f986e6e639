"""``Masks``: the kept channel indices of each channel group, with a JSON round trip."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress._io import JsonDocument

__all__ = ["Masks", "check_masks"]

_FORMAT = "tfcompress.pruning.Masks"
_VERSION = 1


class Masks(JsonDocument):
    """Kept channel indices per channel group (see :class:`~tfcompress.pruning.ChannelGraph`).

    Groups missing from ``kept`` keep all their channels. Two ``Masks`` are equal when they
    keep the same channels of the same groups of the same sizes.

    Args:
      kept: ``{group id: kept channel indices}`` (sorted, unique); empty cuts the whole
        group, which only residual branch groups allow (``ChannelGraph.branches``).
      sizes: ``{group id: number of channels}`` for every group (prunable or not).
      layers: ``{group id: names of the layers the group involves}`` (for reports).
      barriers: ``{group id: [(layer, reason), ...]}`` for groups that cannot be pruned.
      probed: ``{layer: verdict}`` for layers no handler knows that were judged by running
        them (``ChannelGraph.probed``), for reports.

    Raises:
      ValueError: if a kept group has no size, or its indices are unsorted, repeated or
        out of range.

    Example:
      >>> masks = Masks({"conv": [0, 2]}, sizes={"conv": 4})
      >>> masks.pruned_ratio
      0.5
      >>> Masks.from_json(masks.to_json()) == masks
      True
    """

    KIND = "Masks"

    def __init__(
        self,
        kept: Mapping[str, Sequence[int]],
        sizes: Mapping[str, int],
        layers: Optional[Mapping[str, Sequence[str]]] = None,
        barriers: Optional[Mapping[str, Iterable[Tuple[str, str]]]] = None,
        probed: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.probed: Dict[str, str] = {str(k): str(v) for k, v in (probed or {}).items()}
        self.sizes: Dict[str, int] = {str(k): int(v) for k, v in sizes.items()}
        self.layers: Dict[str, Tuple[str, ...]] = {k: tuple(v) for k, v in (layers or {}).items()}
        self.barriers: Dict[str, Tuple[Tuple[str, str], ...]] = {
            k: tuple((str(a), str(b)) for a, b in v) for k, v in (barriers or {}).items()}
        self.kept: Dict[str, np.ndarray] = {}
        for gid, idx in kept.items():
            if gid not in self.sizes:
                raise ValueError(f"Group {gid!r} has kept indices but no size; pass "
                                 f"sizes={{{gid!r}: n_channels, ...}}.")
            raw = np.asarray(idx)
            if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
                raise ValueError(f"Kept indices of group {gid!r} must be a flat list of integer "
                                 f"channel indices, got {idx!r}.")
            idx = raw.astype(np.int64)
            size = self.sizes[gid]
            if len(idx) and (idx.min() < 0 or idx.max() >= size or np.any(np.diff(idx) <= 0)):
                raise ValueError(f"Kept indices of group {gid!r} must be sorted, unique and in "
                                 f"0..{size - 1}; got {idx.tolist()}.")
            self.kept[gid] = idx

    # ----- statistics ---------------------------------------------------------------------
    @property
    def pruned_ratio(self) -> float:
        """Fraction of the channels of all prunable (masked) groups that are removed."""
        total = sum(self.sizes[g] for g in self.kept)
        removed = sum(self.sizes[g] - len(idx) for g, idx in self.kept.items())
        return removed / total if total else 0.0

    @property
    def cut(self) -> Tuple[str, ...]:
        """The groups cut to zero channels (their residual branches are removed)."""
        return tuple(gid for gid, idx in self.kept.items() if len(idx) == 0)

    def pruned(self, group_id: str) -> np.ndarray:
        """Indices of the pruned channels of ``group_id`` (empty if it is not masked)."""
        if group_id not in self.kept:
            return np.zeros(0, np.int64)
        return np.setdiff1d(np.arange(self.sizes[group_id]), self.kept[group_id])

    # ----- serialization ------------------------------------------------------------------
    def get_config(self) -> Dict[str, Any]:
        """A JSON-compatible dict (see :meth:`from_config`)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            **({"probed": dict(self.probed)} if self.probed else {}),
            "groups": [
                {"id": gid, "size": size, "layers": list(self.layers.get(gid, ())),
                 **({"kept": self.kept[gid].tolist()} if gid in self.kept else {}),
                 **({"barriers": [list(b) for b in self.barriers[gid]]}
                    if gid in self.barriers else {})}
                for gid, size in self.sizes.items()
            ],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Masks":
        """Inverse of :meth:`get_config`.

        Raises:
          ValueError: if ``config`` is not a masks document of a known version.
        """
        if not isinstance(config, Mapping) or config.get("format") != _FORMAT:
            raise ValueError("Not a tfcompress masks document (expected "
                             f"{{'format': {_FORMAT!r}, ...}}); create one with `masks.to_json()`.")
        if config.get("version") != _VERSION:
            raise ValueError(f"Masks format version {config.get('version')!r} is not supported "
                             f"(this tfcompress reads version {_VERSION}).")
        groups = config.get("groups")
        if not isinstance(groups, list):
            raise ValueError(f"Masks document has no 'groups' list (got {groups!r}); the file is "
                             "damaged or hand-edited: recreate it with `masks.save(path)`.")
        for number, group in enumerate(groups):
            _check_group_entry(number, group)
        probed = config.get("probed", {})
        if not isinstance(probed, Mapping) or not all(
                isinstance(v, str) for v in probed.values()):
            raise ValueError(f"Masks document: 'probed' must map layer names to verdicts, got "
                             f"{probed!r}. Recreate the file with `masks.save(path)`.")
        return cls(
            kept={g["id"]: g["kept"] for g in groups if "kept" in g},
            sizes={g["id"]: g["size"] for g in groups},
            layers={g["id"]: g.get("layers", ()) for g in groups},
            barriers={g["id"]: g["barriers"] for g in groups if "barriers" in g},
            probed=probed,
        )

    # ----- reporting ----------------------------------------------------------------------
    def summary(self, max_layers: int = 3) -> str:
        """A text table: group, layers, channels kept/total and what blocks a group; then
        how each probed layer (no handler, judged by running it) was judged."""
        rows = [("group", "layers", "kept/total", "blocked by")]
        for gid, size in self.sizes.items():
            layers = list(self.layers.get(gid, ()))
            shown = ", ".join(layers[:max_layers]) + (
                f" +{len(layers) - max_layers}" if len(layers) > max_layers else "")
            kept = f"{len(self.kept[gid])}/{size}" if gid in self.kept else f"-/{size}"
            kept += " (branch removed)" if gid in self.cut else ""
            blocked = "; ".join(f"{layer} ({reason})"
                                for layer, reason in self.barriers.get(gid, ()))
            rows.append((gid, shown, kept, blocked))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3]
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        if self.probed:
            lines.append("layers without a handler, judged by running them:")
            lines.extend(f"  {layer}: {verdict}" for layer, verdict in self.probed.items())
        lines.append(f"pruned {self.pruned_ratio:.1%} of the channels of {len(self.kept)} "
                     f"prunable groups ({len(self.barriers)} groups blocked)")
        return "\n".join(line.rstrip() for line in lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Masks):
            return NotImplemented
        return (self.sizes == other.sizes and self.kept.keys() == other.kept.keys()
                and all(np.array_equal(v, other.kept[k]) for k, v in self.kept.items()))

    def __repr__(self) -> str:
        return (f"Masks({len(self.kept)} prunable groups of {len(self.sizes)}, "
                f"pruned_ratio={self.pruned_ratio:.3f})")


def _check_group_entry(number: int, group: Any) -> None:
    """Raises ValueError naming the first malformed field of a group entry of a masks document."""

    def fail(problem: str) -> None:
        raise ValueError(f"Masks document group #{number}: {problem}. The file is damaged or "
                         "hand-edited: recreate it with `masks.save(path)`.")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(group, Mapping):
        fail(f"expected an object {{'id': ..., 'size': ..., 'kept': [...]}}, got {group!r}")
    if not isinstance(group.get("id"), str):
        fail(f"'id' must be a string, got {group.get('id')!r}")
    if not is_int(group.get("size")) or group["size"] < 1:
        fail(f"'size' must be a positive integer, got {group.get('size')!r}")
    kept = group.get("kept", [0])
    if not isinstance(kept, list) or not all(is_int(i) for i in kept):
        fail(f"'kept' must be a list of integer channel indices, got {kept!r}")
    layers = group.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(name, str) for name in layers):
        fail(f"'layers' must be a list of layer names, got {layers!r}")
    barriers = group.get("barriers", [])
    if not isinstance(barriers, list) or not all(
            isinstance(b, list) and len(b) == 2 and all(isinstance(t, str) for t in b)
            for b in barriers):
        fail(f"'barriers' must be a list of [layer, reason] pairs, got {barriers!r}")


def check_masks(masks: Any, model_name: str, groups: Mapping[str, Any],
                removable: Callable[[], Mapping[str, Any]] = dict) -> None:
    """Raises if ``masks`` do not fit the channel ``groups`` of model ``model_name``;
    ``removable()`` gives the groups that may be cut to zero channels (``{id: Branch}``,
    asked for only when the masks cut a group).

    Raises:
      TypeError: if ``masks`` is not a :class:`Masks`.
      ValueError: naming the first mismatch (unknown group, wrong size, bad indices, unequal
        blocks of a grouped convolution, a pruned group that cannot be pruned, a cut group
        that is no residual branch).
    """
    if not isinstance(masks, Masks):
        raise TypeError(f"`masks` must be a tfcompress.pruning.Masks, got "
                        f"{type(masks).__name__}. Create them with `fpgm_masks(model, ratio)` "
                        "or `Masks.load(path)`.")
    for gid, idx in masks.kept.items():
        if gid not in groups:
            raise ValueError(f"Masks do not match model {model_name!r}: group {gid!r} "
                             f"does not exist; the model's groups are "
                             f"{preview_names(groups)}. "
                             "Compute the masks on this model (`fpgm_masks(model, ratio)`).")
        group = groups[gid]
        size = masks.sizes.get(gid, group.size)
        if size != group.size:
            raise ValueError(f"Masks do not match model {model_name!r}: group {gid!r} has "
                             f"{group.size} channels in the model but {size} in the masks. "
                             "Were they computed on another (or already pruned) model?")
        if len(idx) == group.size and np.array_equal(idx, np.arange(group.size)):
            continue
        if not group.prunable:
            raise ValueError(f"Masks prune group {gid!r}, which cannot be pruned in model "
                             f"{model_name!r} (blocked by {list(group.barriers)}).")
        if len(idx) == 0:
            continue
        bad = idx[(idx < 0) | (idx >= group.size)]
        if len(bad):
            raise ValueError(f"Masks keep channel {int(bad[0])} of group {gid!r}, out of "
                             f"range 0..{group.size - 1}.")
        if np.any(np.diff(idx) <= 0):
            raise ValueError(f"Kept indices of group {gid!r} must be sorted and unique.")
        if group.blocks > 1:
            counts = np.bincount(idx // (group.size // group.blocks), minlength=group.blocks)
            if np.any(counts != counts[0]):
                raise ValueError(f"Group {gid!r} feeds a grouped convolution with "
                                 f"{group.blocks} groups: masks must keep the same number "
                                 f"of channels in each block, got {counts.tolist()}.")
    if masks.cut:
        _check_cuts(masks.cut, model_name, removable())


def _check_cuts(cut: Sequence[str], model_name: str, removable: Mapping[str, Any]) -> None:
    """Raises unless every group in ``cut`` is removable, and no ``Add`` loses both inputs."""
    for gid in cut:
        if gid not in removable:
            raise ValueError(
                f"Masks keep no channel of group {gid!r} of model {model_name!r}: only groups "
                "inside a residual branch (one that ends in an Add) can be removed, and this "
                f"is not one. Keep at least one channel; removable groups: "
                f"{preview_names(removable, 4)}.")
    sides: Dict[str, Tuple[int, str]] = {}
    for gid in cut:
        branch = removable[gid]
        side, other = sides.setdefault(branch.merge, (branch.branch_input, gid))
        if side != branch.branch_input:
            raise ValueError(f"Masks cut groups {other!r} and {gid!r}, which remove both inputs "
                             f"of {branch.merge!r}; keep at least one channel of one of them.")


def preview_names(names: Iterable[str], limit: int = 8) -> str:
    """``['a', 'b', ...] (n in all)`` for error messages."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
