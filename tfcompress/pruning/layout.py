"""Channel layouts: how the last axis of a tensor is made of channel *spaces*.

A *space* is a set of channels created by one layer (a Conv's filters, a Dense's units, a
model input, the output of a layer tfcompress cannot reason about). Spaces that must be
pruned together are merged into one *group* by the tracer (see :mod:`.graph`).

The last axis of every traced tensor is described by a :class:`Layout`: a sequence of
:class:`Segment` s, each the channels of one space, possibly repeated (a DepthwiseConv2D with
``depth_multiplier=m`` turns channel ``c`` into outputs ``c*m .. c*m+m-1``), and the whole
sequence possibly tiled (``Flatten`` turns ``C`` channels at ``P`` positions into ``P*C``
features ordered position-major). A layout maps a set of kept channels per space to the kept
positions on the tensor's last axis, which is all the rebuild and the masking need.

Example (a Conv's 4 channels, then a depthwise conv with ``depth_multiplier=2``; channel 1
pruned):

  >>> conv = Layout((Segment(space=0, size=4),))
  >>> depthwise = conv.repeated(2)
  >>> kept = lambda space: np.array([0, 2, 3])
  >>> conv.positions(kept).tolist(), depthwise.pruned_positions(kept).tolist()
  ([0, 2, 3], [2, 3])
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Segment", "Layout", "concat", "combine_clean"]

#: Returns the kept channel indices of a space, or None when all its channels are kept.
KeptFn = Callable[[int], Optional[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Segment:
    """``size * repeat`` consecutive positions holding the channels of one space.

    Attributes:
      space: id of the channel space (see ``ChannelGraph``).
      size: number of channels of the space.
      repeat: each channel occupies ``repeat`` consecutive positions.
      clean: True if a pruned (zeroed) channel is guaranteed to be exactly 0 here. When False
        (e.g. after ``sigmoid``, since sigmoid(0) = 0.5), consumers of this tensor must zero
        their input slice of the pruned channels so the masked model stays exact.
    """

    space: int
    size: int
    repeat: int = 1
    clean: bool = True

    @property
    def length(self) -> int:
        return self.size * self.repeat


@dataclasses.dataclass(frozen=True)
class Layout:
    """The channel structure of a tensor's last axis: segments, tiled ``tile`` times."""

    segments: Tuple[Segment, ...]
    tile: int = 1

    @property
    def base_length(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def length(self) -> int:
        return self.base_length * self.tile

    @property
    def spaces(self) -> Tuple[int, ...]:
        return tuple(s.space for s in self.segments)

    @property
    def clean(self) -> bool:
        return all(s.clean for s in self.segments)

    def with_clean(self, clean: bool) -> "Layout":
        """A copy whose segments are all marked ``clean`` (False) or unchanged (True)."""
        if clean:
            return self
        return Layout(tuple(dataclasses.replace(s, clean=False) for s in self.segments), self.tile)

    def repeated(self, factor: int) -> "Layout":
        """Each position repeated ``factor`` times (DepthwiseConv with a depth multiplier)."""
        if factor == 1:
            return self
        if self.tile != 1:
            raise ValueError("cannot repeat a tiled layout")
        return Layout(tuple(dataclasses.replace(s, repeat=s.repeat * factor)
                            for s in self.segments))

    def tiled(self, factor: int) -> "Layout":
        """The layout repeated ``factor`` times along the axis (Flatten of spatial positions)."""
        return Layout(self.segments, self.tile * factor)

    def aligned_with(self, other: "Layout") -> bool:
        """True if both layouts have the same segment sizes, repeats and tiling."""
        return self.tile == other.tile and [(s.size, s.repeat) for s in self.segments] == [
            (s.size, s.repeat) for s in other.segments
        ]

    def positions(self, kept: KeptFn, only_dirty: bool = False) -> np.ndarray:
        """Sorted positions on the last axis that survive pruning.

        Args:
          kept: maps a space id to its kept channel indices (None: all kept).
          only_dirty: if True, return instead the *pruned* positions of segments that are not
            clean (the input slices a consumer must zero).
        """
        parts, offset = [], 0
        for seg in self.segments:
            idx = kept(seg.space)
            if only_dirty:
                if seg.clean or idx is None:
                    idx = np.zeros(0, np.int64)
                else:
                    idx = np.setdiff1d(np.arange(seg.size), idx)
            elif idx is None:
                idx = np.arange(seg.size)
            pos = (np.asarray(idx, np.int64)[:, None] * seg.repeat + np.arange(seg.repeat)).ravel()
            parts.append(pos + offset)
            offset += seg.length
        base = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if self.tile == 1:
            return base
        return (np.arange(self.tile)[:, None] * offset + base[None, :]).ravel()

    def pruned_positions(self, kept: KeptFn) -> np.ndarray:
        """Positions on the last axis that pruning removes (complement of ``positions``)."""
        return np.setdiff1d(np.arange(self.length), self.positions(kept))


def concat(layouts: Sequence[Layout]) -> Layout:
    """The layout of a concatenation along the last axis (untiled inputs only)."""
    if any(layout.tile != 1 for layout in layouts):
        raise ValueError("cannot concatenate tiled layouts")
    return Layout(tuple(s for layout in layouts for s in layout.segments))


def combine_clean(layouts: Sequence[Layout], combine: Callable[[Iterable[bool]], bool]) -> Layout:
    """The first (aligned) layout with each segment's ``clean`` = ``combine`` over inputs.

    ``all`` for sums (0 + c is not 0), ``any`` for products (0 * c is 0).
    """
    columns = zip(*(layout.segments for layout in layouts))
    segments = tuple(dataclasses.replace(col[0], clean=combine(s.clean for s in col))
                     for col in columns)
    return Layout(segments, layouts[0].tile)
