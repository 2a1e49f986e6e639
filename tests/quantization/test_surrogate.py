"""The surrogate gradients of the quantizers, and that tracing them leaks nothing."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from tfcompress.quantization import kernel_math, pact_math
from tfcompress.quantization.surrogate import with_gradient


def test_with_gradient_is_the_value_forward_and_the_surrogates_gradient_backward():
    x = tf.constant([-2.5, 0.3, 1.7, np.inf])
    with tf.GradientTape() as tape:
        tape.watch(x)
        # surrogate: x inside [-1, 1], the bound outside (finite even for inf), slope 2
        surrogate = 2.0 * tf.clip_by_value(x, -1.0, 1.0)
        y = with_gradient(tf.round(tf.clip_by_value(x, -1.0, 1.0)), surrogate)
    np.testing.assert_array_equal(y.numpy(), [-1.0, 0.0, 1.0, 1.0])  # bit for bit
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0.0, 2.0, 0.0, 0.0])


def _registered_gradients() -> int:
    # TensorFlow's process-wide registry, where tf.custom_gradient adds one entry per trace.
    return len(ops._gradient_registry._registry)


@pytest.mark.parametrize("rounding_gradient", [False, True])
def test_tracing_pact_fake_quant_registers_no_gradient_function(rounding_gradient):
    alpha = tf.Variable(2.0)

    def trace():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = pact_math.fake_quant(x, -0.5 * alpha, alpha, 2, False, rounding_gradient)
            return tape.gradient(y, alpha)
        return step(tf.constant([[0.1, 1.0, 3.0]]))

    trace()
    before = _registered_gradients()
    for _ in range(3):
        trace()  # a new tf.function each time: a new graph, as every conversion traces one
    assert _registered_gradients() == before


def test_tracing_learned_weight_steps_registers_no_gradient_function():
    step_size = tf.Variable([0.5, 0.25])

    def trace():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = kernel_math._learned_fake_quant(x, step_size, 2, [0], True)
            return tape.gradient(y, step_size)
        return step(tf.constant([[0.3, -0.7], [1.4, 0.1]]))

    trace()
    before = _registered_gradients()
    for _ in range(3):
        trace()
    assert _registered_gradients() == before
