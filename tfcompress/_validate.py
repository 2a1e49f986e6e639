"""Argument validation shared by every public entry point: one check, one exception per mistake.

The rule everywhere: a value of the wrong *type* raises ``TypeError``, a value of the right
type outside its range raises ``ValueError``; the message shows the bad value and an example
of a good one.

Example:
  >>> check_ratio(0.25, "ratio")
  0.25
  >>> try:
  ...     check_ratio("0.5", "ratio")
  ... except TypeError as error:
  ...     print(str(error)[-39:])
  got '0.5' (str). Pass e.g. `ratio=0.5`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional

from tfcompress._keras import TF_KERAS, flavour_of, is_model

__all__ = [
    "check_choice", "check_ratio", "check_number", "check_int", "check_names", "check_ratio_map",
    "float16_layers", "require_float32",
]


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Returns ``value`` if it is one of the strings ``choices``.

    Raises:
      ValueError: for anything else, naming the argument and its choices.

    Example:
      >>> check_choice("fold", "batch_norm", ("keep", "fold"))
      'fold'
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_ratio(value: Any, name: str, allow_one: bool = False) -> float:
    """A pruning ratio: a real number in ``[0, 1)`` (``[0, 1]`` with ``allow_one``: a
    per-layer ratio of 1 removes a residual branch, see ``tfcompress.pruning.depth``).

    Raises:
      TypeError: for a non-number (a string, a bool, None).
      ValueError: for a number outside ``[0, 1)`` (NaN included).
    """
    interval = "[0, 1]" if allow_one else "[0, 1)"
    what = f"`{name}` must be a float in {interval} (the fraction of channels to remove)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}, got {value!r} ({type(value).__name__}). "
                        f"Pass e.g. `{name}=0.5`.")
    value = float(value)
    below_one = value <= 1.0 if allow_one else value < 1.0
    if math.isnan(value) or value < 0.0 or not below_one:
        raise ValueError(f"{what}, got {value}. " + (
            "Use e.g. 0.5 to remove half of the channels." if allow_one else
            "A ratio of 1 would remove every channel; use e.g. 0.5 to remove half of them "
            "(a per-layer ratio of 1 removes a residual branch)."))
    return value


def check_number(value: Any, name: str, allowed: str,
                 valid: Optional[Callable[[float], bool]] = None,
                 example: Optional[Any] = None) -> float:
    """A real number (not a bool) for which ``valid`` holds; ``allowed`` describes the valid
    values in the messages, ``example`` a good value.

    Raises:
      TypeError: for a non-number.
      ValueError: if ``valid(value)`` is False (NaN fails every comparison, so it is refused
        by any bound).

    Example:
      >>> check_number(3, "power", "a positive number", valid=lambda v: v > 0)
      3.0
    """
    hint = "" if example is None else f" Pass e.g. `{name}={example}`."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be {allowed}, got {value!r} "
                        f"({type(value).__name__}).{hint}")
    number = float(value)
    if valid is not None and not valid(number):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.{hint}")
    return number


def check_int(value: Any, name: str, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    """An integer in ``[minimum, maximum]`` (either bound optional).

    Raises:
      TypeError: for a non-integer (a float, a string, a bool).
      ValueError: for an integer out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}). "
                        f"Pass an int, e.g. `{name}={minimum if minimum is not None else 1}`.")
    value = int(value)
    low = "" if minimum is None else f" >= {minimum}"
    high = "" if maximum is None else f" <= {maximum}"
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = " and".join(part for part in (low, high) if part)
        raise ValueError(f"`{name}` must be an integer{bounds}, got {value}.")
    return value


def check_names(names: Any, name: str) -> Optional[List[str]]:
    """Layer names: None, one string, or an iterable of strings (returned as a list).

    Raises:
      TypeError: for anything else.
    """
    if names is None:
        return None
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, Iterable) or isinstance(names, Mapping):
        raise TypeError(f"`{name}` must be a list of layer names, got {names!r}. "
                        "Pass e.g. `['stem_conv', 'logits']`.")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"`{name}` must name layers by their string names, got {bad[0]!r}. "
                        "Pass e.g. `['stem_conv', 'logits']`.")
    return names


def check_ratio_map(ratios: Any, name: str) -> Optional[dict]:
    """``{layer name: ratio}`` (or None), every ratio checked by :func:`check_ratio`, 1.0
    allowed (it cuts a whole group: only residual branch groups take it).

    Raises:
      TypeError: if ``ratios`` is not a mapping, a key is not a string or a ratio not a number.
      ValueError: for a ratio outside ``[0, 1]``.
    """
    if ratios is None:
        return None
    if not isinstance(ratios, Mapping):
        raise TypeError(f"`{name}` must map layer names to ratios, got {ratios!r}. "
                        "Pass e.g. `{'block2a_conv': 0.7}`.")
    check_names(list(ratios), name)
    return {key: check_ratio(value, f"{name}[{key!r}]", allow_one=True)
            for key, value in ratios.items()}


_LOW_PRECISION = ("float16", "bfloat16")


def _walk(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if is_model(layer):
            yield from _walk(layer)


def float16_layers(model: Any) -> List[str]:
    """Names of the layers of ``model`` (nested ones too) that compute in float16/bfloat16."""
    return [layer.name for layer in _walk(model)
            if getattr(layer, "compute_dtype", None) in _LOW_PRECISION]


def require_float32(model: Any, operation: str) -> None:
    """Refuses mixed precision (a ``mixed_float16``/``mixed_bfloat16`` model or global policy).

    Args:
      model: the model ``operation`` is applied to.
      operation: what the user asked for, e.g. ``"PACT quantization-aware training"``.

    Raises:
      ValueError: naming the float16 layers or the global policy, and how to get float32.
    """
    layers = float16_layers(model)
    policy = (flavour_of(model) or TF_KERAS).module.mixed_precision.global_policy().name
    if layers:
        shown = ", ".join(layers[:5]) + (" ..." if len(layers) > 5 else "")
        where = f"layers {shown} of {model.name!r} compute in float16"
    elif policy.startswith("mixed_"):  # the layers tfcompress would create would be float16
        where = f"the global dtype policy is {policy!r}"
    else:
        return
    raise ValueError(
        f"{operation} needs float32, but {where} (mixed precision): TFLite's int8 and float "
        "kernels and tfmot's fake-quant ops are float32. Train or prune in mixed precision "
        "if you like, then make a float32 copy for this step:\n"
        "    keras.mixed_precision.set_global_policy('float32')\n"
        "    float_model = build_model()  # the same architecture, now float32\n"
        "    float_model.set_weights(model.get_weights())"
    )
