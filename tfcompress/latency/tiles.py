"""The channel multiples a runtime's kernels prefer, learned from measurements.

XNNPACK computes convolutions in tiles of output channels (and packs input channels in
blocks); a channel count between two multiples of the tile costs what the next multiple
costs. :func:`preferred_multiples` sweeps a reference 1x1 convolution over its output and
input channels and a 3x3 depthwise convolution over its channels, one channel at a time,
and fits a staircase ``a + b * ceil(c / m) * m`` for each candidate ``m``: the ``m`` that
fits best is the tile. The sweeps are ordinary table entries, so they are measured once per
runtime and cached with the table.

Example:
  >>> staircase_period(range(1, 17), [1.0 + (c + 3) // 4 for c in range(1, 17)])
  4
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

from tfcompress.latency.micro import make_unit
from tfcompress.latency.table import LatencyTable

__all__ = ["preferred_multiples", "staircase_period", "CANDIDATES"]

#: Tile sizes considered.
CANDIDATES = (1, 2, 4, 8, 16)
_SWEEP = tuple(range(1, 41))


def staircase_period(counts: Sequence[int], times: Sequence[float],
                     candidates: Sequence[int] = CANDIDATES) -> int:
    """The ``m`` whose staircase ``a + b * ceil(c / m) * m`` fits ``times`` best (least
    squares); a smaller ``m`` wins unless a larger one fits clearly (>= 10 %) better."""
    c = np.asarray(counts, np.float64)
    t = np.asarray(times, np.float64)
    best, best_residual = 1, math.inf
    for m in sorted(candidates):
        design = np.stack([np.ones_like(c), np.ceil(c / m) * m], axis=1)
        coef, *_ = np.linalg.lstsq(design, t, rcond=None)
        residual = float(np.sum((design @ coef - t) ** 2))
        if residual < 0.9 * best_residual:
            best, best_residual = m, residual
    return best


def _sweeps() -> Dict[str, list]:
    from tfcompress._keras import keras

    conv, depthwise = keras.layers.Conv2D, keras.layers.DepthwiseConv2D
    return {
        "out": [make_unit([(conv, {"filters": c, "kernel_size": 1})], [(16, 16, 64)])
                for c in _SWEEP],
        "in": [make_unit([(conv, {"filters": 32, "kernel_size": 1})], [(16, 16, c)])
               for c in _SWEEP],
        "depthwise": [make_unit([(depthwise, {"kernel_size": 3, "padding": "same"})],
                                [(16, 16, c)]) for c in _SWEEP],
    }


def preferred_multiples(table: LatencyTable, progress: bool = False) -> Dict[str, int]:
    """``{"out": m, "in": m, "depthwise": m}``: the channel multiple each kind of kernel
    prefers on ``table``'s runtime (cached in the table)."""
    cached = table.get_extra("multiples")
    if cached:
        return dict(cached)
    result = {}
    for kind, units in _sweeps().items():
        times = table.lookup(units, progress=progress)
        result[kind] = staircase_period(_SWEEP, [t if t is not None else 0.0 for t in times])
    table.set_extra("multiples", result)
    return result
