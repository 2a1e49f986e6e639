"""tfcompress: PACT quantization and FPGM structured pruning for Keras models (Keras 3 and
tf_keras).

Subpackages (imported on first access, so ``import tfcompress`` alone stays cheap):
  * :mod:`tfcompress.quantization` - PACT quantization-aware training on tfmot.
  * :mod:`tfcompress.pruning` - FPGM filter pruning, masks, callback and rebuild.
  * :mod:`tfcompress.export` - SavedModel and TFLite export with parity checks.
  * :mod:`tfcompress.convert` - translating models between tf_keras and Keras 3.
  * :mod:`tfcompress.demo` - the whole pipeline on sklearn's digits.
  * :mod:`tfcompress.models`, :mod:`tfcompress.datasets` - a small residual CNN and the
    bundled digits data the demo, examples and benchmarks use.

Example:
  >>> import tfcompress as tfc
  >>> tfc.pruning.fpgm_masks.__name__
  'fpgm_masks'
  >>> "export" in dir(tfc)
  True
"""

import importlib
from typing import Any, List

__version__ = "0.1.0"

#: Subpackages and modules that ``tfcompress.<name>`` imports on first access (PEP 562).
_LAZY = ("pruning", "quantization", "export", "convert", "demo", "cli", "models", "datasets")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Imports ``tfcompress.<name>`` for a name of :data:`_LAZY` the first time it is read."""
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module  # later reads skip this function
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
