"""Channel handlers, one module per layer family, and the registry that maps layers to them.

Importing this package registers every built-in handler (each module registers its own with
:func:`register_handler`).
"""

from tfcompress.pruning.handlers import (  # noqa: F401  (registers the built-in handlers)
    conv,
    dense,
    elementwise,
    kerasop,
    merge,
    normalization,
    probe,
    recurrent,
    reshape,
    tfop,
)
from tfcompress.pruning.handlers.base import (
    IN,
    MID,
    OUT,
    BarrierHandler,
    Call,
    ChannelHandler,
    CoupledHandler,
    WeightSpec,
)
from tfcompress.pruning.handlers.probe import ProbeHandler
from tfcompress.pruning.handlers.registry import (
    DEFAULT_BARRIER,
    HANDLERS,
    handler_for,
    register_handler,
)

__all__ = [
    "IN", "OUT", "MID", "WeightSpec", "Call", "ChannelHandler", "CoupledHandler",
    "BarrierHandler", "ProbeHandler", "HANDLERS", "DEFAULT_BARRIER", "handler_for",
    "register_handler",
]
