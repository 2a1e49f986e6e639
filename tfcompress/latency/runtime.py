"""The target runtime a latency model describes: LiteRT (XNNPACK) float32 or int8, a thread
count, on this machine.

A :class:`Runtime` names what is measured and where its measurements are cached: the cache
file is keyed by everything that changes a latency (runtime and dtype, threads, LiteRT and
TensorFlow versions, CPU model and machine), so tables measured elsewhere are never reused.

Example:
  >>> runtime = Runtime.resolve("litert-int8", threads=2)
  >>> runtime.dtype, runtime.threads
  ('int8', 2)
  >>> runtime.file_name.startswith("litert-int8-t2-")
  True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
from typing import Any, Dict, Union

__all__ = ["Runtime", "RUNTIMES", "cache_dir", "CACHE_ENV"]

#: Runtime names and the TFLite dtype each measures.
RUNTIMES: Dict[str, str] = {"litert-int8": "int8", "litert-float32": "float32"}

#: Environment variable overriding the cache folder (default ``~/.cache/tfcompress``).
CACHE_ENV = "TFCOMPRESS_CACHE_DIR"

_FORMAT = 1  # bump when what a table entry means changes


def cache_dir() -> pathlib.Path:
    """The folder latency tables are cached in: ``$TFCOMPRESS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tfcompress``, else ``~/.cache/tfcompress``; then ``latency/``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tfcompress")
    return pathlib.Path(root) / "latency"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> Dict[str, str]:
    import tensorflow as tf

    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # pragma: no cover - the package is a dependency
        litert = "unknown"
    return {"litert": litert, "tensorflow": tf.__version__}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A LiteRT runtime to measure: ``name`` (a key of :data:`RUNTIMES`) and ``threads``.

    Attributes:
      name: ``"litert-int8"`` (full-integer TFLite, int8 interface) or ``"litert-float32"``.
      threads: interpreter threads (XNNPACK delegate).
    """

    name: str
    threads: int = 1

    @classmethod
    def resolve(cls, runtime: Union[str, "Runtime"], threads: Any = 1) -> "Runtime":
        """A validated runtime from a name (or a Runtime, returned as it is).

        Raises:
          ValueError: for an unknown name or a thread count that is not a positive int.
        """
        if isinstance(runtime, Runtime):
            return runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime {runtime!r}; choose one of {sorted(RUNTIMES)}, "
                             "e.g. runtime='litert-int8'.")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be a positive int, got {threads!r}; e.g. "
                             "threads=1 (the phone's single big core) or 4.")
        return cls(runtime, threads)

    @property
    def dtype(self) -> str:
        """``"int8"`` or ``"float32"``: how micro-models and whole models are exported."""
        return RUNTIMES[self.name]

    def fingerprint(self) -> Dict[str, Any]:
        """Everything a measurement depends on besides the model: runtime, threads,
        versions, CPU and machine."""
        return {"format": _FORMAT, "runtime": self.name, "threads": self.threads,
                **_versions(), "cpu": _cpu_model(), "machine": platform.machine()}

    @property
    def file_name(self) -> str:
        """``<name>-t<threads>-<hash of the fingerprint>.json``."""
        digest = hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode())
        return f"{self.name}-t{self.threads}-{digest.hexdigest()[:12]}.json"
