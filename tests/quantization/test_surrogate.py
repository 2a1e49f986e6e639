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


# (quantize(x, trained variable), initial variable value, input): each quantizer with a
# custom gradient, differentiated with respect to its trained range or step.
QUANTIZERS = {
    "pact": (lambda x, a: pact_math.fake_quant(x, -0.5 * a, a, 2, False), 2.0,
             [[0.1, 1.0, 3.0]]),
    "pact_lsq": (lambda x, a: pact_math.fake_quant(x, -0.5 * a, a, 2, False, True), 2.0,
                 [[0.1, 1.0, 3.0]]),
    "learned_step": (lambda x, s: kernel_math._learned_fake_quant(x, s, 2, True), [0.5, 0.25],
                     [[0.3, -0.7], [1.4, 0.1]]),
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_tracing_a_quantizer_registers_no_gradient_function(name):
    quantize, initial, values = QUANTIZERS[name]
    variable = tf.Variable(initial)

    def trace():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = quantize(x, variable)
            return tape.gradient(y, variable)
        return step(tf.constant(values))

    trace()
    before = _registered_gradients()
    for _ in range(3):
        trace()  # a new tf.function each time: a new graph, as every conversion traces one
    assert _registered_gradients() == before
