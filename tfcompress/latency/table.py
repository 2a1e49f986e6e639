"""``LatencyTable``: measured micro-benchmark latencies of one runtime, cached on disk.

Entries are ``{unit key: milliseconds}`` (``null`` for a unit that does not convert, with the
reason under ``failed``). The file lives in :func:`~tfcompress.latency.runtime.cache_dir`
under :attr:`Runtime.file_name`, which hashes the runtime's fingerprint (runtime, threads,
LiteRT/TensorFlow versions, CPU), so a table is only ever reused on the setup it was
measured on. Measuring is incremental: missing units are measured in batches and the file
is rewritten (atomically) after each batch, so an interrupted run keeps its progress.

Example:
  >>> import tempfile
  >>> from tfcompress._keras import keras
  >>> from tfcompress.latency.micro import make_unit
  >>> table = LatencyTable("litert-float32", path=tempfile.mkdtemp() + "/table.json")
  >>> units = [make_unit([(keras.layers.Dense, {"units": n})], [(32,)]) for n in (4, 64)]
  >>> small, large = table.lookup(units)
  >>> len(table), table.lookup(units[:1]) == [small]  # the second lookup reads the cache
  (2, True)
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Union

from tfcompress._io import PathLike, write_text
from tfcompress.latency.micro import Unit, convert_unit, empty_unit, time_models
from tfcompress.latency.runtime import Runtime, cache_dir

__all__ = ["LatencyTable"]

_LOG = logging.getLogger("tfcompress.latency")
_BATCH = 24  # units converted, then timed together (interleaved)


class LatencyTable:
    """Micro-benchmark latencies of one :class:`~tfcompress.latency.runtime.Runtime`.

    Args:
      runtime: a runtime name (``"litert-int8"``, ``"litert-float32"``) or a ``Runtime``.
      threads: interpreter threads (when ``runtime`` is a name).
      path: the JSON file (default: the cache folder, named after the runtime fingerprint).
      rounds: interleaved timing rounds per batch (the minimum over rounds is kept).

    Raises:
      ValueError: for an unknown runtime or a bad thread count.
    """

    def __init__(self, runtime: Union[str, Runtime] = "litert-int8", threads: int = 1, *,
                 path: Optional[PathLike] = None, rounds: int = 7) -> None:
        self.runtime = Runtime.resolve(runtime, threads)
        self.path = pathlib.Path(path) if path else cache_dir() / self.runtime.file_name
        self.rounds = rounds
        self._entries: Dict[str, Optional[float]] = {}
        self._failed: Dict[str, str] = {}
        self._extra: Dict[str, Any] = {}
        self.measured = 0  # units measured (not read from the cache) by this object
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            _LOG.warning("Ignoring unreadable latency table %s (%s); measuring again.",
                         self.path, error)
            return
        if data.get("fingerprint") != self.runtime.fingerprint():
            _LOG.info("Latency table %s was measured on another setup; measuring again.",
                      self.path)
            return
        self._entries = dict(data.get("entries", {}))
        self._failed = dict(data.get("failed", {}))
        self._extra = dict(data.get("extra", {}))

    def save(self) -> pathlib.Path:
        """Writes the table (atomically) and returns its path."""
        document = {"fingerprint": self.runtime.fingerprint(), "entries": self._entries,
                    "failed": self._failed, "extra": self._extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(self.path, json.dumps(document, indent=0, sort_keys=True))

    def get_extra(self, key: str) -> Any:
        """A value cached beside the entries (e.g. a whole model's latency), or None."""
        return self._extra.get(key)

    def set_extra(self, key: str, value: Any) -> None:
        """Caches a JSON value beside the entries (saved with the table)."""
        self._extra[key] = value
        self.save()

    @property
    def overhead_ms(self) -> float:
        """The time of one ``invoke`` of the smallest model: what every micro-benchmark pays
        once on top of its layers (measured at the first need)."""
        return self.lookup([empty_unit()])[0] or 0.0

    def failure(self, unit: Unit) -> Optional[str]:
        """Why ``unit`` could not be measured (None if it was, or was not tried)."""
        return self._failed.get(unit.key)

    def lookup(self, units: Sequence[Unit], progress: bool = False) -> List[Optional[float]]:
        """Milliseconds per invoke of each unit (None: it does not convert for this runtime),
        measuring the units missing from the table."""
        missing = list({u.key: u for u in units if u.key not in self._entries}.values())
        bar = None
        if progress and missing:
            from tfcompress._keras import keras

            bar = keras.utils.Progbar(len(missing), unit_name="micro-benchmark")
        for start in range(0, len(missing), _BATCH):
            self._measure(missing[start:start + _BATCH])
            self.save()
            if bar is not None:
                bar.update(min(start + _BATCH, len(missing)))
        return [self._entries[u.key] for u in units]

    def _measure(self, batch: Sequence[Unit]) -> None:
        contents, measured = [], []
        for unit in batch:
            try:
                contents.append(convert_unit(unit, self.runtime.dtype))
                measured.append(unit)
            except Exception as error:  # a unit that does not convert costs "unknown"
                self._entries[unit.key] = None
                self._failed[unit.key] = f"{type(error).__name__}: {str(error)[:200]}"
                _LOG.info("Latency micro-benchmark failed to convert: %s",
                          self._failed[unit.key])
        times = time_models(contents, self.runtime.threads, rounds=self.rounds) if contents else []
        for unit, ms in zip(measured, times):
            self._entries[unit.key] = ms
        self.measured += len(measured)
