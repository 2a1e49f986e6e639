"""Short TFLite conversion errors: what failed, in which layer, and the fix.

The TFLite converter reports a failure twice: in its exception, and as kilobytes of MLIR
diagnostics (op locations with whole call stacks) that its C++ code writes to file
descriptor 2, bypassing ``sys.stderr``. :func:`captured_stderr` keeps that output off the
user's terminal; :func:`explain` turns both into a :class:`ConversionError` of a few lines
that keeps the full text on its ``details`` attribute (it is also logged at DEBUG).

Example:
  >>> text = ('loc(fused["MaxPool3D:", "model/pool/MaxPool3D@__inference_f"]): error: '
  ...         "'tf.MaxPool3D' op is neither a custom op nor a flex op\\n"
  ...         "TF Select ops: MaxPool3D\\n")
  >>> missing_ops(text), op_scopes(text)
  (['MaxPool3D'], {'MaxPool3D': ['model/pool/MaxPool3D']})
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Dict, Iterable, Iterator, List, Sequence

__all__ = ["ConversionError", "captured_stderr", "explain", "missing_ops", "op_scopes"]

_LOG = logging.getLogger("tfcompress.export")

_SELECT_OPS = re.compile(r"TF Select ops: ([^\n]+)")
_NOT_BUILTIN = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
# An op location in the MLIR diagnostics: fused["<Op>:", "<name scope path>@<function>"],
# with a `callsite(` before the path when the converter recorded Python frames.
_LOCATION = re.compile(r'fused\["(\w+):",\s*(?:callsite\()?"([^"@]+)@')
_NEEDS_STATIC = ("requires element_shape to be static", "TensorListReserve")
_MAX_REASON = 160


class ConversionError(ValueError):
    """The TFLite converter rejected the model.

    Attributes:
      details: the converter's full error text and diagnostics (kilobytes of MLIR op
        locations), for a bug report; the message itself stays a few lines.
      ops: the TF ops that have no TFLite builtin kernel (empty for other failures).
      layers: the names of the Keras layers those ops come from, where the converter's
        op locations name them.
    """

    def __init__(self, message: str, details: str = "", ops: Sequence[str] = (),
                 layers: Sequence[str] = ()):
        super().__init__(message)
        self.details = details
        self.ops = tuple(ops)
        self.layers = tuple(layers)


class _Captured:
    """What :func:`captured_stderr` read back; ``text`` is set when the block exits."""

    text = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Redirects file descriptor 2 (C++ and Python writes alike) to a temporary file while
    the block runs; the text is on the yielded object afterwards and logged at DEBUG.

    The redirection is process-wide: other threads' stderr output during the block is
    captured too.
    """
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
            if captured.text.strip():
                _LOG.debug("TFLite converter output:\n%s", captured.text)


def missing_ops(text: str) -> List[str]:
    """The TF ops the converter reports as having neither a builtin nor a flex kernel."""
    found: List[str] = []
    for match in _SELECT_OPS.finditer(text):
        found += [name.strip() for name in match.group(1).split(",") if name.strip()]
    found += _NOT_BUILTIN.findall(text)
    return list(dict.fromkeys(found))


def op_scopes(text: str) -> Dict[str, List[str]]:
    """``{op type: [name scope paths]}`` of the op locations in the converter's text."""
    scopes: Dict[str, List[str]] = {}
    for op, scope in _LOCATION.findall(text):
        if scope not in scopes.setdefault(op, []):
            scopes[op].append(scope)
    return scopes


def _layer_of(scope: str, names: Iterable[str], models: Iterable[str]) -> str:
    """The deepest name scope component that is a layer name (Keras 3 adds ``_<n>`` to
    scopes it opens twice), preferring layers over the (nested) models holding them."""
    names, models = set(names), set(models)
    found = []
    for part in scope.split("/")[:-1]:
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in names:
                found.append(candidate)
                break
    layers = [name for name in found if name not in models]
    return (layers or found or [""])[-1]


def _layer_names(model) -> Iterator[tuple]:
    """``(name, is a model)`` of ``model`` and of every layer in it, nested ones too."""
    yield model.name, True
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "layers", None) is not None:
            yield from _layer_names(layer)
        else:
            yield layer.name, False
            inner = getattr(layer, "layer", None)  # wrappers: Bidirectional, TimeDistributed
            if inner is not None and hasattr(inner, "name"):
                yield inner.name, False


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line:
            reason = line.rsplit("error:", 1)[1].strip()
            if reason and not reason.startswith("failed while converting"):
                return reason[:_MAX_REASON]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (" ".join(lines[:2]) or "unknown error")[:_MAX_REASON]


def explain(error: Exception, stderr_text: str, model, quantize, batch) -> ConversionError:
    """A :class:`ConversionError` of at most five lines for a failed conversion of
    ``model``, from the converter's exception and its captured stderr."""
    details = f"{error}\n{stderr_text}".strip()
    ops = missing_ops(details)
    entries = list(_layer_names(model))
    names = [name for name, _ in entries]
    models = [name for name, is_model in entries if is_model]
    scopes = op_scopes(details)
    layers = list(dict.fromkeys(
        layer for op in ops for scope in scopes.get(op, ())
        for layer in [_layer_of(scope, names, models)] if layer))
    footer = "The converter's full output is on this error's `details` (and logged at DEBUG)."
    if ops:
        where = f" (layer{'s' if len(layers) > 1 else ''} {', '.join(map(repr, layers))})" \
            if layers else ""
        message = (
            f"TFLite conversion of {model.name!r} failed: TF op{'s' if len(ops) > 1 else ''} "
            f"{', '.join(ops)}{where} {'have' if len(ops) > 1 else 'has'} no TFLite builtin "
            "kernel.\nFix: pass select_tf_ops=True (CLI: --select-tf-ops) to keep them as TF "
            "Select (flex) ops; the file then needs a LiteRT runtime with the flex delegate "
            "linked (Android: tensorflow-lite-select-tf-ops). Or replace those layers.\n"
            + footer
        )
        return ConversionError(message, details, ops, layers)
    hint = ("Check that every layer maps to a TFLite builtin op; try quantize=None to see "
            "whether quantization is the cause.")
    if batch is None and any(marker in details for marker in _NEEDS_STATIC):
        hint = ("The model needs static shapes (e.g. recurrent layers): pass batch_size=1 "
                "or 'auto' (CLI: --batch-size 1).")
    message = (
        f"TFLite conversion of {model.name!r} with quantize={quantize!r}, batch_size="
        f"{batch!r} failed: {_first_error(details)}\n{hint}\n{footer}"
    )
    return ConversionError(message, details)
