"""Validation shared by several public entry points."""

from __future__ import annotations

from typing import Iterator, List

from tfcompress._keras import keras

__all__ = ["float16_layers", "require_float32"]

_LOW_PRECISION = ("float16", "bfloat16")


def _walk(model: "keras.Model") -> Iterator["keras.layers.Layer"]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def float16_layers(model: "keras.Model") -> List[str]:
    """Names of the layers of ``model`` (nested ones too) that compute in float16/bfloat16."""
    return [layer.name for layer in _walk(model)
            if getattr(layer, "compute_dtype", None) in _LOW_PRECISION]


def require_float32(model: "keras.Model", operation: str) -> None:
    """Refuses mixed precision (a ``mixed_float16``/``mixed_bfloat16`` model or global policy).

    Args:
      model: the model ``operation`` is applied to.
      operation: what the user asked for, e.g. ``"PACT quantization-aware training"``.

    Raises:
      ValueError: naming the float16 layers or the global policy, and how to get float32.
    """
    layers = float16_layers(model)
    policy = keras.mixed_precision.global_policy().name
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
