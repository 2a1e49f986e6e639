"""FPGM structured filter pruning that produces genuinely smaller tf_keras models.

* :class:`ChannelGraph` traces a model into channel groups (channels pruned together).
* :func:`fpgm_masks` scores the groups (``"fpgm"``, ``"l1"``, ``"l2"``) into :class:`Masks`.
* :func:`apply_masks` zeroes the pruned channels in place (what training with masks sees).
* :func:`rebuild` removes them: a dense, smaller model with exactly the same outputs.
* :func:`count_macs` / :func:`count_params` measure the result.

Example:
  >>> from tfcompress.models import residual_cnn
  >>> from tfcompress.pruning import fpgm_masks, rebuild, count_macs
  >>> model = residual_cnn(width=8)
  >>> slim = rebuild(model, fpgm_masks(model, 0.5))
  >>> count_macs(slim) < count_macs(model)
  True
"""

from tfcompress.pruning.apply import apply_masks
from tfcompress.pruning.counting import count_macs, count_params
from tfcompress.pruning.criteria import CRITERIA, fpgm_masks, keep_count
from tfcompress.pruning.graph import ChannelGraph, Group
from tfcompress.pruning.handlers import HANDLERS, ChannelHandler, handler_for
from tfcompress.pruning.masks import Masks
from tfcompress.pruning.rebuild import rebuild
from tfcompress.pruning.schedules import ConstantRatio, PolynomialRatio, PruningSchedule
from tfcompress.pruning.callback import FPGMPruning

__all__ = [
    "ChannelGraph", "Group", "Masks", "fpgm_masks", "apply_masks", "rebuild", "count_macs",
    "count_params", "CRITERIA", "keep_count", "HANDLERS", "ChannelHandler", "handler_for",
    "FPGMPruning", "PruningSchedule", "ConstantRatio", "PolynomialRatio",
]

from tfcompress.pruning.sensitivity import Sensitivity, sensitivity  # noqa: E402

__all__ += ["Sensitivity", "sensitivity"]
