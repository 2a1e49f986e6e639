"""Knowledge distillation from the float model during quantization-aware training.

The quantized student learns from the labels and from the float teacher's softened logits
(Hinton et al. 2015; the usual companion of low-bit QAT, e.g. Mishra & Marr 2018,
"Apprentice"). Nothing here depends on a Keras: the teacher's logits are computed once
and travel beside the labels as the targets of ``fit``, and the loss splits them again, so
``model.fit(x, targets)`` works unchanged in tf_keras and Keras 3 (shuffling keeps each
image with its targets).

Example:
  >>> import numpy as np
  >>> from tfcompress.models import compile_classifier, residual_cnn
  >>> from tfcompress.quantization import quantize_model
  >>> x = np.random.default_rng(0).random((16, 16, 16, 1), dtype=np.float32)
  >>> y = np.arange(16) % 10
  >>> teacher = residual_cnn(width=4)
  >>> student = quantize_model(teacher, 4, 4)
  >>> targets = distillation_targets(teacher, x, y)
  >>> targets.shape
  (16, 11)
  >>> student.compile("adam", loss=distillation_loss(temperature=4.0, weight=0.5),
  ...                 metrics=[label_accuracy])
  >>> history = student.fit(x, targets, epochs=1, verbose=0)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfcompress._validate import check_number

__all__ = ["distillation_targets", "distillation_loss", "label_accuracy"]


def distillation_targets(teacher: Any, x: Any, y: Any, batch_size: int = 256) -> np.ndarray:
    """The targets to ``fit`` a student on: each integer label followed by the teacher's
    logits for that input, ``[label, logit_0, ..., logit_{n-1}]`` as float32.

    Args:
      teacher: the float model (logits output, either Keras).
      x: the training inputs (an array the teacher can ``predict``).
      y: integer class ids, one per input.
      batch_size: the teacher's prediction batch size.

    Raises:
      ValueError: if ``y`` is not one integer label per input, or the teacher's output is
        not ``(batch, classes)`` logits.
    """
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[1:] != (1,) or len(labels) != len(x):
        raise ValueError(f"`y` must hold one integer class id per input ({len(x)}), got shape "
                         f"{labels.shape}. One-hot labels: pass `y.argmax(-1)`.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("`y` must hold integer class ids, e.g. 3, not probabilities.")
    logits = np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), np.float32)
    if logits.ndim != 2 or labels.size and labels.max() >= logits.shape[1]:
        raise ValueError(f"The teacher must output (batch, classes) logits covering every "
                         f"label; got output shape {logits.shape}.")
    return np.concatenate([labels.reshape(-1, 1).astype(np.float32), logits], axis=1)


def distillation_loss(temperature: float = 4.0, weight: float = 0.5) -> Callable:
    """The loss of a student fitted on :func:`distillation_targets`.

    ``(1 - weight) * CE(label, student) + weight * T^2 * KL(softmax(teacher / T) ||
    softmax(student / T))``, per example; ``T^2`` keeps the soft term's gradients on the
    scale of the hard term's (Hinton et al.).

    Args:
      temperature: ``T`` > 0; higher spreads the teacher's probabilities over more classes.
      weight: share of the distillation term, in [0, 1]; 0 is plain cross-entropy.

    Raises:
      TypeError: for a temperature or weight that is not a number.
      ValueError: for a temperature <= 0 or a weight outside [0, 1].
    """
    temperature = check_number(temperature, "temperature", "a number > 0",
                               valid=lambda v: v > 0)
    weight = check_number(weight, "weight", "a number in [0, 1]", valid=lambda v: 0 <= v <= 1)

    def distillation(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        labels = tf.cast(y_true[:, 0], tf.int32)
        hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y_pred)
        teacher = tf.nn.log_softmax(y_true[:, 1:] / temperature)
        student = tf.nn.log_softmax(y_pred / temperature)
        soft = tf.reduce_sum(tf.exp(teacher) * (teacher - student), axis=-1)
        return (1.0 - weight) * hard + weight * temperature ** 2 * soft

    return distillation


def label_accuracy(y_true, y_pred):
    """Accuracy against the labels of :func:`distillation_targets` (a metric for
    ``compile``: Keras' ``"accuracy"`` would read the whole target row)."""
    labels = tf.cast(tf.cast(y_true, tf.float32)[:, 0], tf.int64)
    return tf.cast(tf.equal(labels, tf.argmax(y_pred, axis=-1)), tf.float32)
