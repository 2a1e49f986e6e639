"""tfcompress: PACT quantization and FPGM structured pruning for tf_keras models.

Subpackages:
  * :mod:`tfcompress.quantization` - PACT quantization-aware training on tfmot.
  * :mod:`tfcompress.pruning` - FPGM filter pruning, masks, callback and rebuild.
  * :mod:`tfcompress.export` - SavedModel and TFLite export with parity checks.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
