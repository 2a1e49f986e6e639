"""PACT quantization-aware training for tf_keras models, built on tfmot.

The tfmot way (annotate chosen layers)::

    import tensorflow_model_optimization as tfmot
    from tfcompress.quantization import PACTQuantizeConfig, quantize_scope
    annotated = tfmot.quantization.keras.quantize_annotate_layer(
        layer, PACTQuantizeConfig(weight_bits=4, activation_bits=4))
    with quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated_model)

Or one call for a whole model: ``qat = quantize_model(model, activation_bits=4, weight_bits=4)``.
"""

from tfcompress.quantization.api import clip_ranges, quantize_apply, quantize_model, quantize_scope
from tfcompress.quantization.callbacks import ClipRangeLogger
from tfcompress.quantization.configs import LAYER_RULES, LayerRule, PACTQuantizeConfig
from tfcompress.quantization.pact import MODES, PACTQuantizer
from tfcompress.quantization.prepare import fold_batch_norms, prepare_for_qat, split_separable_convs
from tfcompress.quantization.scheme import PACTQuantizeScheme
from tfcompress.quantization.weights import ChannelWeightQuantizer

__all__ = [
    "ChannelWeightQuantizer",
    "ClipRangeLogger",
    "LAYER_RULES",
    "LayerRule",
    "MODES",
    "PACTQuantizeConfig",
    "PACTQuantizeScheme",
    "PACTQuantizer",
    "clip_ranges",
    "fold_batch_norms",
    "prepare_for_qat",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "split_separable_convs",
]
