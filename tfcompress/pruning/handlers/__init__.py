"""Channel handlers, one per layer family, and the registry that maps layers to them."""

from tfcompress.pruning.handlers.base import (
    IN, MID, OUT, BarrierHandler, Call, ChannelHandler, CoupledHandler, WeightSpec,
)
from tfcompress.pruning.handlers.registry import DEFAULT_BARRIER, HANDLERS, handler_for

__all__ = [
    "IN", "OUT", "MID", "WeightSpec", "Call", "ChannelHandler", "CoupledHandler",
    "BarrierHandler", "HANDLERS", "DEFAULT_BARRIER", "handler_for",
]
