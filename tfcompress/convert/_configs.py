"""One layer's config, translated between tf_keras and Keras 3.

Both Kerases name their built-in layers, initializers, regularizers and constraints alike
and mostly agree on their arguments. The differences are handled by one rule rather than a
table per class: an argument the target class accepts is kept (its value translated: dtype
policies become policy names, nested serialized objects are translated the same way); an
argument the target lacks is dropped when its value is the source class's default (it
changes nothing, e.g. Keras 3's ``lora_rank=None`` or tf_keras's ``time_major=False``) and
refused otherwise, with the argument named.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Dict, Tuple

from tfcompress._keras import Flavour
from tfcompress.layers import CHANNEL_BIAS

#: Shape arguments a first layer may carry (the converted model's Inputs define the shapes),
#: and the input shapes tf_keras's MultiHeadAttention records to build itself when loaded.
_SHAPE_KEYS = frozenset({"batch_input_shape", "batch_shape", "input_shape", "query_shape",
                         "key_shape", "value_shape"})
#: Arguments that a target class takes through ``**kwargs`` (no signature shows them).
_KWARGS = {"activity_regularizer": "Layer", "zero_output_for_mask": "RNN"}
#: Values that change nothing where the target has no such argument: Keras 3's
#: LayerNormalization takes ``rms_scaling`` through ``**kwargs``; tf_keras's 1D padding,
#: cropping and upsampling are channels_last; tf_keras's RNN ``implementation`` picks a
#: kernel, not a result.
_HARMLESS = {"rms_scaling": (False,), "data_format": ("channels_last",),
             "implementation": (1, 2)}
#: Arguments renamed between tf_keras and Keras 3, per class: {class: {tf_keras: keras3}}.
_RENAMED = {"LeakyReLU": {"alpha": "negative_slope"}}
#: tf_keras arguments a class ignores (SeparableConv inherits Conv's kernel arguments but
#: has depthwise and pointwise kernels).
_IGNORED = {name: frozenset({"kernel_initializer", "kernel_regularizer", "kernel_constraint"})
            for name in ("SeparableConv1D", "SeparableConv2D")}
#: Activations both Kerases know by the same name but compute differently
#: (tf_keras: clip(0.2 x + 0.5), Keras 3: relu6(x + 3) / 6).
_DIFFERENT_ACTIVATIONS = frozenset({"hard_sigmoid"})
_ACTIVATION_KEYS = frozenset({"activation", "recurrent_activation"})
_OBJECT_MODULES = ("initializers", "regularizers", "constraints", "layers")


class Refused(Exception):
    """Why one layer (or one of its arguments) has no equivalent in the target Keras."""


def _params(cls: type) -> Dict[str, inspect.Parameter]:
    """The named ``__init__`` arguments of ``cls`` and of the bases its ``**kwargs`` reach."""
    params: Dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        kinds = [p.kind for p in signature.parameters.values()]
        for param in signature.parameters.values():
            if param.name != "self" and param.kind not in (param.VAR_POSITIONAL,
                                                           param.VAR_KEYWORD):
                params.setdefault(param.name, param)
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            break
    return params


def _plain(value: Any) -> Any:
    """``value`` with tuples and tf_keras's ListWrappers as lists (for comparing a config value
    with a default, and for Keras 3, which does not take ListWrappers)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def policy_name(value: Any) -> str:
    """The dtype policy's name (``"float32"``, ``"mixed_float16"``) from a config's dtype:
    a string, a tf_keras ``Policy`` dict or a Keras 3 ``DTypePolicy`` dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("class_name") in ("Policy", "DTypePolicy"):
        return value["config"]["name"]
    raise Refused(f"its dtype policy {value!r} (e.g. a quantized policy) has no equivalent")


def _activation(value: Any, target: Flavour) -> str:
    if not isinstance(value, str):
        raise Refused(f"its activation {value!r} is not a built-in activation")
    if value in _DIFFERENT_ACTIVATIONS:
        raise Refused(f"activation {value!r} computes differently in tf_keras and Keras 3")
    try:
        target.module.activations.get(value)
    except (ValueError, TypeError):
        raise Refused(f"activation {value!r} does not exist in {target.name}") from None
    return value


def _value(key: str, value: Any, source: Flavour, target: Flavour) -> Any:
    if key == "dtype":
        return None if value is None else policy_name(value)
    if key in _ACTIVATION_KEYS and value is not None:
        return _activation(value, target)
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        return translate_object(value, source, target)
    return value


def _renames(name: str, target: Flavour) -> Dict[str, str]:
    renamed = _RENAMED.get(name, {})
    return dict(renamed) if target.is_keras3 else {v: k for k, v in renamed.items()}


def _accepts(tgt_cls: type, key: str, target: Flavour) -> bool:
    if key in _params(tgt_cls):
        return True
    base = getattr(target.module.layers, _KWARGS.get(key, ""), None)
    return isinstance(base, type) and issubclass(tgt_cls, base)


def translate_config(src_cls: type, tgt_cls: type, config: Dict[str, Any],
                     source: Flavour, target: Flavour) -> Dict[str, Any]:
    """``config`` (from ``src_cls``) as a config for ``tgt_cls`` (see the module docstring).

    Raises:
      Refused: naming every argument that has no equivalent.
    """
    src_params, renames = _params(src_cls), _renames(src_cls.__name__, target)
    ignored = _IGNORED.get(src_cls.__name__, frozenset()) if not source.is_keras3 else ()
    out: Dict[str, Any] = {}
    refused = []
    for key, value in config.items():
        if key in ignored or (key in _SHAPE_KEYS and not _accepts(tgt_cls, key, target)):
            continue
        default = src_params[key].default if key in src_params else inspect.Parameter.empty
        if isinstance(value, str) and type(default) in (int, float):
            value = float(value)  # tf_keras writes ReLU's negative_slope as "0.0"
        new_key = renames.get(key, key)
        if _accepts(tgt_cls, new_key, target):
            try:
                out[new_key] = _value(key, _plain(value), source, target)
            except Refused as error:
                refused.append(f"{key}: {error}")
        elif _plain(value) != _plain(default) and value not in _HARMLESS.get(key, ()):
            refused.append(f"argument {key}={value!r} has no {target.name} equivalent")
    if refused:
        raise Refused("; ".join(refused))
    if tgt_cls.__name__ == "BatchNormalization" and isinstance(out.get("axis"), list):
        if len(out["axis"]) != 1:
            raise Refused(f"axis={out['axis']}: {target.name} normalizes over one axis")
        out["axis"] = out["axis"][0]  # tf_keras keeps a built layer's axis as [3]
    if tgt_cls.__name__ == "MultiHeadAttention" and not target.is_keras3:
        out.update({key: None for key in ("query_shape", "key_shape", "value_shape")})
    return out


def built_in_class(obj: Any, source: Flavour, namespace: str = "layers") -> str:
    """The class name of ``obj`` if it is ``<source>.<namespace>.<name>`` itself.

    Raises:
      Refused: for a class of the user's own (a subclass of a built-in included).
    """
    cls = type(obj)
    if getattr(getattr(source.module, namespace), cls.__name__, None) is not cls:
        raise Refused(f"{cls.__module__}.{cls.__qualname__} is a custom class, not a "
                      f"built-in {source.name} {namespace[:-1]}; only built-in layers are "
                      "translated (rebuild it with the other Keras's classes by hand)")
    return cls.__name__


def target_class(name: str, target: Flavour, namespace: str = "layers") -> type:
    """``<target>.<namespace>.<name>``."""
    cls = getattr(getattr(target.module, namespace), name, None)
    if not isinstance(cls, type):
        raise Refused(f"{name} has no {target.name} equivalent ({target.name} has no "
                      f"{namespace}.{name})")
    return cls


def translate_object(value: Dict[str, Any], source: Flavour, target: Flavour
                     ) -> Dict[str, Any]:
    """A serialized initializer, regularizer, constraint or wrapped layer, translated."""
    namespace = str(value.get("module") or "").rpartition(".")[2]
    registered = value.get("registered_name")
    name = value["class_name"]
    if namespace not in _OBJECT_MODULES or (registered and registered != name):
        raise Refused(f"{name} is not a built-in object of {source.name}")
    src_cls = getattr(getattr(source.module, namespace), name, None)
    if not isinstance(src_cls, type):
        raise Refused(f"{name} is not a built-in {namespace[:-1]} of {source.name}")
    tgt_cls = target_class(name, target, namespace)
    config = translate_config(src_cls, tgt_cls, value["config"], source, target)
    if target.is_keras3:  # Keras 3 needs the module to find a nested layer class
        return {"module": f"keras.{namespace}", "class_name": name, "config": config,
                "registered_name": None}
    return {"class_name": name, "config": config}


def layer_config(layer: Any, source: Flavour, target: Flavour) -> Tuple[type, Dict[str, Any]]:
    """The target class and config equivalent to the built-in ``layer``.

    Raises:
      Refused: for Lambda layers, custom classes, classes or arguments with no equivalent.
    """
    if type(layer).__name__ == "Lambda":
        raise Refused("a Lambda layer runs Python code, which cannot be translated; "
                      "replace it with built-in layers")
    if type(layer) in CHANNEL_BIAS.values():  # tfcompress's own layer: its twin
        tgt_cls = CHANNEL_BIAS[target.name]
    else:
        tgt_cls = target_class(built_in_class(layer, source), target)
    config = dict(layer.get_config())
    config.pop("trainable", None)  # set on the new layer: not every class takes it
    return tgt_cls, translate_config(type(layer), tgt_cls, config, source, target)
