"""Custom gradients without ``tf.custom_gradient``: a forward value with a surrogate's gradient.

Quantizers need a gradient other than the one TensorFlow derives (rounding has none; PACT
and LSQ define their own). ``tf.custom_gradient`` would give it, but each time it is traced
into a graph (``tf.function``, SavedModel export, every TFLite conversion) it registers a new
gradient function in TensorFlow's process-wide registry, which never releases it nor the
traced graph its closure holds: a small PACT model leaked about 100 registrations and
130 MB per ``to_tflite``. :func:`with_gradient` builds the same thing from
``tf.stop_gradient``, which registers nothing.
"""

from __future__ import annotations

import tensorflow as tf


def with_gradient(value: tf.Tensor, surrogate: tf.Tensor) -> tf.Tensor:
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass.

    Computes ``stop_gradient(value) + (surrogate - stop_gradient(surrogate))``. The bracket
    is exactly zero wherever ``surrogate`` is finite, so the result equals ``value`` bit for
    bit; build the surrogate with ``tf.where`` rather than masks times values so that a
    clipped ``inf`` stays finite there.

    Args:
      value: the forward result.
      surrogate: a tensor of the same shape whose gradient (with respect to whatever it was
        computed from) is the one wanted; ``tf.stop_gradient`` the parts that must not pass
        gradients.

    Returns:
      A tensor equal to ``value`` that differentiates like ``surrogate``.

    Example:
      >>> x = tf.constant([0.4, 1.6])
      >>> with tf.GradientTape() as tape:
      ...     tape.watch(x)
      ...     y = with_gradient(tf.round(x), 3.0 * x)
      >>> y.numpy(), tape.gradient(y, x).numpy()
      (array([0., 2.], dtype=float32), array([3., 3.], dtype=float32))
    """
    return tf.stop_gradient(value) + (surrogate - tf.stop_gradient(surrogate))
