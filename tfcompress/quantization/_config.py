"""``ConfigValue``: construction, equality and repr from ``get_config``, written once."""

from __future__ import annotations

from typing import Any, Dict


class ConfigValue:
    """Mixin for small serializable objects that are fully described by ``get_config()``.

    Gives ``from_config = cls(**config)``, equality of type and config (tfmot compares
    quantizers and configs when it matches layers), and a repr that shows the config.
    """

    @classmethod
    def from_config(cls, config: Dict[str, Any]):
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.get_config() == other.get_config()

    def __ne__(self, other) -> bool:
        return not self == other

    __hash__ = None  # mutable-config objects compare by value

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
