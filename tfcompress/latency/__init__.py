"""Latency of a model on its target runtime, measured: the tables latency-targeted pruning
reads.

* :class:`Runtime`: LiteRT (XNNPACK) ``"litert-int8"`` or ``"litert-float32"``, a thread
  count; its fingerprint (versions, CPU) keys the cache.
* :class:`LatencyTable`: micro-benchmark latencies of layer units, measured once and cached
  on disk (``$TFCOMPRESS_CACHE_DIR``, else ``~/.cache/tfcompress/latency``).
* :func:`preferred_multiples`: the channel multiples the runtime's kernels prefer, learned
  from the table.
* :func:`measure_models`: whole models exported and timed together (the check).

Pruning for a latency target is ``fpgm_masks(model, target_latency=0.5,
runtime="litert-int8")`` (:mod:`tfcompress.pruning.budget` holds the allocation).

"""

from tfcompress.latency.micro import Unit, make_unit
from tfcompress.latency.runtime import RUNTIMES, Runtime, cache_dir
from tfcompress.latency.table import LatencyTable
from tfcompress.latency.tiles import preferred_multiples
from tfcompress.latency.whole import measure_models

__all__ = [
    "Runtime", "RUNTIMES", "cache_dir", "LatencyTable", "Unit", "make_unit",
    "preferred_multiples", "measure_models",
]
