"""The one table that maps layer classes to channel handlers, and the decorator that fills it.

Lookup walks the layer class's MRO, so subclasses (``Conv2DTranspose`` is a ``Conv2D``,
``SyncBatchNormalization`` a ``BatchNormalization``) get the most specific row; results are
cached per class. A class with no row in its MRO gets :data:`DEFAULT_BARRIER`, a
:class:`~tfcompress.pruning.handlers.probe.ProbeHandler`: a barrier unless running the layer
on random inputs proves it weightless and channel-wise. tfcompress never guesses.

A new layer family is one module and one decorator (register before tracing)::

    from tfcompress.pruning.handlers import CoupledHandler, register_handler

    @register_handler(MyChannelwiseLayer)
    class MyChannelwiseHandler(CoupledHandler):
        pass

or, to register an instance (handlers with constructor arguments)::

    register_handler(MyMergeLayer, handler=MergeHandler(any))
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Dict, Mapping, Optional, Type, TypeVar, Union

from tfcompress.pruning.handlers.base import ChannelHandler, WeightSpec
from tfcompress.pruning.handlers.probe import ProbeHandler

__all__ = ["HANDLERS", "DEFAULT_BARRIER", "register_handler", "handler_for"]

H = TypeVar("H", bound=Type[ChannelHandler])

_TABLE: Dict[type, ChannelHandler] = {}

#: ``{layer class: handler}``, read-only; fill it with :func:`register_handler`.
HANDLERS: Mapping[type, ChannelHandler] = types.MappingProxyType(_TABLE)

#: The handler of classes without a row: probes each call (see ``handlers.probe``).
DEFAULT_BARRIER = ProbeHandler()


def _validate(layer_classes: tuple, handler: Any) -> None:
    if not layer_classes:
        raise TypeError("register_handler needs at least one layer class, e.g. "
                        "`@register_handler(keras.layers.Conv2D)`.")
    for cls in layer_classes:
        if not isinstance(cls, type):
            raise TypeError(f"register_handler takes layer classes, got {cls!r} "
                            f"({type(cls).__name__}); pass the class, e.g. `MyLayer`.")
    if not isinstance(handler, ChannelHandler):
        raise TypeError(f"A handler must be a ChannelHandler instance, got {handler!r}; "
                        "subclass tfcompress.pruning.handlers.ChannelHandler.")
    for attr, spec in dict(handler.weights).items():
        if not isinstance(spec, WeightSpec):
            raise TypeError(f"{type(handler).__name__}.weights[{attr!r}] must be a WeightSpec, "
                            f"got {spec!r}.")
        roles, known = set(spec.axes.values()) | set(spec.zero_roles), set(handler.roles)
        if not roles <= known:
            raise ValueError(f"{type(handler).__name__}.weights[{attr!r}] uses roles "
                             f"{sorted(roles - known)}; the roles are {list(handler.roles)}.")
    if handler.size_key is not None and not isinstance(handler.size_key, str):
        raise TypeError(f"{type(handler).__name__}.size_key must be a config key (str) or "
                        f"None, got {handler.size_key!r}.")


def register_handler(
    *layer_classes: type, handler: Optional[ChannelHandler] = None
) -> Union[Callable[[H], H], ChannelHandler]:
    """Registers the channel handler of ``layer_classes`` (and, through the MRO, their
    subclasses that have no row of their own).

    As a decorator on a :class:`ChannelHandler` subclass, registers one instance of it (made
    with no arguments) and returns the class; with ``handler=``, registers that instance and
    returns it. A later registration for the same class replaces the earlier one.

    Raises:
      TypeError: if a layer class is not a class, the handler not a ``ChannelHandler``, or
        its ``weights`` table holds something other than ``WeightSpec`` values.
      ValueError: if a ``WeightSpec`` names an unknown role.

    Example:
      >>> import tf_keras
      >>> from tfcompress.pruning.handlers import CoupledHandler
      >>> class Scale(tf_keras.layers.Layer):
      ...     def call(self, x):
      ...         return 2.0 * x
      >>> @register_handler(Scale)
      ... class ScaleHandler(CoupledHandler):
      ...     pass
      >>> type(handler_for(Scale())).__name__
      'ScaleHandler'
    """
    if handler is not None:
        _validate(layer_classes, handler)
        for cls in layer_classes:
            _TABLE[cls] = handler
        handler_for_class.cache_clear()
        return handler

    def decorate(handler_class: H) -> H:
        if not (isinstance(handler_class, type) and issubclass(handler_class, ChannelHandler)):
            raise TypeError(f"@register_handler decorates a ChannelHandler subclass, got "
                            f"{handler_class!r}.")
        register_handler(*layer_classes, handler=handler_class())
        return handler_class

    return decorate


@functools.lru_cache(maxsize=None)
def handler_for_class(layer_class: type) -> ChannelHandler:
    """The handler of the most specific class in ``layer_class.__mro__`` with a row in
    :data:`HANDLERS`, or :data:`DEFAULT_BARRIER` (cached per class)."""
    for cls in layer_class.__mro__:
        handler = _TABLE.get(cls)
        if handler is not None:
            return handler
    return DEFAULT_BARRIER


def handler_for(layer: Any) -> ChannelHandler:
    """The handler of ``layer`` (see :func:`handler_for_class`)."""
    return handler_for_class(type(layer))
