"""The models compared by ``pact_vs_tfmot.py``: one function per variant, same budget for all.

Every variant starts from a copy of the same float model and is fine-tuned by
:func:`fine_tune` (Adam, cosine-decayed learning rate, batch 32, the same epochs); only
what is quantized, and how, differs.
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
import tensorflow_model_optimization as tfmot

from tfcompress._keras import keras
from tfcompress.export import litert, to_tflite
from tfcompress.models import compile_classifier
from tfcompress.quantization import (
    distillation_loss,
    distillation_targets,
    label_accuracy,
    prepare_for_qat,
    quantize_model,
)

BATCH = 32
_n_bit = tfmot.quantization.keras.experimental.default_n_bit


def add_recipe_arguments(parser) -> None:
    """The training recipe's command-line options, shared by the QAT benchmarks."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--float-epochs", type=int, default=8)
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak LR (cosine)")


def copy_of(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def tfmot_qat(model: keras.Model, bits: int, fold_bn: bool = False) -> keras.Model:
    """tfmot's default 8-bit scheme (or experimental n-bit below 8) on a copy of ``model``.

    ``fold_bn`` first applies tfcompress' BatchNorm folding
    (``prepare_for_qat(batch_norm="fold")``), so the weights tfmot quantizes are the folded
    ones, as in PACT with ``batch_norm="fold"``.
    """
    model = copy_of(model)
    if fold_bn:
        model = prepare_for_qat(model, batch_norm="fold")
    annotated = tfmot.quantization.keras.quantize_annotate_model(model)
    with tfmot.quantization.keras.quantize_scope():
        if bits == 8:
            return tfmot.quantization.keras.quantize_apply(annotated)
        scheme = _n_bit.DefaultNBitQuantizeScheme(num_bits_weight=bits,
                                                  num_bits_activation=bits)
        return tfmot.quantization.keras.quantize_apply(annotated, scheme)


def pact_qat(model: keras.Model, bits: int, trainable_range: bool = True) -> keras.Model:
    """PACT at ``bits``/``bits``; ``trainable_range=False`` keeps the calibrated clip range."""
    return quantize_model(copy_of(model), bits, bits, trainable_range=trainable_range)


def fine_tune(model: keras.Model, x, y, epochs: int, lr: float,
              teacher: keras.Model = None) -> keras.Model:
    """The one training recipe of every variant: Adam, ``lr`` cosine-decayed to 0. With a
    ``teacher`` (the float model) the loss is ``distillation_loss`` on its logits too."""
    steps = epochs * int(np.ceil(len(x) / BATCH))
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    if teacher is None:
        compile_classifier(model, schedule)
    else:
        model.compile(keras.optimizers.Adam(schedule), loss=distillation_loss(),
                      metrics=[label_accuracy])
        y = distillation_targets(teacher, x, y)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def accuracy(model: keras.Model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


def tflite_ptq_accuracy(model: keras.Model, x_calibration, x_test, y_test) -> float:
    """The TFLite converter's full-int8 post-training quantization, evaluated with LiteRT."""
    with tempfile.TemporaryDirectory() as folder:
        path = to_tflite(model, pathlib.Path(folder) / "ptq.tflite", quantize="int8",
                         representative_data=x_calibration)
        logits = litert.run(path, x_test)
    return float(np.mean(np.argmax(logits, axis=1) == y_test))


def variants(bits_list):
    """``{row name: (make(float_model), kind)}``; kind groups the rows of the table."""
    table = {}
    for bits in bits_list:
        table[f"tfmot {bits}/{bits}"] = (lambda m, b=bits: tfmot_qat(m, b), "tfmot")
        table[f"pact {bits}/{bits}"] = (lambda m, b=bits: pact_qat(m, b), "pact")
        table[f"pact-frozen {bits}/{bits}"] = (
            lambda m, b=bits: pact_qat(m, b, trainable_range=False), "ablation")
    table["tfmot+fold 8/8"] = (lambda m: tfmot_qat(m, 8, fold_bn=True), "ablation")
    return table
