"""PACT quantization-aware training for tf_keras models (built on tfmot) and Keras 3 models
(TensorFlow backend; :mod:`~tfcompress.quantization.keras3_layers`), with one math
(:mod:`~tfcompress.quantization.pact_math` for activations,
:mod:`~tfcompress.quantization.kernel_math` for kernels).

The tfmot way (annotate chosen layers)::

    import tensorflow_model_optimization as tfmot
    from tfcompress.quantization import PACTQuantizeConfig, quantize_scope
    annotated = tfmot.quantization.keras.quantize_annotate_layer(
        layer, PACTQuantizeConfig(weight_bits=4, activation_bits=4))
    with quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated_model)

Or one call for a whole model, tf_keras or Keras 3:
``qat = quantize_model(model, activation_bits=4, weight_bits=4)``. At 2-4 bits the model's
edges keep 8 bits (``first_last_bits``, :mod:`~tfcompress.quantization.recipe`), and the
float model can teach the quantized one (:mod:`~tfcompress.quantization.distill`).

Keras 3 QAT layers (:class:`PACTActivation`, :class:`PACTQuantizeWrapper`) carry the class
attribute ``tfcompress_qat = True``, by which ``tfcompress.export`` recognises a Keras 3
quantization-aware model.
"""

from tfcompress.quantization.api import clip_ranges, quantize_apply, quantize_model, quantize_scope
from tfcompress.quantization.callbacks import ClipRangeLogger
from tfcompress.quantization.configs import LAYER_RULES, LayerRule, PACTQuantizeConfig
from tfcompress.quantization.distill import distillation_loss, distillation_targets, label_accuracy
from tfcompress.quantization.keras3_layers import PACTActivation, PACTQuantizeWrapper
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
    "PACTActivation",
    "PACTQuantizeConfig",
    "PACTQuantizeScheme",
    "PACTQuantizeWrapper",
    "PACTQuantizer",
    "clip_ranges",
    "distillation_loss",
    "distillation_targets",
    "fold_batch_norms",
    "label_accuracy",
    "prepare_for_qat",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "split_separable_convs",
]
